"""Localisation maps as plain functions of (model, x, labels), plus a name -> function registry.

Adding a method is one function and one registry line. Gradient CAMs differentiate the class
score with respect to F directly (`torch.autograd.grad`), so they need no hooks and leave the
parameters' `.grad` untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.models.model import WSOLModel


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max to [0,1] over the last two dims; a constant map becomes zeros, not NaN."""
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.view_as(maps)


def _label_index(labels: Tensor, batch: int, device: torch.device) -> Tensor:
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.numel() != batch:
        raise DataError(
            f"got {labels.numel()} labels for a batch of {batch} images; "
            "pass one class index per image."
        )
    return labels.view(-1, 1)


def layercam(
    model: WSOLModel, x: Tensor, labels: Tensor, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """LayerCAM of the TRUE class on F (notes 2.3): ReLU(sum_k ReLU(dS/dF_k) * F_k), min-max.

    The encoder runs without a graph: the score's gradient w.r.t. F depends only on the image
    head, so the backward pass never touches encoder activations (and works with a frozen
    encoder). The logits equal `model(x).logits` of the same call.
    """
    with torch.no_grad():
        features = model.encoder(x)
    index = _label_index(labels, features.shape[0], features.device)
    with torch.enable_grad():
        features = features.detach().requires_grad_(True)
        logits = model.classify(features)
        score = logits.gather(1, index)
        (grads,) = torch.autograd.grad(score.sum(), features)
    cam = torch.relu((torch.relu(grads) * features.detach()).sum(dim=1))
    maps = minmax(cam)
    return (maps, logits.detach()) if return_logits else maps


def pixelcam(
    model: WSOLModel, x: Tensor, labels: Tensor | None = None, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """PixelCAM map: FG softmax probability of the pixel head at F's resolution (notes 1.3).

    Class-agnostic (labels are ignored) and not min-max normalised, as in the official code.
    """
    if getattr(model, "pixel_head", None) is None:
        raise ModelError(
            "the model has no pixel head, so it has no PixelCAM map; build it with "
            "pixel_head='linear' (or 'multi_layer')."
        )
    with torch.no_grad():
        out = model(x)
        maps = torch.softmax(out.pixel_logits, dim=1)[:, 1]
    return (maps, out.logits) if return_logits else maps


MAPS: dict[str, Callable] = {"layercam": layercam, "pixelcam": pixelcam}


def compute_maps(
    method: str,
    model: WSOLModel,
    x: Tensor,
    labels: Tensor | None,
    size: tuple[int, int] | None = None,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Maps (B,h,w) in [0,1] by method name, optionally resized to `size` for evaluation."""
    if method not in MAPS:
        raise ConfigError(f"map method {method!r} is unknown; use one of {', '.join(MAPS)}.")
    if size is not None and (len(size) != 2 or any(int(s) < 1 for s in size)):
        raise ConfigError(f"map size {size!r} must be two positive integers (height, width).")
    result = MAPS[method](model, x, labels, return_logits=return_logits)
    maps, logits = result if return_logits else (result, None)
    if size is not None:
        maps = F.interpolate(
            maps.unsqueeze(1),
            size=(int(size[0]), int(size[1])),
            mode="bilinear",
            align_corners=False,
        ).squeeze(1)
    maps = torch.nan_to_num(maps, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    return (maps, logits) if return_logits else maps
