"""One timing loop for every timing (benchmarks/, Table 11): warm up, then wall times with the
device synced."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def wall_times(fn: Callable[[], object], device: torch.device, repeats: int,
               warmup: int = 2) -> list[float]:
    """Wall times of fn() in seconds, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times
