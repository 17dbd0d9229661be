"""Training metrics: per-epoch sums (reduced over processes), TensorBoard scalars,
`train_log.jsonl` (one JSON record per epoch) and `train_curves.png`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from apm.losses import LossOutput
from apm.utils.dist import DistEnv, all_reduce_sum
from apm.utils.io import atomic_path, atomic_write

FIELDS = (
    "loss",
    "lang_loss",
    "phone_loss",
    "chunks",
    "lang_correct",
    "phone_correct",
    "phone_frames",
    "frames",
)


class EpochMetrics:
    """Sums over the batches of an epoch, kept on the device (no sync per step)."""

    def __init__(self, num_langs: int, device: torch.device) -> None:
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
        # Rows: margin sum, confidence sum, chunks with a confidence, chunks; one column per
        # language.
        self.per_lang = torch.zeros(4, num_langs, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(
        self,
        res: LossOutput,
        scores: torch.Tensor,
        phone_logits: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
    ) -> None:
        langs, mask = batch["langs"], batch["mask"]
        n = float(len(langs))
        phones = batch.get("phones")
        row = [
            res.loss.detach() * n,
            res.lang_loss.detach() * n,
            (res.phone_loss.detach() * n) if res.phone_loss is not None else 0.0,
            n,
            (scores.argmax(1) == langs).sum(),
            0.0,
            0.0,
            mask.sum(),
        ]
        if phone_logits is not None and phones is not None:
            known = phones >= 0
            row[5] = ((phone_logits.argmax(-1) == phones) & known).sum()
            row[6] = known.sum()
        self.sums += torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=self.sums.device) for v in row]
        )
        self.per_lang[0].index_add_(0, langs, res.margins.detach().double())
        if res.confidence is not None:
            self.per_lang[1].index_add_(0, langs, res.confidence.double())
            self.per_lang[2].index_add_(0, langs, torch.ones_like(langs, dtype=torch.float64))
        self.per_lang[3].index_add_(0, langs, torch.ones_like(langs, dtype=torch.float64))

    def summary(self, env: DistEnv, languages: list[str]) -> dict:
        """Means over all processes: losses, accuracies, per-language margin/confidence."""
        s = dict(zip(FIELDS, all_reduce_sum(self.sums.clone(), env).tolist(), strict=True))
        lang = all_reduce_sum(self.per_lang.clone(), env).cpu()
        chunks = max(s["chunks"], 1.0)
        out = {
            "loss": s["loss"] / chunks,
            "lang_loss": s["lang_loss"] / chunks,
            "lang_acc": s["lang_correct"] / chunks,
            "frames": int(s["frames"]),
        }
        if s["phone_frames"] > 0:
            out["phone_loss"] = s["phone_loss"] / chunks
            out["phone_acc"] = s["phone_correct"] / s["phone_frames"]
        seen = lang[3] > 0
        out["margin"] = {
            languages[i]: float(lang[0, i] / lang[3, i]) for i in range(len(languages)) if seen[i]
        }
        if lang[2].sum() > 0:
            out["confidence"] = {
                languages[i]: float(lang[1, i] / lang[2, i])
                for i in range(len(languages))
                if lang[2, i] > 0
            }
        return out


class Monitor:
    """TensorBoard scalars under `<exp>/tensorboard` (main process only).

    A resumed run purges the events logged after its checkpoint, so curves never show the
    lost epoch twice.
    """

    def __init__(self, exp_dir: str | os.PathLike, purge_step: int, enabled: bool) -> None:
        self.writer = None
        if enabled:
            # Imported here: tensorboard costs a second at start-up, in every DDP process.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(exp_dir) / "tensorboard"), purge_step=purge_step)

    def step(self, step: int, loss: float, lr: float, margin: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("step/loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)
            self.writer.add_scalar("step/base_margin", margin, step)

    def epoch(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for split in ("train", "valid"):
            for key, value in record.get(split, {}).items():
                if isinstance(value, dict):
                    for lang, v in value.items():
                        self.writer.add_scalar(f"{split}_{key}/{lang}", v, step)
                elif key != "frames":
                    self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_history(exp_dir: str | os.PathLike, history: list[dict]) -> None:
    with atomic_write(Path(exp_dir) / "train_log.jsonl", encoding="utf-8") as f:
        for record in history:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def plot_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Loss, language accuracy, phone accuracy and learning rate against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    panels = [
        ("loss", "loss"),
        ("lang_acc", "language accuracy"),
        ("phone_acc", "phone frame accuracy"),
    ]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=False):
        for split, style in (("train", "-o"), ("valid", "--s")):
            values = [r.get(split, {}).get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [float("nan") if v is None else v for v in values],
                    style,
                    label=split,
                    markersize=3,
                )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a curve absent for this system draws nothing
            ax.legend()
    axes[-1].plot(epochs, [r["lr"] for r in history], "-o", markersize=3)
    axes[-1].set_title("learning rate (end of epoch)")
    axes[-1].set_xlabel("epoch")
    axes[-1].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
