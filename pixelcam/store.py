"""The run store: run directories keyed by a stable hash of the config, trained once, reused.

A baseline lives in `<cache_dir>/runs/baseline-<key>/`, the PixelCAM model trained on its CAMs in
`<cache_dir>/runs/pixelcam-<key>/`. A run is complete only when its `results.json` exists; an
interrupted run is resumed from its `state.pt`, and a file lock keeps two processes from training
the same run twice. Inside `planning()` nothing trains: each run that would be is recorded.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelcam import distributed
from pixelcam.atomic import read_back
from pixelcam.builders import model_holding
from pixelcam.config import Config, load_config
from pixelcam.errors import DataError
from pixelcam.evaluate import resolve_device

Log = Callable[[str], None]
TRAIN_LOG = "train.log"  # each run's epoch log, in its run directory


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise work on one run directory across processes (a second process waits).

    Under torchrun only rank 0 takes the lock, for all its ranks: were each rank to take it,
    rank 0 would train holding it while the others, needed by every step, waited for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not distributed.is_main():
        yield
        return
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def checkpoint_weights(run_dir: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    return read_back(run_dir / "checkpoints" / f"{checkpoint}.pt")



@dataclass
class Run:
    """A finished run: where it lives and what it measured."""

    kind: str  # baseline | pixelcam
    key: str
    dir: Path
    results: dict[str, Any]
    reused: bool

    @property
    def map_method(self) -> str:
        return self.results["map_method"]

    @property
    def config(self) -> Config:
        """The params this run was trained with."""
        return load_config(None, self.results["config"], check_datasets=False)

    def load_model(self, checkpoint: str, device: torch.device | None = None) -> torch.nn.Module:
        cfg = self.config
        device = device or resolve_device(cfg.device)
        model = model_holding(self.kind, cfg, checkpoint_weights(self.dir, checkpoint))
        return model.to(device).eval()

    def test(self, checkpoint: str) -> dict[str, Any]:
        return self.results["test"][checkpoint]


def load_complete(kind: str, key: str, run_dir: Path, log: Log) -> Run | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    log(f"[{kind}] reusing finished run {run_dir}")
    return Run(kind, key, run_dir, read_back(path), reused=True)


@dataclass
class PlannedRun:
    """A training that a run would need: what `planning()` records instead of training."""

    kind: str
    key: str
    dir: Path
    config: Config
    epochs: int
    cached: bool  # a finished run of this key is in the cache: it would be reused
    shared_with: Path | None = None  # made by the training of that run (see shares_training)
    needs: tuple[Path, ...] = ()  # runs its training reads (a PixelCAM run: its baseline)

    @property
    def status(self) -> str:
        """cached (reused), shared (comes with another run's training) or to train."""
        return "cached" if self.cached else "shared" if self.shared_with else "to train"

    @property
    def trains(self) -> bool:
        return self.status == "to train"


_planned: ContextVar[dict[Path, PlannedRun] | None] = ContextVar("planned", default=None)


def current_plan() -> dict[Path, PlannedRun] | None:
    """The runs recorded so far inside `planning()`; None outside it."""
    return _planned.get()


@contextmanager
def planning() -> Iterator[dict[Path, PlannedRun]]:
    """Inside, get_baseline/get_pixelcam/get_negev/get_unet train nothing: each records the run
    it would train or reuse (once per run directory, in first-use order, so shared runs count
    once) and returns a placeholder Run that only knows its kind, key and params."""
    token = _planned.set({})
    try:
        yield _planned.get()
    finally:
        _planned.reset(token)


def cached(kind: str, key: str, cfg: Config, log: Log, train: Callable[[Path], Run],
            epochs: int, needs: tuple[Path, ...] = ()) -> Run:
    """Reuse the finished run `<kind>-<key>`, else train it under a lock (checked twice).

    Under torchrun rank 0 looks and every rank follows its answer, so all ranks reuse or all
    train together (each rank checking for itself could split them and hang the collectives).
    With `cached_only` a run that is not finished is an error instead of a training.
    """
    run_dir = run_dir_of(kind, key, cfg)
    plan = _planned.get()
    if plan is not None:
        done = (run_dir / "results.json").exists()
        plan.setdefault(run_dir, PlannedRun(kind, key, run_dir, cfg, epochs, done, needs=needs))
        return Run(kind, key, run_dir, {"kind": kind, "key": key, "config": cfg.to_dict()},
                   reused=done)
    distributed.init(resolve_device(cfg.device))
    log = distributed.quiet_unless_main(log)

    def finished() -> bool:
        return distributed.agree(lambda: (run_dir / "results.json").exists())

    if finished() and (run := load_complete(kind, key, run_dir, log)) is not None:
        return run
    if cfg.cached_only:
        raise DataError(
            f"{kind} run {run_dir} is not finished, and cached_only is set (the reports job of "
            "`pixelcam reports --submit` trains nothing): `pixelcam jobs status` shows which "
            "training is not done; submit again to train it, or drop cached_only")
    with locked(run_dir):
        if finished() and (run := load_complete(kind, key, run_dir, log)) is not None:
            return run
        return train(run_dir)


# Baselines whose training is the same (the WGAP net, image cross-entropy) and whose runs differ
# only in the map that picks B-LOC: one training serves all of them (see `get_baseline`).


def run_dir_of(kind: str, key: str, cfg: Config) -> Path:
    return Path(cfg.cache_dir) / "runs" / f"{kind}-{key}"



def load_run(run_dir: str | Path) -> Run:
    """A finished run from its directory (for re-checking reports against stored results)."""
    run_dir = Path(run_dir)
    results = read_back(run_dir / "results.json")
    return Run(results["kind"], results["key"], run_dir, results, reused=True)

