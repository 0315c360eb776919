"""NEGEV (Belharbi et al., MIDL 2022): a U-Net decoder trained on a frozen WSOL classifier.

The two-step baseline the paper compares PixelCAM with (official-code-notes.md 2.6). The
classifier (encoder + image head of a trained baseline) stays frozen; the decoder of
:class:`pixelcam.models.unet.UNetDecoder` reads skips from every encoder stage and learns from
(i) partial CE on CAM seeds, (ii) a CRF smoothness term, (iii) an ELB log-barrier on the FG and
BG areas and (iv) optionally a CE that makes every pixel of a negative (label 0) image BG.

With a ResNet-50 classifier (WGAP head with the background row, 6,147 params) the model counts
23,508,032 + 6,147 + 9,012,928 + 290 = 32,527,397 parameters, the "GradCAM++ / LayerCAM w/
NEGEV" rows of the paper's Table 11.

CRF term, an approximation. The official loss is a *dense* CRF (every pixel pair, computed with
a permutohedral-lattice bilateral filter), which plain PyTorch cannot afford at 224x224 (2.5e9
pairs). :func:`local_crf_loss` keeps the same Potts energy, sum_ij w_ij S_i^T (1 - S_j) with the
same bilateral kernel w_ij = exp(-|I_i-I_j|^2/(2 sigma_rgb^2) - |p_i-p_j|^2/(2 sigma_xy^2)),
but only over pairs within a k x k window (default 9x9). It loops over the (k^2-1)/2 offsets
of half the window (each unordered pair once, then doubled) with whole-batch tensor ops: time
O(k^2 B H W), extra memory O(B H W) per offset kept for backward (about 0.8 MB per 224x224
image for each of the 40 offsets of a 9x9 window, ~32 MB per image).
Pairs farther than k/2 pixels apart, which the dense loss counts with weight up to
exp(-d^2/2e4), are dropped, so at equal lambda the local term is much smaller
than the official one: ``lambda_crf`` keeps the official 2e-9 by default but needs re-tuning to
match the official strength. ``crf_scale`` < 1 evaluates it on a downsampled grid (as the
official code's scale factor) with distances still in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelcam.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.losses import partial_cross_entropy
from pixelcam.models.unet import DEFAULT_DECODER_CHANNELS, UNetDecoder

__all__ = [
    "NEGEV",
    "denormalize",
    "elb_penalty",
    "encoder_stage_channels",
    "encoder_stages",
    "local_crf_loss",
    "negev_losses",
    "negev_map",
]


def _stage_modules(encoder: nn.Module) -> list[tuple[str, int]]:
    """(module name, channels) of every stage of a pixelcam Encoder, shallow to deep.

    ResNets ("resnet" kind): act1 (stride 2), layer1 (4), layer2 (8), layer3, layer4 (8 and 8
    with the WSOL stride change, 16 and 32 without). Other timm CNNs ("features" kind): the
    stages timm's feature_info lists, found in the feature wrapper under their own or their
    flattened ("blocks_0") names.
    """
    net = getattr(encoder, "net", None)
    info = getattr(net, "feature_info", None)
    if info is None:
        raise ModelError(
            f"encoder {type(encoder).__name__} has no timm net with feature_info; NEGEV needs a "
            "pixelcam Encoder (pixelcam.models.backbones.create_encoder)."
        )
    entries = info.info if hasattr(info, "info") else list(info)
    stages: list[tuple[str, int]] = []
    for entry in entries:
        name = entry["module"]
        for candidate in (name, name.replace(".", "_", 1)):
            try:
                net.get_submodule(candidate)
            except AttributeError:
                continue
            stages.append((candidate, int(entry["num_chs"])))
            break
        else:
            raise ModelError(
                f"encoder {getattr(encoder, 'name', '?')!r}: stage {name!r} is not in its timm "
                "net; use a ResNet or an EfficientNet/MobileNet backbone for NEGEV."
            )
    return stages


def encoder_stage_channels(encoder: nn.Module) -> list[int]:
    """Channels of every stage, shallow to deep: what the decoder is built from, no forward."""
    return [c for _, c in _stage_modules(encoder)]


def encoder_stages(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """Outputs of every encoder stage (shallow to deep) from one ordinary ``encoder(x)`` call.

    Forward hooks on the stage modules capture the maps as the encoder's own forward makes
    them, so the WSOL stride change and timm's forward details are respected; the last entry
    is the encoder's output F. For a WSOL ResNet at 224 that is act1 64x112x112, layer1
    256x56x56, layer2 512x28x28, layer3 1024x28x28, layer4 2048x28x28 (ResNet-50 widths).
    """
    stages = _stage_modules(encoder)
    captured: dict[str, Tensor] = {}
    handles = []

    def _hook(name: str):
        def fn(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            captured[name] = output

        return fn

    for name, _ in stages:
        handles.append(encoder.net.get_submodule(name).register_forward_hook(_hook(name)))
    try:
        out = encoder(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [captured[name] for name, _ in stages[:-1]]
    return [*maps, out]


class NEGEV(nn.Module):
    """Frozen WSOL classifier + trainable U-Net decoder: the paper's two-step baseline.

    ``classifier`` is a WSOLModel-like module: an ``encoder`` (pixelcam Encoder) and either a
    ``classify(F)`` method or an ``image_head``. With ``freeze`` its parameters never get
    gradients and it stays in eval mode (BN statistics and dropout fixed) even after
    ``NEGEV.train()``, as the official ``freeze_cl``. ``forward(x)`` returns
    (seg_logits (B,2,H,W) at the input size, cls_logits (B,K) of the classifier).
    """

    def __init__(
        self,
        classifier: nn.Module,
        freeze: bool = True,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        encoder = getattr(classifier, "encoder", None)
        if encoder is None:
            raise ModelError(
                f"NEGEV needs a classifier with an .encoder (a WSOLModel), got "
                f"{type(classifier).__name__}; build it with pixelcam.models.model.build_model."
            )
        self.classifier = classifier
        self.freeze = bool(freeze)
        self.decoder = UNetDecoder(
            encoder_stage_channels(encoder), decoder_channels, align_corners=True
        )
        if self.freeze:
            for p in self.classifier.parameters():
                p.requires_grad_(False)
            self.classifier.eval()

    def train(self, mode: bool = True) -> NEGEV:
        super().train(mode)
        if self.freeze:
            self.classifier.eval()
        return self

    def _classify(self, features: Tensor) -> Tensor:
        if hasattr(self.classifier, "classify"):
            return self.classifier.classify(features)
        return self.classifier.image_head(features)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # a frozen encoder needs no graph: only the decoder learns from the skips
        with torch.no_grad() if self.freeze else nullcontext():
            stages = encoder_stages(self.classifier.encoder, x)
            cls_logits = self._classify(stages[-1])
        seg_logits = self.decoder(stages, size=(x.shape[-2], x.shape[-1]))
        return seg_logits, cls_logits


def negev_map(
    model: NEGEV, x: Tensor, labels: Tensor | None = None, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """NEGEV localisation map: FG softmax of the decoder at full resolution (B,H,W).

    Class-agnostic (labels are ignored); the logits are the frozen classifier's, so NEGEV's
    classification accuracy is the baseline's.
    """
    with torch.no_grad():
        seg_logits, cls_logits = model(x)
        maps = torch.softmax(seg_logits, dim=1)[:, 1]
    return (maps, cls_logits) if return_logits else maps


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
    official loss). See the module docstring for the approximation and its cost.
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
            "RGB in 0..255; pass pixelcam.models.negev.denormalize(images) for loader images."
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
    CRF energy; ``size`` the ELB barrier on FG and BG area fractions (mean softmax), each
    required > 0, summed over the two and averaged over the batch; ``negative`` (with
    ``negative_samples``) the mean CE of label-0 images against an all-BG mask. With
    ``negative_samples`` the size barrier skips label-0 images, whose FG must be empty. All
    terms carry grad (a zero when no row applies) and are never NaN.
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
