"""Multi-process training under `torchrun --nproc_per_node=N`: one process per GPU (or CPU share).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group from them (NCCL for
CUDA tensors, gloo for CPU ones) and binds the process to GPU LOCAL_RANK. Without those variables
(a plain `python` or `pixelcam` run) every helper here is a no-op, so the single-process code path
and its numbers stay exactly what they were.

Ranks must share one file system (one machine, or a shared disk): rank 0 alone writes
checkpoints, `state.pt` and `results.json`, and the other ranks read them back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from pixelcam.errors import ConfigError

T = TypeVar("T")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Rank 0 evaluates the test split alone while the others wait at a barrier: allow for that.
TIMEOUT = timedelta(hours=2)


def launched() -> bool:
    """True under torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(key in os.environ for key in ENV_KEYS)


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if initialized() else 0


def init(device: torch.device) -> torch.device:
    """Join the torchrun process group once; return the device this process trains on.

    In a single process this returns `device` unchanged. Under torchrun a CUDA device becomes
    `cuda:LOCAL_RANK` (one GPU per process); a CPU run uses gloo.
    """
    if not launched():
        return device
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        rank = int(os.environ["LOCAL_RANK"])
        if rank >= gpus:
            raise ConfigError(
                f"LOCAL_RANK={rank} but only {gpus} GPU(s) are visible: use "
                f"torchrun --nproc_per_node={max(gpus, 1)} or fewer, or set device: cpu"
            )
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    if not initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if initialized():
        dist.barrier()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of `tensor` over all ranks (a new tensor); `tensor` itself in a single process."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable object), so all ranks take the same branch."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and hand its answer to every rank."""
    return broadcast(decide() if is_main() else None)


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def quiet_unless_main(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log` on rank 0, a no-op elsewhere: N ranks should not print N copies of each line."""
    return log if is_main() else _silent


def _silent(_message: str) -> None:
    return None


def local_batch_size(batch_size: int, world: int) -> int:
    """Each rank's share of the global batch; the global batch stays `batch_size`."""
    if batch_size % world:
        raise ConfigError(
            f"batch_size={batch_size} cannot be split over {world} processes: use a batch_size "
            f"divisible by {world} (e.g. {max(world, batch_size // world * world)}) or run "
            f"torchrun with a --nproc_per_node that divides {batch_size}"
        )
    return batch_size // world


class _SumOverRanks(torch.autograd.Function):
    """y = sum of x over the ranks; its gradient is the sum of the ranks' gradients of y."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        total = x.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm with global-batch statistics over gloo on CPU (torch's SyncBatchNorm is GPU-only).

    Training statistics are all-reduced (differentiable collectives, so gradients flow across
    ranks as in one big batch); in eval mode, or in one process, it is a plain BatchNorm. `drop`
    and `act` carry over timm's BatchNormAct2d; the state_dict keys are those of a BatchNorm.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop: nn.Module = nn.Identity()
        self.act: nn.Module = nn.Identity()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        synced = self.training and world_size() > 1
        y = self._global_batch_norm(x) if synced else super().forward(x)
        return self.act(self.drop(y))

    def _global_batch_norm(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / x.size(1), dtype=x.dtype, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)  # two passes, as precise as BatchNorm's own variance
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (self.momentum if self.momentum is not None
                          else 1.0 / float(self.num_batches_tracked))
                unbiased = var.detach() * (n / (n - 1))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        return y


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:  # the same Parameter objects: the optimiser and DDP see no change
            new.weight = module.weight
            new.bias = module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        for name in ("drop", "act"):  # timm's BatchNormAct2d
            if isinstance(getattr(module, name, None), nn.Module):
                setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _to_gloo_sync(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make BatchNorm use global-batch statistics, so N ranks train like one process.

    CUDA: timm's converter (torch's SyncBatchNorm, keeping BatchNormAct2d's activation);
    CPU/gloo: `GlooSyncBatchNorm`. Children are replaced in place and the state_dict keys are
    unchanged, so checkpoints load into an unconverted model.
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    return _to_gloo_sync(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


__all__ = [
    "launched", "initialized", "init", "shutdown", "world_size", "rank", "local_rank", "is_main",
    "barrier", "all_reduce_mean", "broadcast", "agree", "gather", "quiet_unless_main",
    "local_batch_size", "GlooSyncBatchNorm", "sync_batchnorm", "unwrap",
]
