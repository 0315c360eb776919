"""The paper's figures from computed results: map grids (Figs 2, 11-18), J histograms (Figs 3,
6-8), t-SNE grids (Figs 19-24), stain curves (Figs 4, 5, 9, 10). They take maps, numbers and
images, never models (pixelcam.experiments computes what they show).

Each function builds a bare matplotlib Figure (no pyplot state, nothing shown): the caller
saves it or lets the notebook display it, and many figures in one process do not pile up.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["PIXELCAM_SUFFIX", "image_strip", "map_grid", "separability_hist", "stain_curves",
           "tsne_grid"]

PIXELCAM_SUFFIX = " + PixelCAM"
FG_COLOR = "tab:red"
BG_COLOR = "tab:blue"
_PANEL = 3.6  # inches per panel side


def _panels(names: list[str]) -> list[list[str]]:
    """Group "X" with "X + PixelCAM" (baseline first); unpaired names get a panel each."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for name in names:
        if name in placed:
            continue
        if name.endswith(PIXELCAM_SUFFIX) and name[: -len(PIXELCAM_SUFFIX)] in names:
            continue  # drawn in its baseline's panel
        group = [name]
        if name + PIXELCAM_SUFFIX in names:
            group.append(name + PIXELCAM_SUFFIX)
        placed.update(group)
        groups.append(group)
    return groups


def map_grid(images: list[np.ndarray], masks: list[np.ndarray], row_names: list[str],
             maps: list[np.ndarray], titles: list[str]) -> Figure:
    """Figure-2 style: per image (a row), the image, its ground truth, then each map over it.

    `images` (H,W,3) in [0,1], `masks` (H,W), `maps` one (N,H,W) array in [0,1] per column of
    `titles` (after "Image" and "Ground truth"); `row_names` label the rows (the class).
    """
    titles = ["Image", "Ground truth", *titles]
    side = 2.1
    fig = Figure(figsize=(side * len(titles), side * len(images)), layout="tight")
    axes = fig.subplots(len(images), len(titles), squeeze=False)
    for r, (image, mask) in enumerate(zip(images, masks)):
        panels = [image, mask] + [m[r] for m in maps]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(panel)
                ax.set_ylabel(row_names[r])
            elif c == 1:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image)
                ax.imshow(panel, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    return fig


def image_strip(images: list[np.ndarray], titles: list[str]) -> Figure:
    """Images side by side with a title each (a test image at every stain level)."""
    fig = Figure(figsize=(1.6 * len(images), 1.9), layout="tight")
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for ax, image, title in zip(axes, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig


def separability_hist(per_method: Mapping[str, pd.Series], bins: int = 20) -> Figure:
    """Fig 3 style: per baseline, histograms of per-image J alone and with PixelCAM, overlaid.

    Names "X" and "X + PixelCAM" share a panel and bins; NaN/inf J (images without FG or BG)
    are left out and the legend gives the number of images drawn.
    """
    if not per_method:
        raise ValueError("separability_hist: no method given")
    groups = _panels(list(per_method))
    fig = Figure(figsize=(_PANEL * 1.2 * len(groups), _PANEL), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        values = {n: np.asarray(per_method[n], dtype=np.float64) for n in group}
        values = {n: v[np.isfinite(v)] for n, v in values.items()}
        pooled = np.concatenate(list(values.values()))
        edges = np.histogram_bin_edges(pooled if pooled.size else np.zeros(1), bins=bins)
        for k, (name, v) in enumerate(values.items()):
            ax.hist(v, bins=edges, alpha=0.55, color=f"C{k}", edgecolor="white",
                    label=f"{name} (n={v.size})")
        ax.set_title(group[0])
        ax.set_xlabel("class separability J (higher = better)")
        ax.set_ylabel("images")
        ax.legend(fontsize="small")
    return fig


def tsne_grid(columns: Mapping[str, Mapping[str, Mapping]]) -> Figure:
    """Figs 19-24: one column per image; rows: each method's t-SNE, then pixel-logit scatters.

    ``columns[image][method]`` is a :func:`pixelcam.analysis.pixel_embedding` dict. Methods
    keep the first column's order (baseline, then "+ PixelCAM"); every method with pixel
    logits adds a last row of its pixel classifier's logits (BG logit vs FG logit).
    FG pixels are red, BG blue.
    """
    if not columns:
        raise ValueError("tsne_grid: no image given")
    images = list(columns)
    methods = list(columns[images[0]])
    for img in images:
        if list(columns[img]) != methods:
            raise ValueError(
                f"tsne_grid: image {img!r} has methods {list(columns[img])}, expected {methods} "
                "(every column needs the same methods in the same order)"
            )
    logit_methods = [m for m in methods if columns[images[0]][m].get("pixel_logits") is not None]
    rows = [(m, "points") for m in methods] + [(m, "pixel_logits") for m in logit_methods]
    fig = Figure(figsize=(_PANEL * len(images), _PANEL * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(images), squeeze=False)
    for c, img in enumerate(images):
        for r, (method, key) in enumerate(rows):
            ax = axes[r, c]
            emb = columns[img][method]
            xy = emb.get(key)
            if xy is None:
                raise ValueError(f"tsne_grid: {method!r} on image {img!r} has no {key!r}")
            xy = np.asarray(xy)
            fg = np.asarray(emb["is_fg"], dtype=bool)
            ax.scatter(xy[~fg, 0], xy[~fg, 1], s=8, c=BG_COLOR, alpha=0.7, label="BG")
            ax.scatter(xy[fg, 0], xy[fg, 1], s=8, c=FG_COLOR, alpha=0.7, label="FG")
            if key == "points":
                ax.set_title(f"{img}\n{method}: t-SNE of F" if r == 0 else f"{method}: t-SNE of F",
                             fontsize="medium")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.set_title(f"{method}: pixel logits", fontsize="medium")
                ax.set_xlabel("BG logit")
                ax.set_ylabel("FG logit")
            if c == 0 and r == 0:
                ax.legend(fontsize="small", loc="best")
    return fig


def stain_curves(df: pd.DataFrame) -> Figure:
    """Figs 4/5/9/10: metric vs stain level (0 = original .. 10 = farthest), one line per method.

    ``df`` is long-form with columns level, method, metric, value; one panel per metric.
    Several values per (level, method, metric), e.g. runs, are averaged with a +-1 SD band.
    """
    missing = {"level", "method", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(
            f"stain_curves: df lacks column(s) {sorted(missing)}; expected long-form rows "
            "(level, method, metric, value)"
        )
    if df.empty:
        raise ValueError("stain_curves: df has no rows")
    metrics = list(dict.fromkeys(df["metric"]))
    fig = Figure(figsize=(_PANEL * 1.3 * len(metrics), _PANEL), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for k, (ax, metric) in enumerate(zip(axes, metrics)):
        part = df[df["metric"] == metric]
        sns.lineplot(data=part, x="level", y="value", hue="method", marker="o", errorbar="sd",
                     ax=ax, legend=k == len(metrics) - 1)
        ax.set_title(str(metric))
        ax.set_xlabel("stain shift level (0 = original)")
        ax.set_ylabel(str(metric))
        levels = sorted(pd.unique(part["level"]))
        ax.set_xticks(levels)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize="small",
                        title="method")
    return fig
