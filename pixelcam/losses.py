"""PixelCAM training losses: the partial (seed-only) pixel cross-entropy and the joint objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelcam.sampler import IGNORE_INDEX

__all__ = ["partial_cross_entropy", "pixelcam_objective"]


def partial_cross_entropy(
    pixel_logits: Tensor, target: Tensor, rows: Tensor | None = None
) -> Tensor:
    """Mean CE over the labelled (seed) pixels of the batch, the official code's L_px.

    ``pixel_logits`` (B,2,h,w) are raw logits at feature resolution; when (h,w) differs from the
    target's (H,W) they are upsampled bilinearly (align_corners=False) first, which for a linear
    head equals classifying upsampled features. ``target`` (B,H,W) is a seeder output
    ({1, 0, IGNORE_INDEX}). The reduction is the mean over labelled pixels (the code), not the
    paper's sum. ``rows`` (B,) bool keeps only those images (CAMELYON without
    neg_samples_partial: tumour patches only). With no labelled pixel the result is a zero that
    still carries grad, never NaN, and no value is read back to the host.
    """
    if pixel_logits.ndim != 4 or target.ndim != 3 or pixel_logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"partial_cross_entropy: expected pixel_logits (B,C,h,w) and target (B,H,W), got "
            f"{tuple(pixel_logits.shape)} and {tuple(target.shape)}"
        )
    if target.dtype != torch.long:
        raise ValueError(f"partial_cross_entropy: target must be int64, got {target.dtype}")
    size = tuple(target.shape[1:])
    if tuple(pixel_logits.shape[2:]) != size:
        pixel_logits = F.interpolate(pixel_logits, size=size, mode="bilinear", align_corners=False)
    if rows is not None:
        if rows.shape != target.shape[:1]:
            raise ValueError(
                f"partial_cross_entropy: rows must have shape ({target.shape[0]},), got "
                f"{tuple(rows.shape)}"
            )
        keep = rows.to(device=target.device, dtype=torch.bool).view(-1, 1, 1)
        target = torch.where(keep, target, torch.full_like(target, IGNORE_INDEX))
    # sum / count instead of reduction="mean": "mean" returns NaN (0/0) on an all-ignore batch.
    total = F.cross_entropy(pixel_logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def pixelcam_objective(
    logits: Tensor,
    labels: Tensor,
    pixel_logits: Tensor,
    target: Tensor,
    lam: float = 1.0,
    rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PixelCAM loss CE(image logits, y) + lam * partial CE, plus its two terms for logging.

    The terms are returned as detached 0-d tensors, not floats, so the training step does not
    wait for the device; the caller reads them when it logs.
    """
    loss_cl = F.cross_entropy(logits, labels)
    loss_px = partial_cross_entropy(pixel_logits, target, rows=rows)
    total = loss_cl + lam * loss_px
    return total, {"loss_cl": loss_cl.detach(), "loss_px": loss_px.detach()}
