"""Pseudo-label seeders: turn a batch of CAMs into sparse FG/BG targets, on the CAMs' device.

Both seeders are vectorised over the batch (no Python loop over images) and draw every random
number from the ``generator`` argument, so a seeded generator gives identical targets.
"Uniform without replacement among a set of pixels" is done by drawing i.i.d. uniform keys,
pushing the keys of the pixels outside the set to -1 and keeping the ``n`` largest keys: the
``n`` largest of i.i.d. continuous keys form a uniformly random ``n``-subset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BG_MODES",
    "IGNORE_INDEX",
    "otsu_threshold",
    "sample_seeds_pb",
    "sample_seeds_th",
]

IGNORE_INDEX = -255
BG_MODES = ("official", "paper")
_EPS = 1e-6


def _as_batch(cams: Tensor, name: str) -> Tensor:
    """(B,H,W) float32 in [0,1]; (B,1,H,W) is accepted because loaders often keep the channel."""
    if cams.ndim == 4 and cams.shape[1] == 1:
        cams = cams[:, 0]
    if cams.ndim != 3:
        raise ValueError(f"{name}: cams must have shape (B,H,W) or (B,1,H,W), got "
                         f"{tuple(cams.shape)}")
    if not torch.is_floating_point(cams):
        raise ValueError(f"{name}: cams must be floating point in [0,1], got {cams.dtype}")
    # The official loader applies nan_to_num; clamping keeps 1 - C a valid weight.
    return cams.detach().float().nan_to_num(0.0).clamp(0.0, 1.0)


def _check_counts(name: str, n_fg: int, n_bg: int, min_p: float, hw: int) -> int:
    if n_fg < 0 or n_bg < 0:
        raise ValueError(f"{name}: n_fg and n_bg must be >= 0, got {n_fg} and {n_bg}")
    if n_fg > hw:
        raise ValueError(f"{name}: n_fg={n_fg} exceeds the {hw} pixels of a map")
    if not 0.0 < min_p <= 1.0:
        raise ValueError(f"{name}: min_p must be in (0, 1], got {min_p}")
    k = int(min_p * hw)
    if n_bg > k:
        raise ValueError(
            f"{name}: n_bg={n_bg} exceeds int(min_p*H*W)={k} low-CAM pixels; raise min_p or "
            "lower n_bg"
        )
    return k


def _check_rows(name: str, fg_rows: Tensor, b: int, device: torch.device) -> Tensor:
    if fg_rows.shape != (b,):
        raise ValueError(f"{name}: fg_rows must have shape ({b},), got {tuple(fg_rows.shape)}")
    return fg_rows.to(device=device, dtype=torch.bool)


def _uniform_pick(
    valid: Tensor, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``n`` distinct columns per row, uniform among the ``valid`` ones.

    Returns (indices (B,n), ok (B,n)); ``ok`` is False for picks beyond a row's valid count.
    """
    keys = torch.rand(valid.shape, generator=generator, device=valid.device)
    keys = keys.masked_fill(~valid, -1.0)
    top = keys.topk(n, dim=1)
    return top.indices, top.values >= 0


