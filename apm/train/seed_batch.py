"""Seed-batched training: S copies of one system, one per seed, trained in one process.

Each copy is a `Trainer` of its own (its seed's initialisation, validation split, epoch
plans, optimiser, LR schedule, checkpoints and metrics), exactly as a single training of that
seed. Only the model's forward and backward are shared: every step stacks the S models'
weights (`torch.stack` of each copy's own parameters, so gradients flow back to them) and runs
the trunk once under `torch.func.vmap`, over the S batches padded to one chunk length with
the mask marking each copy's frames. A padded batch computes what the unpadded one does
(apm.nnet.layers: masked frames contribute nothing), so each copy follows its single-model
training up to float rounding (tests/test_seed_batch.py). The loss, gradient clipping and
optimiser step stay per copy (plain modules, as in `Trainer`).

This is for a GPU, where one small model leaves the device mostly idle and S stacked models
fill it; on a CPU the stacked forward is no faster than S forwards one after the other
(local/bench_seed_batch.py), and separate processes on separate cores are the better use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from apm.losses import LossOutput
from apm.nnet import ModelOutput
from apm.train.monitor import Monitor
from apm.train.trainer import Trainer
from apm.utils.errors import ApmError


def pad_batches(batches: Sequence[dict]) -> list[dict]:
    """The batches padded to the longest chunk among them: feats with zeros, mask with False,
    phone labels with -1 (unlabelled); other fields unchanged."""
    frames = max(b["feats"].shape[1] for b in batches)
    padded = []
    for b in batches:
        extra = frames - b["feats"].shape[1]
        out = dict(b)
        if extra:
            out["feats"] = F.pad(b["feats"], (0, 0, 0, extra))
            out["mask"] = F.pad(b["mask"], (0, extra), value=False)
            if b.get("phones") is not None:
                out["phones"] = F.pad(b["phones"], (0, extra), value=-1)
        out["padded"] = True
        padded.append(out)
    return padded


class SeedBatch:
    """Trainers of one system that differ only in their seed, stepped together
    (see the module docstring). One process, one device, no DDP."""

    def __init__(self, trainers: Sequence[Trainer]) -> None:
        if not trainers:
            raise ApmError("a seed batch needs at least one trainer")
        first = trainers[0]
        for t in trainers:
            if t.env.world > 1:
                raise ApmError("seed-batched training runs in one process: use --ngpu 0 or 1")
            if {**t.cfg, "seed": None} != {**first.cfg, "seed": None}:
                raise ApmError(
                    f"{t.exp_dir}: a seed batch trains one system with several seeds, but its "
                    f"configuration differs from {first.exp_dir}'s in more than the seed"
                )
        self.trainers = list(trainers)
        # The module structure for functional_call; the weights come from each copy.
        self.base = copy.deepcopy(first.model).to("meta")
        self.with_phones = first.model.phone_out is not None

    def _model_call(self, params: dict, buffers: dict, feats: Tensor, mask: Tensor):
        out = functional_call(self.base, (params, buffers), (feats, mask))
        if self.with_phones:
            return out.embedding, out.classifier_input, out.phone_logits
        return out.embedding, out.classifier_input

    def forward(self, trainers: Sequence[Trainer], batches: Sequence[dict]) -> list[ModelOutput]:
        """The models of `trainers` on their (padded, equally long) batches, as one vmapped
        call; BatchNorm running statistics are written back to each copy."""
        named = [dict(t.model.named_parameters()) for t in trainers]
        params = {k: torch.stack([p[k] for p in named]) for k in named[0]}
        own_buffers = [dict(t.model.named_buffers()) for t in trainers]
        buffers = {k: torch.stack([b[k] for b in own_buffers]) for k in own_buffers[0]}
        feats = torch.stack([b["feats"] for b in batches])
        mask = torch.stack([b["mask"] for b in batches])
        outs = vmap(self._model_call)(params, buffers, feats, mask)
        with torch.no_grad():  # the vmapped BatchNorms updated the stacked copies in place
            for k, own in enumerate(own_buffers):
                for name, value in own.items():
                    value.copy_(buffers[name][k])
        phones = outs[2] if self.with_phones else [None] * len(trainers)
        return [ModelOutput(outs[0][k], phones[k], outs[1][k]) for k in range(len(trainers))]

    def train_epoch(
        self,
        trainers: Sequence[Trainer],
        monitors: Sequence[Monitor | None],
        on_steps: Sequence[Callable[[Trainer], None] | None],
    ) -> list[dict]:
        """Train the next epoch of `trainers` (all at the same epoch, each from its own step);
        a copy whose epoch has fewer steps stops early. Returns each one's train metrics."""
        epochs = [t.begin_epoch() for t in trainers]
        loaders = [iter(t._batches(e.index, t.step)) for t, e in zip(trainers, epochs, strict=True)]
        while True:
            active = [k for k, t in enumerate(trainers) if t.step < t.steps_per_epoch]
            if not active:
                break
            group = [trainers[k] for k in active]
            batches = pad_batches([
                t.step_inputs(next(loaders[k]), t.step) for k, t in zip(active, group, strict=True)
            ])  # fmt: skip
            for t in group:
                t.optimizer.zero_grad(set_to_none=True)
            results = self._losses(group, batches)
            sum(
                t.scaler.scale(res.loss) for t, (_, res) in zip(group, results, strict=True)
            ).backward()
            for k, t, batch, (out, res) in zip(active, group, batches, results, strict=True):
                t.optimizer_step()
                t.end_step(epochs[k], out, res, batch, monitors[k], on_steps[k])
        return [t.end_epoch(e) for t, e in zip(trainers, epochs, strict=True)]

    def _losses(
        self, group: Sequence[Trainer], batches: Sequence[dict]
    ) -> list[tuple[ModelOutput, LossOutput]]:
        first = group[0]
        with torch.autocast(
            first.env.device.type, dtype=first.amp_dtype, enabled=first.amp_dtype is not None
        ):
            outs = self.forward(group, batches)
            results = []
            for t, out, batch in zip(group, outs, batches, strict=True):
                res = t.crit(out, batch["langs"], batch.get("phones"), batch["mask"])
                t._check_finite(res.loss, batch, t.step)
                results.append((out, res))
        return results

    def run_epoch(
        self,
        monitors: Sequence[Monitor | None],
        on_steps: Sequence[Callable[[Trainer], None] | None],
    ) -> list[tuple[Trainer, dict]]:
        """Train and validate the next epoch of the copies furthest behind (a resumed batch
        may hold copies at different epochs); returns (trainer, epoch record) for each."""
        behind = min(t.epoch for t in self.trainers)
        picked = [k for k, t in enumerate(self.trainers) if t.epoch == behind]
        group = [self.trainers[k] for k in picked]
        train = self.train_epoch(
            group, [monitors[k] for k in picked], [on_steps[k] for k in picked]
        )
        return [(t, t.record_epoch(m)) for t, m in zip(group, train, strict=True)]
