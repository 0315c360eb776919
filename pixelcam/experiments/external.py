"""Table 18: PixelCAM on pseudo-labels from the baseline trained on the other dataset."""

from __future__ import annotations

import pandas as pd

from pixelcam.config import Config
from pixelcam.datasets import partner
from pixelcam.evaluations import evaluate_on
from pixelcam.pipelines import config_for_method, get_baseline, get_or_train, get_pixelcam
from pixelcam.progress import note
from pixelcam.report import comparison, method_label, scores
from pixelcam.store import Log, Run


def external_runs(cfg: Config, method: str = "layercam", log: Log = note
                  ) -> dict[str, tuple[dict[str, Run], Run, Run]]:
    """Per dataset: its own baseline and PixelCAM, the other dataset's baseline, and PixelCAM
    trained on that baseline's pseudo-labels."""
    out = {}
    for name in cfg.dataset_names:
        dcfg = config_for_method(cfg.for_dataset(name), method)
        other = partner(name)
        out[name] = (get_or_train(dcfg, log), get_baseline(dcfg.for_dataset(other), log),
                     get_pixelcam(dcfg.replace(cam_source=other), log))
    return out


def external_table(cfg: Config, method: str = "layercam", log: Log = note) -> pd.DataFrame:
    """Same vs external pseudo-labels for every dataset the notebook covers."""
    rows = []
    for name, (same, external_base, external) in external_runs(cfg, method, log).items():
        dcfg = config_for_method(cfg.for_dataset(name), method)
        for run, res, source in (
            (same["baseline"], same["baseline"].test(cfg.select), "same"),
            (same["pixelcam"], same["pixelcam"].test(cfg.select), "same"),
            (external_base, evaluate_on(external_base, dcfg, cfg.select, log=log), "external"),
            (external, external.test(cfg.select), "external"),
        ):
            table = comparison([(method_label(run), scores(res))], "table18", f"{name}_{source}")
            table.insert(0, "Pseudo-labels", source)
            table.insert(0, "Dataset", name)
            rows.append(table)
    return pd.concat(rows)
