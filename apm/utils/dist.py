"""Process group and device for training and extraction.

Launched plainly, a tool runs as one process. Launched by `torchrun` (which sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the rendezvous address), it joins the process
group: NCCL with one CUDA device per local process, or gloo on CPU (how the DDP tests run).
Multi-node works as in WeSpeaker: the same torchrun command on every node with
`--nnodes N --node_rank R --master_addr HOST --master_port PORT`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from apm.utils.errors import ApmError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str, local_rank: int) -> torch.device:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ApmError(f"device '{device}' is not one of {DEVICES}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise ApmError(
            f"device {device} requested but torch {torch.__version__} sees no CUDA device "
            f"({build}); use --device cpu (or auto), or --ngpu 0 in a recipe"
        )
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if device.startswith("cuda:"):
        return torch.device(device)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def available_cores() -> int:
    """The cores this process's job may use: APM_CORES when set (> 0), else all of them."""
    value = os.environ.get("APM_CORES", "")
    if value:
        try:
            cores = int(value)
        except ValueError:
            raise ApmError(f"APM_CORES must be a number of cores, got {value!r}") from None
        if cores > 0:
            return cores
    return os.cpu_count() or 1


def init_distributed(device: str = "auto", threads: int = 0) -> DistEnv:
    """Join the torchrun process group if there is one; pick the device and CPU threads.

    `threads` 0 shares the cores evenly among the local processes: the machine's, or the
    APM_CORES environment variable's count when set (the recipe's stages 4-5 set it when
    several systems run at once, utils/recipe.sh).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = pick_device(device, local_rank)
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the progress log
    torch.set_num_threads(threads or max(1, available_cores() // local_world))
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        log.info("process %d of %d on %s", rank, world, dev)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over processes, in place (no-op in one process)."""
    if env.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
