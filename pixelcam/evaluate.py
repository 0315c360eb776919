"""evaluate(): maps of a split -> pooled PxAP, accuracy, pixel rates, per-image scores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pixelcam.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pixelcam.maps import compute_maps
from pixelcam.metrics import PxAP, ResampledPxAP


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, so one params file serves CPU laptops and GPU nodes."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loader_workers(requested: int) -> int:
    """Data-loader processes: the params' count, at most one per CPU core of this machine.

    The paper profile asks for 8 (a GPU node); on a 2-core laptop 8 processes only add start-up
    time and contention (and torch warns about them).
    """
    return max(0, min(requested, os.cpu_count() or 1))


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                device: torch.device | None = None) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(num_workers),
        pin_memory=device is not None and device.type == "cuda",
    )


def iter_maps(model: torch.nn.Module, loader: DataLoader, method: str,
              device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Yield, per batch, the full-size maps with the logits of the same forward pass."""
    model.eval()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        maps, logits = compute_maps(method, model, x, y, size=tuple(x.shape[-2:]),
                                    return_logits=True)
        out = {"maps": maps, "logits": None if logits is None else logits.detach(), "labels": y,
               "index": batch["index"]}
        if "mask" in batch:
            out["masks"] = batch["mask"].to(device, non_blocking=True)
        yield out


@dataclass
class SplitResult:
    """Everything a table needs about one split under one checkpoint."""

    accuracy: float
    pxap: float
    rates: dict[str, float]  # at this split's own mIoU-best threshold (the official test oracle)
    n_images: int
    per_image: dict[str, list[Any]] = field(default_factory=dict)
    metric: PxAP | None = None
    n_correct: int = 0  # images whose predicted class is their label
    # pooled PxAP of each bootstrap resample of the split, paired across models (Table 2)
    resampled_pxap: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "pxap": self.pxap, "rates": self.rates,
                "n_images": self.n_images, "per_image": self.per_image,
                "resampled_pxap": self.resampled_pxap}


def per_image_ap(maps: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """PxAP of each image alone (NaN without foreground), for paired tests across methods."""
    scores = []
    for m, g in zip(maps, masks):
        if not bool(g.any()):
            scores.append(float("nan"))
            continue
        metric = PxAP()
        metric.update(m[None], g[None])
        scores.append(metric.compute())
    return scores


def evaluate_split(model: torch.nn.Module, loader: DataLoader, method: str,
                   device: torch.device, with_per_image: bool = True, resamples: int = 29,
                   resample_seed: int = 0) -> SplitResult:
    """One pass over a split: pooled PxAP (histograms stay on the device) and accuracy.

    With ``resamples`` > 0 it also keeps the pooled PxAP of that many bootstrap resamples of
    the split's images (seeded by ``resample_seed``, so every model sees the same ones): the
    paired values of the Table 2 t-test.
    """
    metric = PxAP()
    resampled = None
    if resamples > 0:
        resampled = ResampledPxAP(len(loader.dataset), resamples, seed=resample_seed)
    correct = 0
    total = 0
    per_image: dict[str, list[Any]] = {"index": [], "label": [], "pred": [], "ap": []}
    has_masks = False
    classifies = True
    for out in iter_maps(model, loader, method, device):
        total += int(out["labels"].numel())
        if out["logits"] is None:  # U-Net: localisation only
            classifies = False
            pred = torch.full_like(out["labels"], -1)
        else:
            pred = out["logits"].argmax(1)
            correct += int((pred == out["labels"]).sum())
        if "masks" in out:
            has_masks = True
            metric.update(out["maps"], out["masks"])
            if resampled is not None:
                resampled.update(out["maps"], out["masks"], out["index"])
        if with_per_image:
            per_image["index"] += [int(i) for i in out["index"]]
            per_image["label"] += out["labels"].tolist()
            per_image["pred"] += pred.tolist()
            if "masks" in out:
                per_image["ap"] += per_image_ap(out["maps"], out["masks"])
    pxap = metric.compute() if has_masks else float("nan")
    rates = metric.rates() if has_masks else {}
    accuracy = 100.0 * correct / max(total, 1) if classifies else float("nan")
    return SplitResult(
        accuracy=accuracy, pxap=pxap, rates=rates, n_images=total,
        per_image=per_image if with_per_image else {}, metric=metric if has_masks else None,
        n_correct=correct,
        resampled_pxap=(resampled.compute().tolist()
                        if has_masks and resampled is not None else []),
    )


def image_logits(output: Any) -> torch.Tensor:
    """Class logits of a forward pass: ModelOutput.logits, or the second item of NEGEV's pair."""
    return output.logits if hasattr(output, "logits") else output[1]


def correct_count(model: torch.nn.Module, loader: DataLoader,
                  device: torch.device) -> tuple[int, int]:
    """(correctly classified, total) images of a split, with no maps: the cheap B-CL pass."""
    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for batch in loader:
            logits = image_logits(model(batch["image"].to(device, non_blocking=True)))
            correct += int((logits.argmax(1).cpu() == batch["label"]).sum())
            total += int(batch["label"].numel())
    return correct, total


def accuracy_only(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Classification accuracy (percent) with no maps."""
    correct, total = correct_count(model, loader, device)
    return 100.0 * correct / max(total, 1)


def to_image(x: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation for display: (3,H,W) tensor -> (H,W,3) float in [0,1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
