"""Training losses: PixelCAM's partial (seed-only) pixel cross-entropy and joint objective, and
NEGEV's seed, local-CRF, size and negative-sample terms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelcam.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pixelcam.errors import ConfigError, DataError
from pixelcam.sampler import IGNORE_INDEX

__all__ = ["partial_cross_entropy", "pixelcam_objective", "denormalize", "local_crf_loss",
           "dense_crf_ratio", "elb_penalty", "negev_losses"]


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


# --- NEGEV (two-step baseline): the decoder's training terms ---------------------------------

def denormalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Loader images (ImageNet-normalised) back to RGB 0..255, the scale sigma_rgb=15 assumes."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((images * s + m) * 255.0).clamp(0.0, 255.0)


def _half_window(kernel_size: int) -> list[tuple[int, int]]:
    r = kernel_size // 2
    return [(dy, dx) for dy in range(r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]


def local_crf_loss(
    probs: Tensor,
    images: Tensor,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    kernel_size: int = 9,
    scale: float = 1.0,
) -> Tensor:
    """Local Potts CRF energy, batch mean of sum_{i != j in k x k} w_ij S_i^T (1 - S_j).

    ``probs`` (B,C,H,W) softmax maps, ``images`` (B,3,H,W) RGB in 0..255 (unnormalised, as the
    official loss). The raw window sum: :func:`negev_losses` multiplies it by
    :func:`dense_crf_ratio` to put it on the dense CRF's scale. See pixelcam.models.negev for the
    approximation and its cost.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"crf kernel_size={kernel_size!r} must be an odd integer >= 1, e.g. 9.")
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"crf scale={scale!r} must lie in (0, 1]; 1.0 uses the full grid.")
    if sigma_rgb <= 0 or sigma_xy <= 0:
        raise ConfigError(
            f"crf sigmas must be > 0, got sigma_rgb={sigma_rgb!r}, sigma_xy={sigma_xy!r}."
        )
    if probs.ndim != 4 or images.ndim != 4 or images.shape[0] != probs.shape[0]:
        raise ValueError(
            f"local_crf_loss: expected probs (B,C,H,W) and images (B,3,H,W), got "
            f"{tuple(probs.shape)} and {tuple(images.shape)}"
        )
    images = images.to(probs.dtype)
    if tuple(probs.shape[-2:]) != tuple(images.shape[-2:]):
        probs = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)
    if scale < 1.0:
        size = (max(1, round(images.shape[-2] * scale)), max(1, round(images.shape[-1] * scale)))
        images = F.interpolate(images, size=size, mode="nearest")
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    h, w = probs.shape[-2:]
    total = probs.new_zeros(probs.shape[0])
    for dy, dx in _half_window(kernel_size):
        if dy >= h or abs(dx) >= w:
            continue
        xa = slice(0, w - dx) if dx >= 0 else slice(-dx, w)
        xb = slice(dx, w) if dx >= 0 else slice(0, w + dx)
        ya, yb = slice(0, h - dy), slice(dy, h)
        with torch.no_grad():
            colour = (images[:, :, ya, xa] - images[:, :, yb, xb]).square().sum(dim=1)
            # offsets are on the (possibly downsampled) grid; distances stay in input pixels
            dist2 = (dy * dy + dx * dx) / (scale * scale)
            weight = torch.exp(-colour / (2 * sigma_rgb**2) - dist2 / (2 * sigma_xy**2))
        s_a, s_b = probs[:, :, ya, xa], probs[:, :, yb, xb]
        # S_i^T (1 - S_j) is symmetric in (i, j) for softmax maps, so one term counts both orders
        pair = (s_a * (1.0 - s_b)).sum(dim=1)
        total = total + 2.0 * (weight * pair).sum(dim=(1, 2))
    return total.mean()


