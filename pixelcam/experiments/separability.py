"""Tables 4, 5: class separability J of the pixel features, baseline beside PixelCAM."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pixelcam.analysis import separability, separability_summary
from pixelcam.config import Config
from pixelcam.evaluations import cached_on
from pixelcam.experiments.main_tables import pairs
from pixelcam.report import method_label, paper_rows
from pixelcam.store import Run


def separability_on(run: Run, data: Config, checkpoint: str, split: str = "test"
                    ) -> pd.DataFrame:
    """J per test image of one run's pixel features (cached beside the run)."""
    def compute(model, loader, device):
        return separability(model, loader, device).to_dict(orient="list")

    return pd.DataFrame(cached_on(run, data, checkpoint, split, "separability-", compute))


def separability_table(runs: list[Run], data: Config, table: str, prefix: str,
                       checkpoint: str | None = None
                       ) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Mean J over normal, cancer and all test images, paper beside run; and J per image."""
    checkpoint = checkpoint or data.select
    paper = paper_rows(table, prefix)
    rows, per_image = [], {}
    for base, pix in pairs(runs):
        for run in (base, pix):
            label = method_label(run)
            df = separability_on(run, data, checkpoint)
            per_image[label] = df["j"]
            summary = separability_summary(df, ("normal", "cancer"))  # the paper's columns
            row: dict[str, Any] = {"Method": label}
            for key in ("normal", "cancer", "all"):
                row[f"{key} paper"] = paper.get(label, {}).get(key)
                value = summary[key]
                row[f"{key} run"] = None if np.isnan(value) else round(float(value), 3)
            rows.append(row)
    return pd.DataFrame(rows).set_index("Method"), per_image
