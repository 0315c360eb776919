"""Table 3: every Table 1 run on the other dataset's test split."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pixelcam.config import Config
from pixelcam.datasets import partner
from pixelcam.evaluations import evaluate_on
from pixelcam.experiments.main_tables import dataset_runs
from pixelcam.progress import note
from pixelcam.report import comparison, method_label, scores
from pixelcam.store import Log, Run


def ood_rows(cfg: Config, source: str, runs: list[Run] | None = None, log: Log = note
             ) -> tuple[str, list[tuple[Run, dict[str, Any]]]]:
    """Every Table 1 run trained on `source`, evaluated on the other dataset's test split."""
    target = partner(source)
    tcfg = cfg.for_dataset(target)
    if runs is None:
        runs = dataset_runs(cfg.replace(datasets=source), log)[source]
    out = []
    for run in runs:
        if run.kind == "unet":  # Table 3 has no U-Net row
            continue
        out.append((run, evaluate_on(run, tcfg, cfg.select, log=log)))
    return target, out


def ood_table(cfg: Config, source: str, runs: list[Run] | None = None, log: Log = note
              ) -> pd.DataFrame:
    """Table 3 for one direction: PxAP and CL on the target test set (paper columns = target)."""
    target, rows = ood_rows(cfg, source, runs, log)
    return comparison([(method_label(run), scores(res)) for run, res in rows], "table3", target)
