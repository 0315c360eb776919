"""One test image of a trained run, looked at closely: the baseline's CAM, PixelCAM's map, the
seeds the PB sampler draws from that CAM, and both maps cut at a threshold.

notebooks/00_explore.ipynb puts ipywidgets controls on these functions; each returns plain data,
a figure or a table, so the notebook also runs headless (papermill) with its default choices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from pixelcam import progress
from pixelcam.builders import dataset
from pixelcam.config import Config
from pixelcam.evaluate import per_image_ap, to_image
from pixelcam.maps import compute_maps
from pixelcam.report import data_label, method_label
from pixelcam.sampler import sample_seeds_pb
from pixelcam.store import Run, load_run


def interactive() -> bool:
    """False under `pixelcam reports` (papermill): controls need a live JupyterLab."""
    import os

    return not os.environ.get(progress.ENV)


def pixelcam_runs(cache_dir: str | Path) -> list[Run]:
    """Every finished PixelCAM run of the cache (any profile), the newest first."""
    found = sorted(Path(cache_dir).glob("runs/pixelcam-*/results.json"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return [load_run(p.parent) for p in found]


def baseline_of(run: Run) -> Run:
    """The baseline whose CAMs seeded this PixelCAM run."""
    return load_run(run.dir.parent / f"baseline-{run.results['baseline_key']}")


def run_label(run: Run) -> str:
    cfg = run.config
    return (f"{method_label(run)} · {data_label(cfg)} · {cfg.backbone} · seed {cfg.seed} · "
            f"n={cfg.n_fg} "
            f"λ={cfg.lam:g} · {run.dir.name}")


@dataclass
class View:
    """One eval-size test image with its mask and both maps (values in [0, 1])."""

    image: torch.Tensor  # (3, H, W), normalised
    mask: torch.Tensor | None  # (H, W) {0, 1}; None for an image without one
    cam: torch.Tensor  # the baseline's map
    pixel: torch.Tensor  # PixelCAM's map
    label: int
    image_id: str
    config: Config


@functools.lru_cache(maxsize=8)
def _model(run_dir: str, checkpoint: str) -> tuple[Run, torch.nn.Module]:
    run = load_run(run_dir)
    return run, run.load_model(checkpoint, torch.device("cpu"))


def test_size(run: Run) -> int:
    return len(dataset(run.config, "test"))


def view(run: Run, index: int, checkpoint: str = "b-loc") -> View:
    """Image `index` of the run's test split with both maps from `checkpoint` (on the CPU)."""
    cfg = run.config
    ds = dataset(cfg, "test")
    if not 0 <= index < len(ds):
        raise IndexError(f"image {index}: the test split of {run.dir.name} has {len(ds)} images")
    item = ds[index]
    x, y = item["image"][None], item["label"][None]
    base, base_model = _model(str(baseline_of(run).dir), checkpoint)
    _, pix_model = _model(str(run.dir), checkpoint)
    size = tuple(x.shape[-2:])
    cam = compute_maps(base.map_method, base_model, x, y, size=size)[0].detach().float()
    pixel = compute_maps("pixelcam", pix_model, x, y, size=size)[0].detach().float()
    record = ds.records[index]
    return View(item["image"], item["mask"] if record.mask_path else None, cam, pixel,
                int(item["label"]), record.image_id, cfg)


def seeds(v: View, n: int, min_p: float, seed: int = 0) -> torch.Tensor:
    """(H, W) target: 1 FG seed, 0 BG seed, -1 unlabelled, as the PB sampler draws them."""
    gen = torch.Generator().manual_seed(seed)
    return sample_seeds_pb(v.cam[None], n_fg=n, n_bg=n, min_p=min_p, bg_mode=v.config.bg_mode,
                           generator=gen)[0]


def at_threshold(m: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> dict[str, float]:
    """IoU and pixel rates (percent) of `m >= threshold` against the mask."""
    nan = float("nan")
    if mask is None:
        return {"IoU %": nan, "TP* %": nan, "FN* %": nan, "TN* %": nan, "FP* %": nan}
    pred, gt = m >= threshold, mask.bool()
    tp, fp = int((pred & gt).sum()), int((pred & ~gt).sum())
    fn, tn = int((~pred & gt).sum()), int((~pred & ~gt).sum())
    pos, neg = tp + fn, tn + fp
    return {"IoU %": 100.0 * tp / max(tp + fp + fn, 1),
            "TP* %": 100.0 * tp / pos if pos else nan, "FN* %": 100.0 * fn / pos if pos else nan,
            "TN* %": 100.0 * tn / neg if neg else nan, "FP* %": 100.0 * fp / neg if neg else nan}


def image_ap(m: torch.Tensor, mask: torch.Tensor | None) -> float:
    """This image's own AP (percent; NaN without foreground)."""
    return float("nan") if mask is None else per_image_ap(m[None], mask[None])[0]


def table(v: View, threshold: float) -> pd.DataFrame:
    rows = {}
    for name, m in (("baseline CAM", v.cam), ("PixelCAM", v.pixel)):
        rows[name] = {"AP %": image_ap(m, v.mask), **at_threshold(m, v.mask, threshold)}
    return pd.DataFrame(rows).T.round(1)


def figure(v: View, target: torch.Tensor, threshold: float) -> plt.Figure:
    """Image, mask, CAM with its seeds, PixelCAM's map, and both maps at the threshold."""
    img = to_image(v.image)
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    panels = [("image", None), ("ground truth", v.mask), ("baseline CAM + seeds", v.cam),
              ("PixelCAM map", v.pixel), (f"CAM >= {threshold:.2f}", v.cam >= threshold),
              (f"PixelCAM >= {threshold:.2f}", v.pixel >= threshold)]
    for ax, (title, m) in zip(axes.flat, panels):
        ax.imshow(img)
        if m is not None:
            cmap = "jet" if m.dtype.is_floating_point else "gray"
            ax.imshow(m.float().numpy(), cmap=cmap, alpha=0.45, vmin=0, vmax=1)
        if v.mask is not None and title != "ground truth":
            ax.contour(v.mask.numpy(), levels=[0.5], colors="white", linewidths=0.8)
        if title.startswith("baseline CAM"):
            for value, colour, marker in ((1, "red", "o"), (0, "cyan", "s")):
                ys, xs = torch.nonzero(target == value, as_tuple=True)
                ax.scatter(xs.numpy(), ys.numpy(), s=24, c=colour, marker=marker,
                           edgecolors="black", linewidths=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{v.image_id} (class {v.label}); FG seeds red, BG seeds cyan, mask outline "
                 "white", fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # shown where the caller displays it
    return fig
