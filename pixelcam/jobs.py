"""What a scheduler job runs (pixelcam.submit queues them): one training of a profile's plan,
or the reports of a profile from the run cache.

Both are submitit Checkpointables: at a time-out or pre-emption submitit calls `checkpoint`,
whose default resubmits the same call, and the requeued job goes on where the run's resume state
(`state.pt`) left it. This module stays light, so that a job starts fast: it imports what a
training needs and no planning or scheduling code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from pixelcam import progress
from pixelcam.config import Config
from pixelcam.pipelines import get_baseline, get_negev, get_pixelcam, get_unet
from pixelcam.runner import run_reports

PROGRESS_FILE = "progress.json"  # in a run directory: its training's last epoch (jobs only)
TRAIN = {"baseline": get_baseline, "pixelcam": get_pixelcam, "negev": get_negev,
         "unet": get_unet}


class TrainingJob(Checkpointable):
    """What a training job runs: one run of the plan, reused when finished, resumed from its
    state when it has one. submitit calls `checkpoint` at a time-out or pre-emption; the
    Checkpointable default resubmits this same call, which resumes the run."""

    def __init__(self, kind: str, config: Config, run_dir: Path, root: Path,
                 threads: int | None = None) -> None:
        self.kind, self.config, self.run_dir, self.root = kind, config, run_dir, root
        self.threads = threads

    def __call__(self) -> str:
        os.chdir(self.root)  # relative cache and data paths mean what they mean to the plan
        os.environ[progress.ENV] = str(self.run_dir.resolve() / PROGRESS_FILE)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        run = TRAIN[self.kind](self.config)
        return str(run.dir)


class ReportsJob(Checkpointable):
    """The last job: every notebook from the run cache (`cached_only`: it trains nothing)."""

    def __init__(self, profile: str, root: Path, only: list[str] | None,
                 overrides: Mapping[str, Any], outputs: Path | None) -> None:
        self.profile, self.root, self.only = profile, root, only
        self.overrides, self.outputs = dict(overrides), outputs

    def __call__(self) -> int:
        code = run_reports(self.profile, self.root, only=self.only,
                           overrides={**self.overrides, "cached_only": True},
                           outputs=self.outputs)
        if code:
            raise RuntimeError(f"the reports of profile {self.profile} did not all run: see "
                               "the index page and the failed notebooks' HTML")
        return code


__all__ = ["PROGRESS_FILE", "TRAIN", "TrainingJob", "ReportsJob"]
