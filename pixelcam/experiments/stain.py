"""Figures 4, 5, 9, 10: CL and PxAP of each run on its test set restained level by level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pixelcam.builders import data_key, data_paths, dataset
from pixelcam.config import Config
from pixelcam.data.stain import StainLevels, fit_stain_levels, write_restained_split
from pixelcam.datasets import partner
from pixelcam.evaluations import evaluate_on
from pixelcam.figures import image_strip
from pixelcam.progress import note
from pixelcam.report import METRIC_NAMES, method_label, scores
from pixelcam.store import Log, Run


def stain_levels_for(cfg: Config, log: Log = note):
    """The frozen stain levels of cfg's dataset restained with the other dataset's styles."""
    if cfg.stain_levels_file:
        return StainLevels.load(cfg.stain_levels_file)
    target = cfg.for_dataset(partner(cfg.dataset))
    s_root, s_fold = data_paths(cfg)
    t_root, t_fold = data_paths(target)
    name = f"levels-{data_key(cfg, 'train')}-{data_key(target, 'train')}-{cfg.stain_levels}.json"
    path = Path(cfg.cache_dir) / "stain" / name
    if path.exists():
        return StainLevels.load(path)
    levels = fit_stain_levels(s_root, s_fold, t_root, t_fold, n_levels=cfg.stain_levels,
                              seed=cfg.seed)
    levels.save(path)
    log(f"[stain] fitted {len(levels.levels)} levels from {levels.n_candidates} candidates "
        f"({levels.n_failed} failed) into {path}")
    return levels


def stain_shift(cfg: Config, runs: list[Run], log: Log = note
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """CL and PxAP of each run on cfg's test set restained to every level (0 = original)."""
    levels = stain_levels_for(cfg, log)
    root, fold = data_paths(cfg)
    out_dir = Path(cfg.cache_dir) / "stain" / f"test-{data_key(cfg, 'test')}-{levels.digest()[:12]}"
    manifest = write_restained_split(root, fold, "test", levels, out_dir)
    datas = [(0, cfg)] + [
        (entry["level"], cfg.replace(data_root=str(entry["data_root"]),
                                     fold_dir=str(entry["fold_dir"])))
        for entry in manifest["levels"]]
    rows = []
    for run in runs:
        for level, data in datas:
            res = evaluate_on(run, data, cfg.select, log=log)
            for metric, value in scores(res).items():
                rows.append({"level": level, "method": method_label(run),
                             "metric": METRIC_NAMES[metric], "value": value})
    return pd.DataFrame(rows), manifest


def stain_level_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """Per level: the target image, its distance to the source stain, images that fell back."""
    rows = [{"level": e["level"], "target image": e.get("target_image_id", ""),
             "distance": e.get("distance"), "images": e["n_images"],
             "fallbacks": e["n_fallback"]} for e in manifest["levels"]]
    return pd.DataFrame(rows).set_index("level")


def stain_strip(manifest: dict[str, Any], cfg: Config, index: int = 0):
    """One test image at level 0 (original) and at every stain level."""
    root, _ = data_paths(cfg)
    record = dataset(cfg, "test").records[index]
    paths = [root / record.image_id] + [Path(e["data_root"]) / record.image_id
                                        for e in manifest["levels"]]
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    return image_strip(images, [f"level {level}" for level in range(len(images))])
