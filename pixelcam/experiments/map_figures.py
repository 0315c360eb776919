"""Figures 2, 11-18: each run's maps on the same test images, for `pixelcam.figures.map_grid`."""

from __future__ import annotations

import torch

from pixelcam.builders import dataset, with_data_of
from pixelcam.config import Config
from pixelcam.datasets import DATASETS
from pixelcam.evaluate import resolve_device, to_image
from pixelcam.figures import map_grid as map_grid_figure
from pixelcam.maps import compute_maps
from pixelcam.report import method_label, pick_images
from pixelcam.store import Run


def run_maps(runs: list[Run], cfg: Config, checkpoint: str | None = None,
             per_class: int | None = None, split: str = "test",
             labels: list[int] | None = None) -> tuple[list[dict], list[torch.Tensor]]:
    """The first `per_class` images of each class of cfg's split (those of `labels` only, if
    given), and each run's maps of them at cfg's size: (items, one (N,H,W) tensor per run).

    cfg's data may be another dataset than the runs were trained on (OOD figures). Each run
    sees the images at its own input size (SAT: 224).
    """
    checkpoint = checkpoint or cfg.select
    per_class = per_class or cfg.figure_images
    device = resolve_device(cfg.device)
    ds = dataset(cfg, split)
    all_labels = [r.label for r in ds.records]
    idx = [i for i in pick_images(all_labels, per_class)
           if labels is None or all_labels[i] in labels]
    items = [ds[i] for i in idx]
    size = (cfg.image_size, cfg.image_size)
    y = torch.tensor([int(it["label"]) for it in items], device=device)
    maps = []
    for run in runs:
        run_ds = dataset(with_data_of(run.config, cfg), split)
        x = torch.stack([run_ds[i]["image"] for i in idx]).to(device)
        model = run.load_model(checkpoint, device)
        maps.append(compute_maps(run.map_method, model, x, y, size=size).cpu())
    return items, maps


def map_grid(runs: list[Run], cfg: Config, checkpoint: str | None = None,
             per_class: int | None = None, split: str = "test", labels: list[int] | None = None,
             titles: list[str] | None = None):
    """Figure-2-style grid: image, ground truth, then each run's map on cfg's test images."""
    items, maps = run_maps(runs, cfg, checkpoint, per_class, split, labels)
    names = DATASETS[cfg.dataset].class_names
    return map_grid_figure(
        [to_image(it["image"]) for it in items], [it["mask"].numpy() for it in items],
        [names.get(int(it["label"]), str(int(it["label"]))) for it in items],
        [m.numpy() for m in maps], titles or [method_label(run) for run in runs])
