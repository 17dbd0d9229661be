"""The training loop: one optimiser step per planned batch, validation, checkpoints.

Reproducibility: the model is initialised from the seed, every batch is a function of
(seed, epoch, batch index) (`apm.train.batches`), and a checkpoint stores the model, loss,
optimiser, LR scheduler, grad scaler and RNG states, the steps done in the running epoch and
its metric sums so far. A run resumed from a checkpoint, at an epoch end or mid-epoch
(`train.checkpoint_interval`), therefore computes the same weights as a run that was never
interrupted (bit for bit on CPU), with any `train.num_workers`: the DataLoader's sampler is
`range(step, steps_per_epoch)` over the epoch's map-style dataset.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from apm.features.augment import Augmenter
from apm.losses import LossOutput, build_loss
from apm.nnet import ModelOutput, build_model
from apm.train.batches import ChunkBatches, batches_per_epoch, plan_epoch, validation_batches
from apm.train.data import Corpus
from apm.train.monitor import EpochMetrics, Monitor
from apm.utils.dist import DistEnv, all_reduce_sum
from apm.utils.errors import ApmError
from apm.utils.io import atomic_write
from apm.utils.log import progress

log = logging.getLogger(__name__)


class MultiTaskNet(nn.Module):
    """Model and loss as one module, so DDP synchronises the classifier weights too."""

    def __init__(self, model: nn.Module, crit: nn.Module) -> None:
        super().__init__()
        self.model, self.crit = model, crit

    def forward(
        self,
        feats: torch.Tensor,
        mask: torch.Tensor,
        langs: torch.Tensor,
        phones: torch.Tensor | None,
        padded: bool = True,
    ) -> tuple[ModelOutput, LossOutput]:
        # An unpadded batch skips the model's masked path (`padded` is known on the host).
        out = self.model(feats, mask if padded else None)
        return out, self.crit(out, langs, phones, mask)


@dataclass
class RunningEpoch:
    """The epoch being trained: its index (0-based), progress bar and start time."""

    index: int
    bar: Any
    start: float


class LrSchedule:
    """LR factor per step: linear warm-up from 1/100, then cosine or exponential decay down to
    `final_lr_ratio` at the last step (or constant with `lr_decay: none`)."""

    def __init__(self, train_cfg: dict, steps_per_epoch: int) -> None:
        self.total = train_cfg["epochs"] * steps_per_epoch
        self.warmup = round(train_cfg["warmup_epochs"] * steps_per_epoch)
        self.decay = train_cfg["lr_decay"]
        self.final = train_cfg["final_lr_ratio"]

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.decay == "cosine":
            return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.decay == "exponential":
            return self.final**progress
        return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def use_compile(requested: bool, device: torch.device) -> bool:
    """Whether to torch.compile the model: only when `train.compile` asks for it and training
    runs on CUDA. On a CPU the inductor kernels of this model can crash (a segfault seen with
    torch 2.13 CPU), so a config written for GPUs (egs/fleurs conf/gpu) runs uncompiled there,
    with a log line saying so."""
    if not requested:
        return False
    if device.type != "cuda":
        log.info(
            "train.compile: true, but training runs on %s: torch.compile skipped (CUDA only); "
            "the model runs uncompiled (compile only changes speed)",
            device.type,
        )
        return False
    return True


class Trainer:
    """Model + loss + optimiser over a training set (held in memory or read while training,
    `apm.train.data`), for one process of `env`; `augmenter` augments training chunks."""

    def __init__(
        self,
        cfg: dict,
        corpus: Corpus,
        train_pool: np.ndarray,
        valid_pool: np.ndarray,
        exp_dir: str | os.PathLike,
        env: DistEnv,
        augmenter: Augmenter | None = None,
    ) -> None:
        self.cfg, self.tcfg, self.seed = cfg, cfg["train"], cfg["seed"]
        self.corpus, self.train_pool, self.valid_pool = corpus, train_pool, valid_pool
        self.augmenter = augmenter
        self.exp_dir, self.env = Path(exp_dir), env
        seed_everything(self.seed)
        self.model = build_model(cfg["model"], corpus.feat_dim, corpus.num_phones)
        self.crit = build_loss(cfg["loss"], self.model.embed_dim, len(corpus.languages))
        self.net = MultiTaskNet(self.model, self.crit).to(env.device)
        if use_compile(self.tcfg["compile"], env.device):
            # The model only: the loss's margin schedule changes every step (Python floats).
            # Chunk lengths vary per batch, hence dynamic shapes.
            self.net.model = torch.compile(self.model, dynamic=True)
        self.ddp: nn.Module = self.net
        if self.tcfg["batch_size"] % env.world:
            raise ApmError(
                f"train.batch_size {self.tcfg['batch_size']} is global and must be a multiple of "
                f"the {env.world} training processes"
            )
        if env.world > 1:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.net, device_ids=ids)
        self.steps_per_epoch = batches_per_epoch(corpus, train_pool, self.tcfg)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, LrSchedule(self.tcfg, self.steps_per_epoch)
        )
        cuda = env.device.type == "cuda"
        self.amp_dtype = None
        if self.tcfg["amp"] != "none" and cuda:
            bf16 = self.tcfg["amp"] == "bf16" and torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0  # steps done in the running epoch (a mid-epoch checkpoint's resume point)
        self.metrics: EpochMetrics | None = None  # the running epoch's sums
        self.seconds = 0.0  # training time of the running epoch so far
        self.last_seconds = 0.0  # training time of the last epoch completed
        self.history: list[dict] = []

    @property
    def meta(self) -> dict:
        return {
            "languages": self.corpus.languages,
            "num_phones": self.corpus.num_phones,
            "feat_dim": self.corpus.feat_dim,
        }

    def _optimizer(self) -> torch.optim.Optimizer:
        params, t = self.net.parameters(), self.tcfg
        if t["optimizer"] == "sgd":
            return torch.optim.SGD(
                params,
                lr=t["lr"],
                momentum=t["momentum"],
                weight_decay=t["weight_decay"],
                nesterov=True,
            )
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])

    def state(self) -> dict:
        """Everything a resumed run needs (checkpoint contents)."""
        running = None
        if self.step:
            running = {"step": self.step, "seconds": self.seconds,
                       "sums": self.metrics.sums.cpu(), "per_lang": self.metrics.per_lang.cpu()}  # fmt: skip
        return {
            "epoch": self.epoch,
            "running_epoch": running,
            "model": self.model.state_dict(),
            "crit": self.crit.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "config": self.cfg,
            "meta": self.meta,
        }

    def load_state(self, state: dict, source: str) -> None:
        if state["meta"] != self.meta:
            raise ApmError(
                f"{source}: saved for languages/phones/feature dim {state['meta']}, but the data "
                f"now gives {self.meta}; train into a new directory or pass --resume false"
            )
        self.model.load_state_dict(state["model"])
        self.crit.load_state_dict(state["crit"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], state["history"]
        running = state.get("running_epoch")
        self.step, self.metrics, self.seconds = 0, None, 0.0
        if running:
            self.step, self.seconds = running["step"], running["seconds"]
            self.metrics = EpochMetrics(len(self.corpus.languages), self.env.device)
            self.metrics.sums.copy_(running["sums"])
            self.metrics.per_lang.copy_(running["per_lang"])

    def _dataset(self, epoch: int, cfg: dict, rank: int, world: int, augment: bool = True):
        plan = plan_epoch(self.corpus, self.train_pool, cfg, self.seed, epoch)
        augmenter = self.augmenter if augment else None
        return ChunkBatches(self.corpus, plan, cfg, self.seed, epoch, rank, world, augmenter)

    def _batches(self, epoch: int, start: int = 0) -> Iterable[dict]:
        """Batches `start`, `start + 1`, ... of `epoch` for this process, built in DataLoader
        workers (each builds whole batches of the map-style dataset) or here."""
        data = self._dataset(epoch, self.tcfg, self.env.rank, self.env.world)
        steps = range(start, len(data))
        if self.tcfg["num_workers"] == 0:
            return (data[i] for i in steps)
        return torch.utils.data.DataLoader(
            data,
            batch_size=None,
            sampler=steps,
            num_workers=self.tcfg["num_workers"],
            pin_memory=self.tcfg["pin_memory"] and self.env.device.type == "cuda",
            # its own generator: creating the loader draws no number from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.env.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def _forward(self, batch: dict, net: nn.Module) -> tuple[ModelOutput, LossOutput]:
        with torch.autocast(
            self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            return net(
                batch["feats"],
                batch["mask"],
                batch["langs"],
                batch.get("phones"),
                batch.get("padded", True),
            )

    def _check_finite(self, loss: torch.Tensor, batch: dict, step: int) -> None:
        """Stop every process when any of them got a non-finite loss, saving the utterance ids
        of the offending batch (one file per process that saw it)."""
        bad_here = not bool(torch.isfinite(loss.detach()))
        flag = torch.tensor([float(bad_here)], device=self.env.device)
        if all_reduce_sum(flag, self.env).item() == 0:
            return
        name = "nan_batch.txt" if self.env.world == 1 else f"nan_batch.rank{self.env.rank}.txt"
        path = self.exp_dir / name
        if bad_here:
            with atomic_write(path, encoding="utf-8") as f:
                f.write("\n".join(batch["utts"]) + "\n")
            raise ApmError(
                f"non-finite loss ({loss.item()}) at epoch {self.epoch + 1}, step {step}; the "
                f"batch's utterances are listed in {path}: check their features and "
                "alignments, or lower train.lr; rerun resumes from the last checkpoint"
            )
        raise ApmError(
            f"another process got a non-finite loss at epoch {self.epoch + 1}, step {step}; "
            f"see {self.exp_dir}/nan_batch.rank*.txt"
        )

    def train_step(self, batch: dict, step: int) -> tuple[ModelOutput, LossOutput]:
        self.optimizer.zero_grad(set_to_none=True)
        out, res = self._forward(batch, self.ddp)
        self._check_finite(res.loss, batch, step)
        self.scaler.scale(res.loss).backward()
        self.optimizer_step()
        return out, res

    def optimizer_step(self) -> None:
        """Clip the gradients (already computed), then step the optimiser, the grad scaler
        and the LR schedule."""
        if self.tcfg["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.tcfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def train_epoch(
        self, monitor: Monitor | None = None, on_step: Callable[[Trainer], None] | None = None
    ) -> dict:
        """Train the next epoch, or the rest of it after a mid-epoch checkpoint; returns the
        epoch's train metrics. `on_step(self)` runs after every step but the last."""
        epoch = self.begin_epoch()
        for i, batch in enumerate(self._batches(epoch.index, self.step), start=self.step):
            batch = self.step_inputs(batch, i)
            out, res = self.train_step(batch, i)
            self.end_step(epoch, out, res, batch, monitor, on_step)
        return self.end_epoch(epoch)

    def begin_epoch(self) -> RunningEpoch:
        """Start (or continue) the next epoch: its metrics, progress bar and clock."""
        if self.metrics is None:
            self.metrics = EpochMetrics(len(self.corpus.languages), self.env.device)
        self.net.train()
        bar = progress(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {self.epoch + 1}/{self.tcfg['epochs']}",
            unit="batch",
            disable=not self.env.is_main,
            leave=False,
        )
        return RunningEpoch(self.epoch, bar, time.perf_counter() - self.seconds)

    def step_inputs(self, batch: dict, step: int) -> dict:
        """Set the margin schedule for `step` of the running epoch; the batch on the device."""
        self.crit.set_epoch(self.epoch + step / self.steps_per_epoch)
        return self._to_device(batch)

    def end_step(
        self,
        epoch: RunningEpoch,
        out: ModelOutput,
        res: LossOutput,
        batch: dict,
        monitor: Monitor | None,
        on_step: Callable[[Trainer], None] | None,
    ) -> None:
        """Book a finished step: metrics, progress, the monitor's step record, `on_step`."""
        i, steps = self.step, self.steps_per_epoch
        with torch.no_grad():
            self.metrics.add(res, self.crit.scores(out), out.phone_logits, batch)
        epoch.bar.update()
        if (i + 1) % self.tcfg["log_interval"] == 0:
            loss = res.loss.item()
            epoch.bar.set_postfix(loss=f"{loss:.3f}")
            if monitor is not None:
                lr = self.scheduler.get_last_lr()[0]
                margin = self.crit.classifier.margin
                monitor.step(epoch.index * steps + i + 1, loss, lr, margin)
        self.step, self.seconds = i + 1, time.perf_counter() - epoch.start
        if on_step is not None and self.step < steps:
            on_step(self)

    def end_epoch(self, epoch: RunningEpoch) -> dict:
        """Close the running epoch; returns its train metrics."""
        epoch.bar.close()
        summary = self.metrics.summary(self.env, self.corpus.languages)
        self.last_seconds = self.seconds
        self.epoch, self.step, self.metrics, self.seconds = self.epoch + 1, 0, None, 0.0
        return summary

    @torch.no_grad()
    def validate(self) -> dict | None:
        """Loss and accuracies on the held-out utterances (None without any)."""
        if len(self.valid_pool) == 0:
            return None
        metrics = EpochMetrics(len(self.corpus.languages), self.env.device)
        self.net.eval()
        mine = self.valid_pool[self.env.rank :: self.env.world]
        for batch in validation_batches(self.corpus, mine, self.tcfg):
            batch = self._to_device(batch)
            out, res = self._forward(batch, self.net)
            metrics.add(res, self.crit.scores(out), out.phone_logits, batch)
        self.net.train()
        return metrics.summary(self.env, self.corpus.languages)

    @torch.no_grad()
    def recalibrate_batchnorm(self, max_batches: int) -> int:
        """Re-estimate every BatchNorm's running statistics as the plain average over up to
        `max_batches` training batches of a fresh epoch plan (no weight changes, no
        SpecAugment); returns the number of batches used.

        Needed after averaging checkpoints, whose weights match none of the saved statistics;
        it also removes the bias of running averages that saw only a few hundred steps.
        """
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if max_batches <= 0 or not norms:
            return 0
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        cfg = {**self.tcfg, "specaugment": None}
        data = self._dataset(self.tcfg["epochs"], cfg, 0, 1, augment=False)
        self.net.train()
        used = min(max_batches, len(data))
        for i in range(used):
            self._forward(self._to_device(data[i]), self.net)
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        return used

    def run_epoch(
        self, monitor: Monitor | None = None, on_step: Callable[[Trainer], None] | None = None
    ) -> dict:
        """Train (the rest of) and validate the next epoch; append and return its record."""
        return self.record_epoch(self.train_epoch(monitor, on_step))

    def record_epoch(self, train: dict) -> dict:
        """Validate after the epoch just trained (its train metrics `train`); append and
        return the epoch's record."""
        seconds = self.last_seconds
        record = {
            "epoch": self.epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "train": train,
            "seconds": round(seconds, 2),
            "frames_per_second": round(train["frames"] / seconds),
        }
        valid = self.validate()
        if valid is not None:
            record["valid"] = valid
        self.history.append(record)
        return record