@lru_cache(maxsize=64)
def _axis_mass(n: int, sigma: float, radius: int | None) -> float:
    """Mean over the n positions x of sum_{x'} exp(-(x - x')^2 / (2 sigma^2)), x' on the axis
    (and within ``radius`` of x when given): image borders cut the sum, as they cut the CRF's."""
    pos = torch.arange(n, dtype=torch.float64)
    diff = pos[:, None] - pos[None, :]
    kernel = torch.exp(-diff.square() / (2.0 * sigma * sigma))
    if radius is not None:
        kernel = kernel * (diff.abs() <= radius)
    return float(kernel.sum(dim=1).mean())


def dense_crf_ratio(height: int, width: int, sigma_xy: float = 100.0,
                    kernel_size: int = 9) -> float:
    """Spatial kernel mass per pixel of the dense CRF over that of the local k x k window.

    The dense CRF sums exp(-|p_i - p_j|^2 / (2 sigma_xy^2)) over every other pixel j of the
    H x W image; the local one over the k^2 - 1 neighbours of its window. Averaged over the
    pixels (borders included; the Gaussian is separable, so each mean is a product of two
    per-axis means, minus the pixel itself) their ratio is the factor by which the local sum
    falls short of the dense one on a map of uniform colour statistics: 336 for 224 x 224,
    sigma_xy 100 px, 9 x 9 (about 2.5e4 against 80 neighbours), 51.5 for 64 x 64. Scaling the
    local energy by it keeps the official weight meaningful (tests/test_unet_negev.py, a
    GlaS-like image at 224: 0.40-2.0x the exact dense energy, where the unscaled sum is
    166-839x too small).
    ``sigma_xy`` in pixels of this grid. 1.0 when the window holds no neighbour.
    """
    if height < 1 or width < 1 or sigma_xy <= 0 or kernel_size < 1:
        raise ConfigError(
            f"dense_crf_ratio needs a non-empty grid, sigma_xy > 0 and kernel_size >= 1, got "
            f"{height}x{width}, sigma_xy={sigma_xy!r}, kernel_size={kernel_size!r}."
        )
    r = kernel_size // 2
    dense = _axis_mass(height, float(sigma_xy), None) * _axis_mass(width, float(sigma_xy), None)
    local = _axis_mass(height, float(sigma_xy), r) * _axis_mass(width, float(sigma_xy), r)
    if local - 1.0 <= 1e-12:
        return 1.0
    return (dense - 1.0) / (local - 1.0)


def elb_penalty(z: Tensor, t: float = 5.0) -> Tensor:
    """Extended log-barrier psi_t(z) for the constraint z <= 0 (Kervadec et al.), elementwise.

    -log(-z)/t for z <= -1/t^2, else the tangent line t*z - log(1/t^2)/t + 1/t: finite and
    differentiable for any z, so an infeasible start (an empty area) still gets a gradient.
    """
    if t <= 0:
        raise ConfigError(f"ELB t={t!r} must be > 0 (official default 5 here).")
    threshold = -1.0 / (t * t)
    inside = z <= threshold
    # the log branch is evaluated on a clamped z so that torch.where never sees a NaN gradient
    log_branch = -torch.log(-torch.where(inside, z, torch.full_like(z, threshold))) / t
    linear = t * z - math.log(1.0 / (t * t)) / t + 1.0 / t
    return torch.where(inside, log_branch, linear)


def _check_raw_images(images: Tensor) -> None:
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 255.0 or hi <= 1.0:
        raise DataError(
            f"negev_losses: images span [{lo:.3g}, {hi:.3g}] but the CRF term needs unnormalised "
            "RGB in 0..255; pass pixelcam.losses.denormalize(images) for loader images."
        )


