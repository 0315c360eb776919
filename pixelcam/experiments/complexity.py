"""Table 11: time to a full-size map for one image, and parameter counts, per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pixelcam.builders import model_for
from pixelcam.config import Config
from pixelcam.evaluate import resolve_device
from pixelcam.maps import compute_maps
from pixelcam.methods import METHODS, row_label
from pixelcam.pipelines import config_for_method
from pixelcam.report import paper_table
from pixelcam.timing import wall_times


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def complexity_table(cfg: Config, repeats: int | None = None) -> pd.DataFrame:
    """Time to a full-size map for one random image, and parameter counts, per Table 11 row.

    Timings are medians over `repeats` (default: cfg.timing_repeats) after two warm-up passes,
    on cfg's device; the paper's were taken on an RTX A6000 GPU, so only the ratios between
    rows compare.
    """
    device = resolve_device(cfg.device)
    repeats = cfg.timing_repeats if repeats is None else repeats
    paper = paper_table("table11")["rows"]
    rows = []
    size = (cfg.image_size, cfg.image_size)
    for method in cfg.methods:
        mcfg = config_for_method(cfg, method)
        negev = cfg.table_negev and METHODS[method].negev_row
        kinds = ["baseline", *(["negev"] if negev else []), "pixelcam"]
        for kind in kinds:
            model = model_for(kind, mcfg).to(device).eval()
            map_method = {"baseline": mcfg.map_method, "pixelcam": "pixelcam",
                          "negev": "negev"}[kind]
            msize = (mcfg.image_size, mcfg.image_size)  # a method's fixed input size
            rows.append(_time_row(kind, mcfg, model, map_method, msize, device, repeats, paper))
    if cfg.table_unet:
        model = model_for("unet", cfg).to(device).eval()
        rows.append(_time_row("unet", cfg, model, "unet", size, device, repeats, paper))
    return pd.DataFrame(rows).set_index("Method")


def _time_row(kind: str, cfg: Config, model: torch.nn.Module, map_method: str,
              size: tuple[int, int], device: torch.device, repeats: int,
              paper: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(1, 3, *size, generator=gen).to(device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    times = wall_times(lambda: compute_maps(map_method, model, x, y, size=size), device, repeats)
    label = row_label(kind, cfg.method)
    ref = paper.get(label, {})
    return {"Method": label, "time paper (ms)": ref.get("time_ms"),
            "time run (ms)": round(1000 * float(np.median(times)), 1),
            "params paper": ref.get("params"), "params run": count_parameters(model)}
