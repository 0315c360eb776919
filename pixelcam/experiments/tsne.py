"""Figures 19-24: t-SNE of the pixel features, baseline beside PixelCAM."""

from __future__ import annotations

from typing import Any

import torch

from pixelcam.analysis import pixel_embedding
from pixelcam.builders import dataset, with_data_of
from pixelcam.config import Config
from pixelcam.datasets import DATASETS
from pixelcam.evaluate import resolve_device
from pixelcam.report import method_label, pick_images
from pixelcam.store import Run


def tsne_columns(pair: tuple[Run, Run], data: Config, labels: list[int],
                 checkpoint: str | None = None) -> dict[str, dict[str, Any]]:
    """For the first `tsne_images` test images of each class in `labels`: the baseline's and
    PixelCAM's pixel-feature embeddings (and PixelCAM's pixel logits), keyed by image name."""
    checkpoint = checkpoint or data.select
    device = resolve_device(data.device)
    base, pix = pair
    out: dict[str, dict[str, Any]] = {}
    models = {"baseline": base.load_model(checkpoint, device),
              "pixelcam": pix.load_model(checkpoint, device)}
    for which, run in (("baseline", base), ("pixelcam", pix)):
        label = method_label(run)
        ds = dataset(with_data_of(run.config, data), "test")
        all_labels = [r.label for r in ds.records]
        chosen = [i for i in pick_images(all_labels, data.tsne_images) if all_labels[i] in labels]
        for i in chosen:
            item = ds[i]
            name = f"{DATASETS[data.dataset].class_names[all_labels[i]]} #{i}"
            with torch.no_grad():
                emb = pixel_embedding(models[which], item["image"].to(device), item["mask"],
                                      max_pixels=data.tsne_pixels, seed=data.seed)
            out.setdefault(name, {})[label] = emb
    return out
