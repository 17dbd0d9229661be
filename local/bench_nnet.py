#!/usr/bin/env python
"""Training throughput of the multi-task x-vector: forward + backward frames/s.

For each model config (the default E-TDNN, a 256-wide one, the recipe's CPU-sized system
config) and each device (CPU, and CUDA when present) this times forward + multi-task APM loss + backward on random
[batch, frames, feat_dim] inputs and prints frames/s next to the model's analytic cost:
MMAC/frame of the frame layers (trunk, stats layer, phone branch; the segment layers run
once per segment and are amortised over the frames of a segment) and the achieved GFLOP/s,
counting training as 3x the forward FLOPs (2 FLOPs per MAC). The "matmul" line measures
a large float32 matrix product on the same device, a practical peak to compare against.
On CPU "frames/CPU-s" divides by the process's CPU time instead of wall time: on a shared
machine it moves less with the other processes' load (frames per core-second). When other
processes keep a core busy, multi-threaded ops wait for the descheduled thread: measure
with --threads 1 then.

    .venv/bin/python local/bench_nnet.py [--batch 32] [--frames 200] [--steps 5]

`--ab-masked-bn N` instead times N interleaved rounds of one training step each with the
masked BatchNorm as it was before the fused node (`masked_batchnorm_reference`, one
elementwise autograd op at a time), with the fused node (now), and unpadded (native
BatchNorm, mask None), on the same model and batch, and prints frames/s and the ratios:

    .venv/bin/python local/bench_nnet.py --ab-masked-bn 8 --threads 1

`--trunks N` instead compares the trunks (apm.nnet.trunks) in N interleaved rounds of one
training step each (forward + APM multi-task loss + backward, half the batch padded): the
E-TDNN, ECAPA-TDNN and ResNet34 of the recipe's CPU-sized configs (conf/apm_am.yaml,
conf/ecapa_apm_am.yaml, conf/resnet34_apm_am.yaml) and of the paper-sized ones
(conf/paper/...), printing the median frames/s and the ratio to the E-TDNN of the same size:

    .venv/bin/python local/bench_nnet.py --trunks 5 --threads 1 --batch 16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from apm.losses import build_loss
from apm.nnet import MaskedBatchNorm1d, build_model
from apm.nnet.layers import masked_batchnorm_reference

CONFIGS = {
    "default etdnn 512": {},
    "etdnn 256": {"channels": 256, "stats_channels": 768, "embed_dim": 256, "phone_channels": 256},
}
REPO = Path(__file__).resolve().parents[1]
RECIPE_CONF = REPO / "egs/olr/conf/apm_am.yaml"  # the CPU-sized network the recipe trains


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Achieved GFLOP/s of an n x n float32 matrix product (a practical peak)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def bench(cfg: dict, args: argparse.Namespace, device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg, args.feat_dim, args.phones).to(device).train()
    crit = build_loss({"kind": "apm"}, model.embed_dim, args.langs).to(device)
    feats = torch.randn(args.batch, args.frames, args.feat_dim, device=device)
    mask = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)
    mask[::2, args.frames * 3 // 4 :] = False  # half the batch padded: the masked path
    phones = torch.randint(0, args.phones, (args.batch, args.frames), device=device)
    langs = torch.randint(0, args.langs, (args.batch,), device=device)
    params = list(model.parameters()) + list(crit.parameters())

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            res = crit(model(feats, mask), langs, phones, mask)
        res.loss.backward()
        for p in params:
            p.grad = None

    step()  # warm-up (allocations, kernel selection)
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    sync(device)
    frames = args.batch * args.frames * args.steps
    frames_s = frames / (time.perf_counter() - start)
    macs = model.macs_per_frame() + model.macs_per_segment() / args.frames
    return {
        "params": model.num_parameters() / 1e6,
        "mmac": macs / 1e6,
        "frames_s": frames_s,
        "frames_cpu_s": frames / (time.process_time() - cpu_start),
        "gflops": frames_s * 3 * 2 * macs / 1e9,
    }


def _reference_forward(self, x, mask=None):
    """MaskedBatchNorm1d.forward as it was before the fused node (the "before" arm)."""
    if mask is None or not self.training:
        return torch.nn.BatchNorm1d.forward(self, x.reshape(-1, x.shape[-1])).view(x.shape)
    y, mean, var, count = masked_batchnorm_reference(x, mask, self.weight, self.bias, self.eps)
    if self.track_running_stats:
        self._update_running_stats(mean, var, count)
    return y


def ab_masked_bn(args: argparse.Namespace, configs: dict) -> None:
    """Interleaved rounds: old masked BN, fused masked BN, native BN (unpadded)."""
    fused_forward = MaskedBatchNorm1d.forward
    arms = {
        "masked, before (elementwise)": (_reference_forward, True),
        "masked, fused node": (fused_forward, True),
        "no padding (native BN)": (fused_forward, False),
    }
    print(f"{'model':<20} {'arm':<30} {'frames/s':>10} {'vs before':>10}")
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = build_model(cfg, args.feat_dim, args.phones).train()
        crit = build_loss({"kind": "apm"}, model.embed_dim, args.langs)
        feats = torch.randn(args.batch, args.frames, args.feat_dim)
        mask = torch.ones(args.batch, args.frames, dtype=torch.bool)
        mask[::2, args.frames * 3 // 4 :] = False
        phones = torch.randint(0, args.phones, (args.batch, args.frames))
        langs = torch.randint(0, args.langs, (args.batch,))
        seconds = dict.fromkeys(arms, 0.0)
        try:
            for rnd in range(args.ab_masked_bn + 1):  # round 0 warms up
                for arm, (forward, padded) in arms.items():
                    MaskedBatchNorm1d.forward = forward
                    start = time.perf_counter()
                    m = mask if padded else None
                    crit(model(feats, m), langs, phones, mask).loss.backward()
                    model.zero_grad(set_to_none=True)
                    if rnd:
                        seconds[arm] += time.perf_counter() - start
        finally:
            MaskedBatchNorm1d.forward = fused_forward
        frames = args.batch * args.frames * args.ab_masked_bn
        before = seconds["masked, before (elementwise)"]
        for arm, sec in seconds.items():
            print(f"{name:<20} {arm:<30} {frames / sec:>10.0f} {before / sec:>9.2f}x")


TRUNK_CONFS = {"etdnn": "apm_am", "ecapa_tdnn": "ecapa_apm_am", "resnet34": "resnet34_apm_am"}


def compare_trunks(args: argparse.Namespace) -> None:
    """Interleaved rounds over the trunks' CPU- and paper-sized configs (see the docstring)."""
    conf_dir = REPO / "egs/olr/conf"
    print(f"{'size':<6} {'trunk':<11} {'Mparams':>8} {'MMAC/frame':>11} {'frames/s':>10} "
          f"{'frames/CPU-s':>12} {'vs etdnn':>9}")  # fmt: skip
    for size, folder in (("cpu", conf_dir), ("paper", conf_dir / "paper")):
        arms = {}
        for trunk, conf in TRUNK_CONFS.items():
            cfg = yaml.safe_load((folder / f"{conf}.yaml").read_text())["model"]
            torch.manual_seed(0)
            model = build_model(cfg, args.feat_dim, args.phones).train()
            crit = build_loss({"kind": "apm"}, model.embed_dim, args.langs)
            arms[trunk] = (model, crit, [], [])
        feats = torch.randn(args.batch, args.frames, args.feat_dim)
        mask = torch.ones(args.batch, args.frames, dtype=torch.bool)
        mask[::2, args.frames * 3 // 4 :] = False
        phones = torch.randint(0, args.phones, (args.batch, args.frames))
        langs = torch.randint(0, args.langs, (args.batch,))
        for round_ in range(args.trunks + 1):  # round 0: warm-up, not timed
            for model, crit, wall, cpu in arms.values():
                start, cpu_start = time.perf_counter(), time.process_time()
                crit(model(feats, mask), langs, phones, mask).loss.backward()
                model.zero_grad(set_to_none=True)
                if round_:
                    wall.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - cpu_start)
        frames = args.batch * args.frames
        base = frames / statistics.median(arms["etdnn"][2])
        for trunk, (model, _, wall, cpu) in arms.items():
            rate = frames / statistics.median(wall)
            macs = model.macs_per_frame() + model.macs_per_segment() / args.frames
            print(f"{size:<6} {trunk:<11} {model.num_parameters() / 1e6:>8.2f} "
                  f"{macs / 1e6:>11.2f} {rate:>10.0f} {frames / statistics.median(cpu):>12.0f} "
                  f"{rate / base:>8.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="segments per batch")
    parser.add_argument("--frames", type=int, default=200, help="frames per segment")
    parser.add_argument("--feat-dim", type=int, default=40, help="the recipe's fbank bins")
    parser.add_argument("--phones", type=int, default=40, help="phone inventory size")
    parser.add_argument("--langs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config")
    parser.add_argument(
        "--recipe-conf", type=Path, default=RECIPE_CONF, help="also time this system config's model"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads (0: torch's default, one per core)"
    )
    parser.add_argument(
        "--ab-masked-bn",
        type=int,
        default=0,
        metavar="N",
        help="time N interleaved rounds of old vs fused masked BatchNorm vs native, then exit",
    )
    parser.add_argument(
        "--trunks",
        type=int,
        default=0,
        metavar="N",
        help="compare the trunks' CPU- and paper-sized configs in N interleaved rounds, then exit",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trunks:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; batch "
            f"{args.batch} x {args.frames} frames, half the segments padded by 1/4, APM loss"
        )
        compare_trunks(args)
        return
    configs = dict(CONFIGS)
    if args.recipe_conf.is_file():
        model_cfg = yaml.safe_load(args.recipe_conf.read_text())["model"]
        configs[f"recipe {args.recipe_conf.stem}"] = model_cfg
    if args.ab_masked_bn:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; batch "
            f"{args.batch} x {args.frames} frames, half the segments padded by 1/4, APM loss"
        )
        ab_masked_bn(args, configs)
        return
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"batch {args.batch} x {args.frames} frames, {args.feat_dim}-dim feats, "
        f"{args.phones} phones, APM loss"
    )
    header = (
        f"{'device':<10} {'model':<20} {'amp':<5} {'Mparams':>8} {'MMAC/frame':>11} "
        f"{'frames/s':>10} {'frames/CPU-s':>12} {'GFLOP/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for device in devices:
        for amp in (False, True) if device.type == "cuda" else (False,):
            for name, cfg in configs.items():
                r = bench(cfg, args, device, amp)
                cpu_s = f"{r['frames_cpu_s']:.0f}" if device.type == "cpu" else "-"
                print(
                    f"{device.type:<10} {name:<20} {'bf16' if amp else 'fp32':<5} "
                    f"{r['params']:>8.2f} {r['mmac']:>11.2f} {r['frames_s']:>10.0f} {cpu_s:>12} "
                    f"{r['gflops']:>8.1f}"
                )
        print(
            f"{device.type:<10} {'matmul 2048 fp32':<20} {'':<5} {'':>8} {'':>11} {'':>10} {'':>12} "
            f"{matmul_gflops(device):>8.1f}"
        )


if __name__ == "__main__":
    main()