def negev_losses(
    seg_logits: Tensor,
    seeds_target: Tensor,
    images: Tensor,
    labels: Tensor,
    *,
    lambda_seeds: float = 1.0,
    lambda_crf: float = 2e-9,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    crf_kernel: int = 9,
    crf_scale: float = 1.0,
    crf_dense_scale: bool = True,
    lambda_size: float = 1.0,
    elb_t: float = 5.0,
    negative_samples: bool = False,
    lambda_negative: float = 1.0,
    seed_rows: Tensor | None = None,
) -> dict[str, Tensor]:
    """The NEGEV objective; returns the raw terms and ``total`` = sum of lambda * term.

    ``seg_logits`` (B,2,H,W) of the decoder; ``seeds_target`` (B,H,W) a seeder output;
    ``images`` (B,3,H,W) RGB 0..255 (see :func:`denormalize`); ``labels`` (B,) image labels.
    Terms: ``seeds`` partial CE (``seed_rows`` as in partial_cross_entropy); ``crf`` the local
    CRF energy, times :func:`dense_crf_ratio` of its grid with ``crf_dense_scale`` (default): an
    estimate of the dense CRF's Potts energy, so that the official ``lambda_crf`` = 2e-9 gives
    the term the official size (the raw 9x9 sum with 2e-9 would be ~300x too weak at 224x224;
    the official loss reports -sum_k S_k^T W S_k, this energy minus a constant); ``size`` the
    ELB barrier on FG and BG area fractions (mean softmax), each required > 0, summed over the
    two and averaged over the batch; ``negative`` (with ``negative_samples``) the mean CE of
    label-0 images against an all-BG mask. With ``negative_samples`` the size barrier skips
    label-0 images, whose FG must be empty. All terms carry grad (a zero when no row applies)
    and are never NaN.
    """
    if seg_logits.ndim != 4 or seg_logits.shape[1] != 2:
        raise ValueError(
            f"negev_losses: seg_logits must be (B,2,H,W), got {tuple(seg_logits.shape)}"
        )
    b = seg_logits.shape[0]
    if images.ndim != 4 or images.shape[:2] != (b, 3):
        raise ValueError(f"negev_losses: images must be (B,3,H,W), got {tuple(images.shape)}")
    if labels.shape != (b,):
        raise ValueError(f"negev_losses: labels must be ({b},), got {tuple(labels.shape)}")
    _check_raw_images(images)
    probs = torch.softmax(seg_logits, dim=1)

    loss_seeds = partial_cross_entropy(seg_logits, seeds_target, rows=seed_rows)
    loss_crf = local_crf_loss(probs, images, sigma_rgb, sigma_xy, crf_kernel, crf_scale)
    if crf_dense_scale:  # the grid local_crf_loss evaluates on, sigma_xy in its pixels
        h, w = images.shape[-2:]
        if crf_scale < 1.0:
            h, w = max(1, round(h * crf_scale)), max(1, round(w * crf_scale))
        loss_crf = loss_crf * dense_crf_ratio(h, w, sigma_xy * crf_scale, crf_kernel)

    positive = labels.to(seg_logits.device) != 0
    size_rows = positive if negative_samples else torch.ones_like(positive)
    areas = probs.mean(dim=(2, 3))  # (B,2): BG and FG fractions
    barrier = elb_penalty(-areas, elb_t).sum(dim=1)
    loss_size = (barrier * size_rows).sum() / size_rows.sum().clamp(min=1)

    if negative_samples:
        bg = torch.zeros(
            seg_logits.shape[0], *seg_logits.shape[2:], dtype=torch.long, device=seg_logits.device
        )
        per_image = F.cross_entropy(seg_logits, bg, reduction="none").mean(dim=(1, 2))
        negative = ~positive
        loss_negative = (per_image * negative).sum() / negative.sum().clamp(min=1)
    else:
        loss_negative = seg_logits.sum() * 0.0

    total = (
        lambda_seeds * loss_seeds
        + lambda_crf * loss_crf
        + lambda_size * loss_size
        + lambda_negative * loss_negative
    )
    return {
        "seeds": loss_seeds,
        "crf": loss_crf,
        "size": loss_size,
        "negative": loss_negative,
        "total": total,
    }
