"""The WSOL nets' localisation maps as plain functions of (model, x, labels).

Which method uses which function is `pixelcam.methods`; a map by name is `pixelcam.maps`.
Gradient CAMs differentiate the class score with respect to F directly (`torch.autograd.grad`),
so they need no hooks and leave the parameters' `.grad` untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.models.heads import WGAP, DeepMIL
from pixelcam.models.model import WSOLModel

GRADCAMPP_VARIANTS = ("paper", "official")


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max to [0,1] over the last two dims; a constant map becomes zeros, not NaN."""
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.view_as(maps)


def _label_index(
    labels: Tensor | None, batch: int, device: torch.device, num_classes: int | None = None
) -> Tensor:
    if labels is None:
        raise DataError(
            "this map is the one of the true class, but labels=None was given; "
            "pass one class index per image."
        )
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.numel() != batch:
        raise DataError(
            f"got {labels.numel()} labels for a batch of {batch} images; "
            "pass one class index per image."
        )
    if num_classes is not None and labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(
                f"label {low if low < 0 else high} falls outside the model's {num_classes} "
                f"classes; pass class indices in [0, {num_classes - 1}]."
            )
    return labels.view(-1, 1)


def _score_gradient(
    model: WSOLModel, x: Tensor, labels: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """F, dS_y/dF and the logits from one encoder pass and one `autograd.grad` call.

    The encoder runs without a graph: the score's gradient w.r.t. F depends only on the image
    head, so the backward pass never touches encoder activations (and works with a frozen
    encoder); parameter `.grad`s are never written.
    """
    with torch.no_grad():
        features = model.encoder(x)
    with torch.enable_grad():
        features = features.detach().requires_grad_(True)
        logits = model.classify(features)
        index = _label_index(labels, features.shape[0], features.device, logits.shape[1])
        score = logits.gather(1, index)
        (grads,) = torch.autograd.grad(score.sum(), features)
    return features.detach(), grads, logits.detach()


def layercam(
    model: WSOLModel, x: Tensor, labels: Tensor, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """LayerCAM of the TRUE class on F (notes 2.3): ReLU(sum_k ReLU(dS/dF_k) * F_k), min-max.

    One encoder pass without a graph and one `autograd.grad` w.r.t. F (see `_score_gradient`).
    The logits equal `model(x).logits` of the same call.
    """
    features, grads, logits = _score_gradient(model, x, labels)
    cam = torch.relu((torch.relu(grads) * features).sum(dim=1))
    maps = minmax(cam)
    return (maps, logits) if return_logits else maps


def gradcampp(
    model: WSOLModel,
    x: Tensor,
    labels: Tensor,
    return_logits: bool = False,
    variant: str = "paper",
) -> Tensor | tuple[Tensor, Tensor]:
    """GradCAM++ of the TRUE class on F, from one `autograd.grad` (no hooks).

    "paper" (Chattopadhyay et al. 2018, Eq. 19, with first-order gradients as pytorch-grad-cam
    does): alpha = G^2 / (2 G^2 + sum_ab F_ab * G^3), w_k = sum_ij alpha * ReLU(G). Where the
    denominator is 0, alpha is 0 instead of NaN/inf; unlike pytorch-grad-cam no eps is added,
    because its eps=1e-6 swamps G^2 when G is small (WGAP: G = w/(h*w), ~1e-4 at 28x28) and
    so changes the map.
    "official" (notes 2.2): the official alpha division is a no-op on a copy, so there
    w_k = sum_ij G^2 * ReLU(G). Both: CAM = ReLU(sum_k w_k F_k), min-max per image.
    """
    if variant not in GRADCAMPP_VARIANTS:
        raise ConfigError(
            f"GradCAM++ variant {variant!r} is unknown; use one of {', '.join(GRADCAMPP_VARIANTS)}."
        )
    features, grads, logits = _score_gradient(model, x, labels)
    grads2 = grads * grads
    if variant == "paper":
        spatial_sum = features.sum(dim=(2, 3), keepdim=True)
        denom = 2.0 * grads2 + spatial_sum * grads2 * grads
        nonzero = denom != 0
        alpha = torch.where(nonzero, grads2 / torch.where(nonzero, denom, 1.0), 0.0)
    else:
        alpha = grads2
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1))
    maps = minmax(cam)
    return (maps, logits) if return_logits else maps


def gradcampp_official(
    model: WSOLModel, x: Tensor, labels: Tensor, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """GradCAM++ as the official code computes it (w_k = sum G^2 ReLU(G)), for reproduction."""
    return gradcampp(model, x, labels, return_logits=return_logits, variant="official")


def cam(
    model: WSOLModel, x: Tensor, labels: Tensor, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """CAM of the TRUE class (Zhou et al. 2016, notes 2.5): sum_k W[y,k] F_k, no ReLU, min-max.

    W holds the WGAP classifier's CLASS rows: with support_background they are fc.weight[1:].
    This fixes the official bug, which indexed fc.weight[y] and so gave class 0 the unused
    background row. The bias is left out: it is constant over space and min-max removes it.
    """
    head = getattr(model, "image_head", None)
    if not isinstance(head, WGAP):
        raise ModelError(
            f"CAM needs a WGAP image head, got {type(head).__name__}; build the model with "
            "head='wgap' (or use 'layercam'/'gradcampp' for other heads)."
        )
    with torch.no_grad():
        features = model.encoder(x)
        logits = model.classify(features)
        index = _label_index(labels, features.shape[0], features.device, logits.shape[1])
        rows = head.fc.weight[1:] if head.support_background else head.fc.weight
        maps = minmax(torch.einsum("bk,bkhw->bhw", rows[index[:, 0]], features))
    return (maps, logits) if return_logits else maps


def deepmil(
    model: WSOLModel, x: Tensor, labels: Tensor, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """DeepMIL map (notes 2.1): min-max of the TRUE class attention a_y, at F's resolution.

    Attention and logits come from the same head pass (on the same dropped F as `classify`).
    """
    head = getattr(model, "image_head", None)
    if not isinstance(head, DeepMIL):
        raise ModelError(
            f"the deepmil map needs a DeepMIL image head, got {type(head).__name__}; build "
            "the model with head='deepmil'."
        )
    with torch.no_grad():
        features = model.encoder(x)
        logits, att = head.forward_with_attention(model.dropout(features))
        index = _label_index(labels, features.shape[0], features.device, logits.shape[1])
        maps = minmax(att[torch.arange(att.shape[0], device=att.device), index[:, 0]])
    return (maps, logits) if return_logits else maps


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
