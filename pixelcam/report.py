"""Tables with the paper's numbers beside this run's, map figures, each notebook's results.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import yaml

from pixelcam.atomic import write_json
from pixelcam.config import Config
from pixelcam.evaluate import resolve_device, to_image
from pixelcam.models.cams import compute_maps
from pixelcam.provenance import provenance
from pixelcam.runs import Run, dataset

PAPER_DIR = Path(__file__).with_name("paper")
METHOD_NAMES = {"layercam": "LayerCAM", "gradcampp": "GradCAM++", "deepmil": "DeepMIL",
                "cam": "CAM", "sat": "SAT"}
# The synthetic default imitates GlaS (glands in both classes), so its tables sit beside GlaS.
PAPER_DATASET = {"glas": "glas", "camelyon16": "camelyon16", "synthetic": "glas"}


def paper_table(name: str) -> dict[str, Any]:
    """A transcribed paper table: {caption, columns, rows: {method: {column: value}}}."""
    raw = yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text())
    rows = {m: dict(zip(raw["columns"], vals)) for m, vals in raw["rows"].items()}
    return {"caption": raw["caption"], "columns": raw["columns"], "rows": rows}


def method_label(run: Run) -> str:
    """The row name the paper's tables use for this run."""
    if run.kind == "unet":
        return "U-Net"
    base = METHOD_NAMES.get(run.results["config"]["method"], run.results["config"]["method"])
    suffix = {"pixelcam": " + PixelCAM", "negev": " + NEGEV"}.get(run.kind, "")
    return base + suffix


def paper_dataset(cfg: Config) -> str:
    return PAPER_DATASET.get(cfg.dataset, cfg.dataset)


def _delta(run_value: float | None, paper_value: float | None) -> float | None:
    if run_value is None or paper_value is None or np.isnan(run_value):
        return None
    return round(run_value - paper_value, 1)


def _rows(runs: list[Run], cfg: Config, table: str, checkpoint: str | None
          ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(row label, the paper's row for cfg's dataset, this run's test results) per run."""
    paper = paper_table(table)["rows"]
    prefix = f"{paper_dataset(cfg)}_"
    out = []
    for run in runs:
        label = method_label(run)
        ref = {k[len(prefix):]: v for k, v in paper.get(label, {}).items() if k.startswith(prefix)}
        out.append((label, ref, run.test(checkpoint or cfg.select)))
    return out


def main_table(runs: list[Run], cfg: Config, checkpoint: str | None = None) -> pd.DataFrame:
    """Table 1 rows for these runs: PxAP and CL, paper | this run | difference."""
    rows = []
    for label, ref, test in _rows(runs, cfg, "table1", checkpoint):
        pxap = round(test["pxap"], 1)
        cl = None if np.isnan(test["accuracy"]) else round(test["accuracy"], 1)
        rows.append({
            "Method": label,
            "PxAP paper": ref.get("pxap"), "PxAP run": pxap,
            "PxAP diff": _delta(pxap, ref.get("pxap")),
            "CL paper": ref.get("cl"), "CL run": cl, "CL diff": _delta(cl, ref.get("cl")),
        })
    return pd.DataFrame(rows).set_index("Method")


def rates_table(runs: list[Run], cfg: Config, checkpoint: str | None = None) -> pd.DataFrame:
    """Table 6 rows: TP*/FN*/TN*/FP* at the test-oracle threshold (as the paper) and at valpx's."""
    rows = []
    for label, ref, test in _rows(runs, cfg, "table6", checkpoint):
        for source, rates in (("paper", None), ("run, test-oracle threshold", test["rates"]),
                              ("run, valpx threshold", test["rates_valpx_threshold"])):
            row: dict[str, Any] = {"Method": label, "Source": source}
            for short in ("TP", "FN", "TN", "FP"):
                value = ref.get(short.lower()) if rates is None else rates[f"{short}*"]
                row[f"{short}*"] = None if value is None else round(float(value), 1)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["Method", "Source"])


def pick_images(labels: list[int], per_class: int) -> list[int]:
    """The first `per_class` images of each class: a fixed, reproducible sample for figures."""
    chosen: list[int] = []
    for cls in sorted(set(labels)):
        chosen += [i for i, y in enumerate(labels) if y == cls][:per_class]
    return chosen


def map_grid(runs: list[Run], cfg: Config, checkpoint: str | None = None,
             per_class: int | None = None, split: str = "test") -> plt.Figure:
    """Figure-2-style grid: image, ground truth, then each run's map on the same test images.

    Each run sees the images at its own input size (SAT: 224); maps are shown at cfg's size.
    """
    checkpoint = checkpoint or cfg.select
    per_class = per_class or cfg.figure_images
    device = resolve_device(cfg.device)
    ds = dataset(cfg, split)
    idx = pick_images([r.label for r in ds.records], per_class)
    items = [ds[i] for i in idx]
    size = (cfg.image_size, cfg.image_size)
    y = torch.tensor([int(it["label"]) for it in items], device=device)
    maps = []
    for run in runs:
        run_ds = dataset(run.config, split)
        x = torch.stack([run_ds[i]["image"] for i in idx]).to(device)
        model = run.load_model(checkpoint, device)
        maps.append(compute_maps(run.map_method, model, x, y, size=size).cpu())
    titles = ["Image", "Ground truth"] + [method_label(run) for run in runs]
    fig, axes = plt.subplots(len(idx), len(titles), figsize=(2.1 * len(titles), 2.1 * len(idx)),
                             squeeze=False)
    names = {0: "benign", 1: "malignant"} if paper_dataset(cfg) == "glas" else {0: "normal",
                                                                              1: "tumour"}
    for r, item in enumerate(items):
        image = to_image(item["image"])
        panels = [image, item["mask"].numpy()] + [m[r].numpy() for m in maps]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(panel)
                ax.set_ylabel(names.get(int(item["label"]), str(int(item["label"]))))
            elif c == 1:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image)
                ax.imshow(panel, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    return fig


def write_results(output_dir: str | Path, cfg: Config, started: float, *,
                  metrics: dict[str, Any], headline: dict[str, Any],
                  runs: dict[str, Run] | None = None) -> Path:
    """A notebook's results.json: its metrics, the headline for the index, and provenance."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": metrics, "headline": headline,
        "runs": {name: {"dir": str(r.dir), "key": r.key, "reused": r.reused,
                        "durations": r.results.get("durations")}
                 for name, r in (runs or {}).items()},
        "provenance": provenance(cfg, resolve_device(cfg.device), started=started,
                                 ended=time.time()),
    }
    path = out / "results.json"
    write_json(path, payload)
    return path


def history_plot(runs: list[Run]) -> plt.Figure:
    """valcl accuracy and valpx PxAP per epoch: the asynchronous convergence behind B-LOC/B-CL."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for run in runs:
        hist = run.results["history"]
        epochs = [h["epoch"] for h in hist]
        label = method_label(run)
        axes[0].plot(epochs, [h["valpx_pxap"] for h in hist], label=label)
        axes[1].plot(epochs, [h["valcl_accuracy"] for h in hist], label=label)
        for ax, key in ((axes[0], "b-loc"), (axes[1], "b-cl")):
            ax.axvline(run.results["best_epoch"][key], ls=":", color=ax.lines[-1].get_color())
    axes[0].set(title="valpx PxAP (B-LOC at the dotted line)", xlabel="epoch", ylabel="PxAP")
    axes[1].set(title="valcl accuracy (B-CL at the dotted line)", xlabel="epoch", ylabel="CL %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