def _lowest_region_pick(
    cams_flat: Tensor,
    k: int,
    n: int,
    whole_rows: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """``n`` pixels uniform among the ``k`` lowest of each row (stable order on ties).

    Rows where ``whole_rows`` is True draw uniformly over the whole map instead; with None the
    keys are only drawn for the first ``k`` sorted positions.
    """
    b, hw = cams_flat.shape
    order = cams_flat.argsort(dim=1, stable=True)
    width = k if whole_rows is None else hw
    pos = torch.arange(width, device=cams_flat.device).unsqueeze(0).expand(b, width)
    valid = pos < k
    if whole_rows is not None:
        valid = valid | whole_rows.unsqueeze(1)
    picked, ok = _uniform_pick(valid, n, generator)
    return order.gather(1, picked), ok


def _build_target(
    shape: tuple[int, int, int],
    fg_idx: Tensor,
    fg_ok: Tensor,
    bg_idx: Tensor,
    bg_ok: Tensor,
) -> Tensor:
    """Target map {1, 0, IGNORE}; a pixel drawn as both FG and BG becomes IGNORE (official rule)."""
    b, h, w = shape
    device = fg_idx.device
    fg = torch.zeros(b, h * w, dtype=torch.bool, device=device).scatter_(1, fg_idx, fg_ok)
    bg = torch.zeros(b, h * w, dtype=torch.bool, device=device).scatter_(1, bg_idx, bg_ok)
    target = torch.full((b, h * w), IGNORE_INDEX, dtype=torch.long, device=device)
    target = target.masked_fill(fg & ~bg, 1).masked_fill(bg & ~fg, 0)
    return target.view(b, h, w)


def _empty_pick(b: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.zeros(b, 0, dtype=torch.long, device=device),
            torch.zeros(b, 0, dtype=torch.bool, device=device))


def sample_seeds_pb(
    cams: Tensor,
    n_fg: int = 5,
    n_bg: int = 5,
    min_p: float = 0.2,
    bg_mode: str = "official",
    generator: torch.Generator | None = None,
    fg_rows: Tensor | None = None,
) -> Tensor:
    """PB seeder (the paper's default): FG drawn proportionally to the CAM, BG from low-CAM pixels.

    FG: ``n_fg`` pixels per image without replacement, probability ∝ C + 1e-6 (one
    ``torch.multinomial`` over the (B, H*W) matrix). BG with ``bg_mode="official"`` (what
    produced the paper's numbers): ``n_bg`` pixels uniform without replacement among the
    ``int(min_p*H*W)`` lowest-CAM pixels (stable sort, so ties keep raster order);
    ``bg_mode="paper"`` (the paper's text): ∝ (1 - C) + 1e-6 over all pixels, without
    replacement. ``fg_rows`` (B,) bool marks the rows that get FG seeds (None: all); a False row
    (e.g. a CAMELYON normal patch with neg_samples_partial) gets no FG and ``n_bg`` BG seeds
    uniform over the whole image. Returns (B,H,W) long in {1, 0, IGNORE_INDEX}.
    """
    name = "sample_seeds_pb"
    if bg_mode not in BG_MODES:
        raise ValueError(f"{name}: unknown bg_mode {bg_mode!r}; valid values: {list(BG_MODES)}")
    c = _as_batch(cams, name)
    b, h, w = c.shape
    hw = h * w
    k = _check_counts(name, n_fg, n_bg, min_p, hw)
    rows = None if fg_rows is None else _check_rows(name, fg_rows, b, c.device)
    flat = c.reshape(b, hw)

    if n_fg > 0:
        fg_idx = torch.multinomial(flat + _EPS, n_fg, replacement=False, generator=generator)
        fg_ok = torch.ones_like(fg_idx, dtype=torch.bool)
        if rows is not None:
            fg_ok = fg_ok & rows.unsqueeze(1)
    else:
        fg_idx, fg_ok = _empty_pick(b, c.device)

    if n_bg == 0:
        bg_idx, bg_ok = _empty_pick(b, c.device)
    elif bg_mode == "official":
        whole = None if rows is None else ~rows
        bg_idx, bg_ok = _lowest_region_pick(flat, k, n_bg, whole, generator)
    else:
        weights = 1.0 - flat + _EPS
        if rows is not None:
            weights = torch.where(rows.unsqueeze(1), weights, torch.ones_like(flat))
        bg_idx = torch.multinomial(weights, n_bg, replacement=False, generator=generator)
        bg_ok = torch.ones_like(bg_idx, dtype=torch.bool)
    return _build_target((b, h, w), fg_idx, fg_ok, bg_idx, bg_ok)


def otsu_threshold(cams_u8: Tensor) -> Tensor:
    """Per-image Otsu threshold on integer maps 0..255, batched (B,) long; ROI is ``c8 > th``.

    Maximises the between-class variance w0*w1*(mu0-mu1)^2 over splits ``c8 <= t`` / ``c8 > t``
    (first maximum on ties, as skimage). A constant row has no split; it returns its value,
    so ``c8 > th`` is empty.
    """
    if cams_u8.ndim < 2:
        raise ValueError(f"otsu_threshold: expected (B,H,W) integer maps, got "
                         f"{tuple(cams_u8.shape)}")
    if torch.is_floating_point(cams_u8) or cams_u8.dtype == torch.bool:
        raise ValueError("otsu_threshold: expected integer maps in 0..255 (use floor(255*C))")
    wide = cams_u8.dtype != torch.uint8 and cams_u8.numel() > 0
    if wide and bool((cams_u8.min() < 0) | (cams_u8.max() > 255)):
        raise ValueError("otsu_threshold: values must lie in 0..255 (use floor(255*C))")
    return _otsu(cams_u8)


def _otsu(cams_u8: Tensor) -> Tensor:
    """Otsu without input checks (the TH seeder builds c8 itself, so no host sync is needed)."""
    b = cams_u8.shape[0]
    v = cams_u8.reshape(b, -1).long()
    offsets = torch.arange(b, device=v.device).unsqueeze(1) * 256
    hist = torch.zeros(b * 256, dtype=torch.float64, device=v.device)
    hist.index_add_(0, (v + offsets).reshape(-1), torch.ones(v.numel(), dtype=torch.float64,
                                                             device=v.device))
    hist = hist.view(b, 256)
    levels = torch.arange(256, dtype=torch.float64, device=v.device)
    w0 = hist.cumsum(1)  # pixels <= t
    s0 = (hist * levels).cumsum(1)
    total_w = w0[:, -1:]
    total_s = s0[:, -1:]
    w1 = total_w - w0  # pixels > t
    s1 = total_s - s0
    valid = (w0 > 0) & (w1 > 0)
    mu0 = s0 / w0.clamp(min=1)
    mu1 = s1 / w1.clamp(min=1)
    var = torch.where(valid, w0 * w1 * (mu0 - mu1).square(), torch.full_like(w0, -1.0))
    th = var.argmax(dim=1)
    constant = ~valid.any(dim=1)
    return torch.where(constant, v[:, 0], th)


def sample_seeds_th(
    cams: Tensor,
    n_fg: int = 5,
    n_bg: int = 5,
    min_p: float = 0.2,
    erode_iter: int = 1,
    erode_k: int = 11,
    generator: torch.Generator | None = None,
    fg_rows: Tensor | None = None,
) -> Tensor:
    """TH seeder (Table 15 ablation): FG uniform inside the eroded Otsu ROI, BG in low-CAM pixels.

    c8 = floor(255*C); th = Otsu clamped to [1, 254]; ROI = c8 > th eroded ``erode_iter`` times
    by an ``erode_k`` square (pixels beyond the border do not erode). FG: up to ``n_fg`` pixels
    uniform in the eroded ROI (an empty ROI gives none); BG: ``n_bg`` uniform among the
    ``int(min_p*H*W)`` lowest-CAM pixels. A constant c8 map gives no seed at all. ``fg_rows``
    as in :func:`sample_seeds_pb` (False rows: BG only, uniform over the whole image).
    """
    name = "sample_seeds_th"
    if erode_k < 1 or erode_k % 2 == 0:
        raise ValueError(f"{name}: erode_k must be an odd positive size, got {erode_k}")
    if erode_iter < 0:
        raise ValueError(f"{name}: erode_iter must be >= 0, got {erode_iter}")
    c = _as_batch(cams, name)
    b, h, w = c.shape
    hw = h * w
    k = _check_counts(name, n_fg, n_bg, min_p, hw)
    whole = None if fg_rows is None else ~_check_rows(name, fg_rows, b, c.device)

    c8 = (c * 255).floor().long()
    flat8 = c8.reshape(b, hw)
    constant = flat8.amin(dim=1) == flat8.amax(dim=1)
    th = _otsu(c8).clamp(1, 254)
    roi = c8 > th.view(b, 1, 1)
    outside = (~roi).float().unsqueeze(1)
    for _ in range(erode_iter):
        # max-pool pads with -inf, so the image border never erodes the ROI.
        outside = F.max_pool2d(outside, erode_k, stride=1, padding=erode_k // 2)
    roi = (outside[:, 0] == 0).reshape(b, hw)

    if n_fg > 0:
        fg_idx, fg_ok = _uniform_pick(roi, n_fg, generator)
        no_fg = constant if whole is None else constant | whole
        fg_ok = fg_ok & ~no_fg.unsqueeze(1)
    else:
        fg_idx, fg_ok = _empty_pick(b, c.device)
    if n_bg > 0:
        bg_idx, bg_ok = _lowest_region_pick(c.reshape(b, hw), k, n_bg, whole, generator)
        # A constant CAM carries no localisation, except for BG-only rows that ignore the CAM.
        no_bg = constant if whole is None else constant & ~whole
        bg_ok = bg_ok & ~no_bg.unsqueeze(1)
    else:
        bg_idx, bg_ok = _empty_pick(b, c.device)
    return _build_target((b, h, w), fg_idx, fg_ok, bg_idx, bg_ok)
