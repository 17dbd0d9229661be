#!/usr/bin/env python
"""Would a seed-batched trainer make seeds cheaper? S copies of one system in one process.

Times forward + backward of S copies of a system config's x-vector on random
[batch, frames, feat_dim] inputs (one batch per copy), two ways, interleaved in one run:
  sequential  S models one after the other (what S training processes do, per core);
  vmap        the S models' weights stacked (torch.func.stack_module_state) and one
              vmap(grad(functional_call)) over them (what a seed-batched trainer does).
BatchNorm running statistics are switched off in both (vmap cannot update them in place);
that does not change the cost of the step. The loss is a stand-in (mean square of the
outputs): the margin loss is a small part of a step. Prints frames/s per round and the
vmap / sequential ratio of the medians.

    .venv/bin/python local/bench_seed_batch.py [--seeds 4] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch.func import (
    functional_call,
    grad,
    replace_all_batch_norm_modules_,
    stack_module_state,
    vmap,
)

from apm.nnet import build_model

RECIPE_CONF = Path(__file__).resolve().parents[1] / "egs/olr/conf/am.yaml"


def stand_in_loss(out: object) -> torch.Tensor:
    tensors = [v for v in (vars(out).values() if hasattr(out, "__dict__") else [out])
               if torch.is_tensor(v) and v.is_floating_point()]  # fmt: skip
    return sum(t.float().pow(2).mean() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, default=RECIPE_CONF, help="system config")
    parser.add_argument("--seeds", type=int, default=4, help="copies trained at once")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--feat-dim", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = yaml.safe_load(args.conf.read_text(encoding="utf-8"))["model"]
    models = [build_model(cfg, args.feat_dim, 40).to(device).train() for _ in range(args.seeds)]
    for m in models:
        replace_all_batch_norm_modules_(m)
    x = torch.randn(args.seeds, args.batch, args.frames, args.feat_dim, device=device)

    def sequential() -> None:
        for i, m in enumerate(models):
            stand_in_loss(m(x[i])).backward()
            for p in m.parameters():
                p.grad = None

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    step = vmap(grad(lambda p, b, xi: stand_in_loss(functional_call(base, (p, b), (xi,)))))

    def batched() -> None:
        step(params, buffers, x)

    ways = {"sequential": sequential, "vmap": batched}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for fn in ways.values():
        fn()  # warm-up
    frames = args.seeds * args.batch * args.frames
    for r in range(args.rounds):
        for name, fn in ways.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(frames / (time.perf_counter() - t))
            print(f"round {r}: {name:10s} {rates[name][-1]:10.0f} frames/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.seeds} copies of {args.conf.name}, batch {args.batch} x {args.frames}, "
          f"{args.threads} thread(s), {device}: vmap / sequential = "
          f"{med['vmap'] / med['sequential']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
