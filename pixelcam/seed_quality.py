"""Where the pseudo-labels land: seeds drawn from a baseline's stored CAMs, against the GT masks.

PixelCAM can only learn what its seeds teach: FG seeds must fall on the objects (glands) and BG
seeds off them. The train split's masks are never used for training; here they only measure the
seeds, the way the trainer draws them (the configured seeder on the CAM at the image size, as an
un-augmented train image sees it).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from pixelcam.builders import dataset
from pixelcam.config import Config
from pixelcam.evaluate import to_image
from pixelcam.pipelines import store_cams
from pixelcam.report import pick_images
from pixelcam.store import Run
from pixelcam.train import bg_region_share, configured_seeds

__all__ = ["cam_precision", "draw_seeds", "seed_precision", "seed_precision_table", "seed_grid"]


def draw_seeds(baseline: Run, cfg: Config, split: str = "train",
               indices: list[int] | None = None) -> list[dict]:
    """Per image: eval-size image, mask (None without one), CAM and seed target (-1/0/1).

    The CAMs are the baseline's stored `cam_checkpoint` CAMs (the ones PixelCAM trains on);
    seeds come from cfg's seeder with a generator seeded by cfg.seed, so a rerun draws the same.
    """
    cams = store_cams(baseline, cfg, cfg.cam_checkpoint, log=lambda _: None)
    ds = dataset(cfg, split, cams=cams)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for i in indices if indices is not None else range(len(ds)):
        item = ds[i]
        record = ds.records[i]
        target = configured_seeds(cfg, item["cam"][None], gen)[0]
        out.append({"image": item["image"], "label": int(item["label"]), "cam": item["cam"],
                    "mask": item["mask"] if record.mask_path else None, "seeds": target,
                    "image_id": record.image_id})
    return out


def seed_precision(drawn: list[dict]) -> dict[str, float]:
    """Share of FG seeds on the mask and of BG seeds off it, pooled over images with masks."""
    fg_hit = fg_all = bg_hit = bg_all = 0
    for d in drawn:
        if d["mask"] is None:
            continue
        on = d["mask"].bool()
        fg, bg = d["seeds"] == 1, d["seeds"] == 0
        fg_hit += int((fg & on).sum())
        fg_all += int(fg.sum())
        bg_hit += int((bg & ~on).sum())
        bg_all += int(bg.sum())
    nan = float("nan")
    return {"FG seeds on objects %": 100.0 * fg_hit / fg_all if fg_all else nan,
            "BG seeds off objects %": 100.0 * bg_hit / bg_all if bg_all else nan,
            "object pixels %": _mask_share(drawn)}


def cam_precision(drawn: list[dict], top: tuple[float, ...] = (0.01, 0.05),
                  bottom: float = 0.2) -> dict[str, float]:
    """How much the CAM itself knows, whatever the seeder: the share of object pixels among each
    image's highest-CAM `top` fraction, and of non-object pixels among its lowest `bottom`
    fraction (PB's BG region when bottom = min_p), pooled over the images with masks.

    When even the top 1% sits on objects at about chance, no seeder can draw good FG seeds from
    this CAM; the fix is a better CAM, not a sharper sampler. Ties keep raster order (a stable
    sort), as in the seeders' lowest-CAM region.
    """
    pairs = [(d["cam"], d["mask"]) for d in drawn if d["mask"] is not None]
    names = [f"top {_percent(q)} CAM on objects %" for q in top]
    names.append(f"bottom {_percent(bottom)} CAM off objects %")
    if not pairs:
        return dict.fromkeys(names, float("nan"))
    cams = torch.stack([c for c, _ in pairs]).flatten(1).float()
    masks = torch.stack([m for _, m in pairs]).flatten(1).bool()
    hw = cams.shape[1]
    on_by_rank = masks.gather(1, torch.sort(cams, dim=1, descending=True, stable=True).indices)
    low_first = masks.gather(1, torch.sort(cams, dim=1, stable=True).indices)
    out = {}
    for name, q in zip(names, top):
        k = max(1, int(q * hw))
        out[name] = 100.0 * float(on_by_rank[:, :k].float().mean())
    k = max(1, int(bottom * hw))
    out[names[-1]] = 100.0 * float((~low_first[:, :k]).float().mean())
    return out


def _percent(q: float) -> str:
    return f"{100 * q:g}%"


def _mask_share(drawn: list[dict]) -> float:
    masks = [d["mask"] for d in drawn if d["mask"] is not None]
    if not masks:
        return float("nan")
    return 100.0 * float(sum(int(m.sum()) for m in masks)) / sum(m.numel() for m in masks)


def seed_precision_table(baselines: dict[str, Run], cfg: Config) -> pd.DataFrame:
    """One row per baseline: how often its seeds land where they should on the train split.

    `object pixels %` is the chance level of FG seeds (100 minus it, of BG seeds). The `top`/
    `bottom` columns score the CAM the seeds come from (`cam_precision`; bottom = the seeder's
    lowest-CAM BG region, `bg_region_share`).
    """
    bottom = bg_region_share(cfg)
    rows = {}
    for label, run in baselines.items():
        drawn = draw_seeds(run, _with_run_seed(run, cfg))
        rows[label] = {**seed_precision(drawn), **cam_precision(drawn, bottom=bottom)}
    return pd.DataFrame.from_dict(rows, orient="index").round(1)


def _with_run_seed(run: Run, cfg: Config) -> Config:
    """cfg drawing with the baseline's own seed (cfg's size: SAT's 224 px CAMs are resized)."""
    return cfg.replace(seed=run.config.seed)


def seed_grid(baselines: dict[str, Run], cfg: Config, per_class: int = 2) -> plt.Figure:
    """Train images with each baseline's CAM and the seeds drawn from it (FG red, BG cyan);
    the mask outline in white where the split has masks."""
    labels = [r.label for r in dataset(cfg, "train").records]
    idx = pick_images(labels, per_class)
    names = list(baselines)
    fig, axes = plt.subplots(len(idx), len(names), figsize=(2.4 * len(names), 2.4 * len(idx)),
                             squeeze=False)
    for c, name in enumerate(names):
        run = baselines[name]
        drawn = draw_seeds(run, _with_run_seed(run, cfg), indices=idx)
        for r, d in enumerate(drawn):
            ax = axes[r, c]
            ax.imshow(to_image(d["image"]))
            ax.imshow(d["cam"].numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
            if d["mask"] is not None:
                ax.contour(d["mask"].numpy(), levels=[0.5], colors="white", linewidths=0.8)
            for value, colour, marker in ((1, "red", "o"), (0, "cyan", "s")):
                ys, xs = torch.nonzero(d["seeds"] == value, as_tuple=True)
                ax.scatter(xs.numpy(), ys.numpy(), s=22, c=colour, marker=marker,
                           edgecolors="black", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # shown once, where the caller displays it, not again at the end of the cell
    return fig
