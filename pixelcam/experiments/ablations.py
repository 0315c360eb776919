"""Tables 12-17 and notebooks 04-08: one baseline per method, then PixelCAM variants of it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pixelcam.config import Config
from pixelcam.methods import label as method_name_label
from pixelcam.pipelines import config_for_method, get_baseline, get_pixelcam
from pixelcam.progress import note
from pixelcam.report import comparison, method_label, scores
from pixelcam.store import Log, Run

# (label suffix, params changes) of the PixelCAM variants of notebooks 04, 07 and 08
DEPTH_VARIANTS = [("linear", {"pixel_head": "linear"}),
                  ("multi-layer", {"pixel_head": "multi_layer"})]
SELECTION_VARIANTS = [("B-LOC CAM", {"cam_checkpoint": "b-loc"}),
                      ("B-CL CAM", {"cam_checkpoint": "b-cl"})]
SAMPLING_VARIANTS = [("TH", {"seeder": "th"}), ("PB", {"seeder": "pb"})]


def n_variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Notebook 05's sweep: n FG and n BG seeds for each n of `n_values`."""
    return [(f"n={v}", {"n_fg": v, "n_bg": v}) for v in parse_values(cfg.n_values, int)]


def lam_variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Notebook 06's sweep: each pixel-loss weight of `lam_values`."""
    return [(f"lambda={v:g}", {"lam": v}) for v in parse_values(cfg.lam_values, float)]


def variant_runs(cfg: Config, method: str, variants: list[tuple[str, dict[str, Any]]],
                 log: Log = note) -> list[tuple[str, Run]]:
    """The baseline of `method`, then a PixelCAM run per (label, params changes)."""
    mcfg = config_for_method(cfg, method)
    base = get_baseline(mcfg, log)
    out = [(method_label(base), base)]
    for label, changes in variants:
        out.append((label, get_pixelcam(mcfg.replace(**changes), log, base)))
    return out


def method_variants(cfg: Config, methods: list[str], variants: list[tuple[str, dict[str, Any]]],
                    log: Log = note) -> list[tuple[str, Run]]:
    """Per method: its baseline, then "<Method> + PixelCAM (<suffix>)" per (suffix, changes)."""
    rows: list[tuple[str, Run]] = []
    for method in methods:
        name = method_name_label(method)
        rows += variant_runs(cfg, method, [(f"{name} + PixelCAM ({suffix})", changes)
                                           for suffix, changes in variants], log)
    return rows


def variant_table(rows: list[tuple[str, Run]], cfg: Config, table: str,
                  paper_label: dict[str, str] | None = None) -> pd.DataFrame:
    """PxAP and CL of labelled runs beside the paper's table."""
    entries = [(label, scores(run.test(cfg.select))) for label, run in rows]
    return comparison(entries, table, cfg.dataset, paper_label=paper_label)


def parse_values(text: str, kind: type) -> list[Any]:
    """A comma-separated params value ("1,5,10") as numbers."""
    return [kind(v) for v in text.split(",") if v.strip()]
