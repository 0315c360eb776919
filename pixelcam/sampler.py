"""Pseudo-label seeders: turn a batch of CAMs into sparse FG/BG targets, on the CAMs' device.

Both seeders are vectorised over the batch (no Python loop over images) and draw every random
number from the ``generator`` argument, so a seeded generator gives identical targets.
"Uniform without replacement among a set of pixels" is done by drawing i.i.d. uniform keys,
pushing the keys of the pixels outside the set to -1 and keeping the ``n`` largest keys: the
``n`` largest of i.i.d. continuous keys form a uniformly random ``n``-subset.

On the CPU two steps have faster equivalents with the same sampling law (benchmarks/
bench_seeder.py): weighted draws without replacement take the first ``n`` distinct of a few
inverse-CDF draws with replacement (the distinct values of an i.i.d. sequence arrive exactly
as successive draws without replacement), and the lowest-``min_p`` region comes from a
linear-time selection on distinct (value, position) keys instead of a full stable argsort.
CUDA keeps ``torch.multinomial`` and argsort, which are fast there and need no host sync.
"""

from __future__ import annotations

from collections.abc import Callable

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
# The CPU fast paths (same laws); tests switch them off to check the reference paths.
_CPU_FAST = True
_CANDIDATES_PER_PICK = 4  # expected candidates per wanted pick; short rows are completed exactly
_MAX_CANDIDATES = 256


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
    return cams.detach().float().nan_to_num(0.0).clamp_(0.0, 1.0)  # nan_to_num copied it


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

    Rows where ``whole_rows`` is True draw uniformly over the whole map instead.
    """
    if cams_flat.device.type == "cpu" and _CPU_FAST:
        return _lowest_region_pick_cpu(cams_flat, k, n, whole_rows, generator)
    return _lowest_region_pick_sort(cams_flat, k, n, whole_rows, generator)


def _lowest_region_pick_sort(
    cams_flat: Tensor,
    k: int,
    n: int,
    whole_rows: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Reference path (and the GPU one): full stable argsort, keys over the sorted positions.

    With ``whole_rows`` None the keys are only drawn for the first ``k`` sorted positions.
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


def _stable_keys(cams_flat: Tensor, positions: Tensor | None = None) -> Tensor:
    """int64 keys whose order is the stable sort order: (value bits, raster position).

    Non-negative float32 values order like their int32 bit patterns (``& 0x7FFFFFFF`` makes
    -0.0 tie with +0.0, as in the sort); the position in the low bits breaks ties in raster
    order, so every key of a row is distinct and "among the k lowest" is "key <= k-th key".
    ``positions`` (B, m): keys of those pixels only.
    """
    hw = cams_flat.shape[1]
    shift = max(1, (hw - 1).bit_length())
    bits = cams_flat.contiguous().view(torch.int32)
    if positions is None:
        positions = torch.arange(hw)
    else:
        bits = bits.gather(1, positions)
    keys = (bits & 0x7FFFFFFF).to(torch.int64)
    keys <<= shift
    keys |= positions
    return keys


def _lowest_region_pick_cpu(
    cams_flat: Tensor,
    k: int,
    n: int,
    whole_rows: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Same law as the sort path: a uniform ``n``-subset of the first k of a stable argsort.

    The k-th smallest distinct key comes from a selection (``np.partition``: linear time, and
    insensitive to ties once the keys are distinct) instead of a full stable argsort, which is
    25-30x slower on one CPU thread at 32 x 224^2.
    Uniform candidate pixels are kept when they fall in the region, so the kept ones are
    uniform in it, and the first ``n`` distinct kept ones are a uniform ``n``-subset.
    """
    b, hw = cams_flat.shape
    kth = torch.empty(b, 1, dtype=torch.int64)
    for rows in _row_chunks(b, hw):
        keys = _stable_keys(cams_flat[rows]).numpy()
        keys.partition(k - 1, axis=1)  # in place: the buffer is ours and only the k-th is read
        kth[rows] = torch.from_numpy(keys[:, k - 1 : k])
    if whole_rows is not None:  # these rows draw over the whole map
        kth = kth.masked_fill(whole_rows.unsqueeze(1), torch.iinfo(torch.int64).max)
    m = min(_MAX_CANDIDATES, -(-_CANDIDATES_PER_PICK * n * hw // k))
    u = torch.rand(b, m, dtype=torch.float64, generator=generator)
    cand = u.mul_(hw).long().clamp_(max=hw - 1)
    accepted = _stable_keys(cams_flat, cand) <= kth

    def region(rows: Tensor) -> Tensor:
        return (_stable_keys(cams_flat[rows]) <= kth[rows]).float()

    picks = _complete_short_rows(cand, n, region, generator, valid=accepted)
    return picks, torch.ones_like(picks, dtype=torch.bool)


def _first_distinct(cand: Tensor, n: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """First ``n`` distinct valid values of each row of ``cand`` (B, M), in order, and how many."""
    b, m = cand.shape
    earlier = torch.ones(m, m, dtype=torch.bool, device=cand.device).tril(-1)
    same = cand.unsqueeze(2) == cand.unsqueeze(1)
    if valid is not None:
        same = same & valid.unsqueeze(1)
    first = ~(same & earlier).any(2)
    if valid is not None:
        first = first & valid
    rank = first.cumsum(1)
    keep = first & (rank <= n)
    # Earlier kept entries get larger keys, so topk returns them in draw order.
    order_key = torch.where(keep, m - torch.arange(m, device=cand.device), 0)
    pos = order_key.topk(min(n, m), dim=1).indices
    picks = cand.gather(1, pos)
    if n > m:
        picks = torch.cat([picks, picks.new_zeros(b, n - m)], dim=1)
    return picks, rank[:, -1].clamp(max=n)


def _complete_race(weights: Tensor, picks: Tensor, have: Tensor, n: int,
                   generator: torch.Generator | None) -> Tensor:
    """Fill picks[:, have:] by sequential draws without replacement from the unpicked pixels.

    Given the first ``have`` distinct draws, the later ones are successive weighted draws
    from the rest, whenever the search stopped (the stop depends only on the waiting times),
    so an exponential race (torch.multinomial's own method) on the rest keeps the law exact.
    """
    r, width = weights.shape
    j = torch.arange(n).unsqueeze(0)
    valid = j < have.unsqueeze(1)
    chosen = torch.zeros(r, width, dtype=torch.int32)
    chosen.scatter_add_(1, picks, valid.to(torch.int32))
    u = 1.0 - torch.rand(r, width, generator=generator)  # (0, 1]: log is finite
    keys = u.log_().div_(weights)
    keys.masked_fill_((chosen > 0) | (weights <= 0), float("-inf"))
    race = keys.topk(n, dim=1).indices
    later = race.gather(1, (j - have.unsqueeze(1)).clamp(min=0))
    return torch.where(valid, picks, later)


def _weighted_pick(weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` distinct columns per row, drawn one after another with probability ∝ weights.

    The law of ``torch.multinomial(weights, n, replacement=False)``, which stays the path on
    the GPU. On the CPU its exponential race costs one exponential draw per pixel; here a
    float64 CDF (one cumsum) and ``4n`` binary searches do it, ~20x faster on one thread at
    32 x 224^2. Weights must be > 0 with ``n <= H*W``.
    """
    if weights.device.type != "cpu" or not _CPU_FAST:
        return torch.multinomial(weights, n, replacement=False, generator=generator)
    b, hw = weights.shape
    u = torch.rand(b, _CANDIDATES_PER_PICK * n, dtype=torch.float64, generator=generator)
    cand = torch.empty(u.shape, dtype=torch.long)
    for rows in _row_chunks(b, hw):
        cdf = weights[rows].cumsum(1, dtype=torch.float64)
        cand[rows] = torch.searchsorted(cdf, u[rows].mul_(cdf[:, -1:]), right=True)
    cand.clamp_(max=hw - 1)
    return _complete_short_rows(cand, n, lambda rows: weights[rows], generator)


def _row_chunks(b: int, hw: int) -> list[slice]:
    """Row slices of about 2^18 pixels, for the float64 / int64 temporaries.

    Whole-batch ones (12.8 MB at 32 x 224^2) are page-faulted in afresh on every call, which
    measured ~1.8x slower in a training loop; chunks this size get reused by the allocator.
    """
    step = max(1, (1 << 18) // hw)
    return [slice(r, min(r + step, b)) for r in range(0, b, step)]


def _complete_short_rows(
    cand: Tensor,
    n: int,
    weights_of: Callable[[Tensor], Tensor],
    generator: torch.Generator | None,
    valid: Tensor | None = None,
) -> Tensor:
    """First ``n`` distinct valid candidates per row; rows with fewer get an exact race."""
    picks, have = _first_distinct(cand, n, valid)
    short = have < n
    if bool(short.any()):  # rare unless a CAM puts almost all its mass on < n pixels
        rows = short.nonzero()[:, 0]
        picks[rows] = _complete_race(weights_of(rows), picks[rows], have[rows], n, generator)
    return picks


def _build_target(
    shape: tuple[int, int, int],
    fg_idx: Tensor,
    fg_ok: Tensor,
    bg_idx: Tensor,
    bg_ok: Tensor,
) -> Tensor:
    """Target map {1, 0, IGNORE}; a pixel drawn as both FG and BG becomes IGNORE (official rule).

    The conflicts are resolved on the (B, n_fg + n_bg) picks, not on full-size masks: every
    pick (kept or not) writes its pixel's final value, so duplicate writes agree.
    """
    b, h, w = shape
    idx = torch.cat([fg_idx, bg_idx], dim=1)
    same = idx.unsqueeze(2) == idx.unsqueeze(1)  # (B, m, m)
    n_fg = fg_idx.shape[1]
    in_fg = (same[:, :, :n_fg] & fg_ok.unsqueeze(1)).any(2)
    in_bg = (same[:, :, n_fg:] & bg_ok.unsqueeze(1)).any(2)
    value = torch.full_like(idx, IGNORE_INDEX)
    value = value.masked_fill(in_fg & ~in_bg, 1).masked_fill(in_bg & ~in_fg, 0)
    target = torch.full((b, h * w), IGNORE_INDEX, dtype=torch.long, device=idx.device)
    return target.scatter_(1, idx, value).view(b, h, w)


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

    FG: ``n_fg`` pixels per image without replacement, probability ∝ C + 1e-6 (the law of one
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
        fg_idx = _weighted_pick(flat + _EPS, n_fg, generator)
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
        bg_idx = _weighted_pick(weights, n_bg, generator)
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


def _box_any(mask: Tensor, k: int) -> Tensor:
    """Whether a k x k window around each pixel holds a True (binary dilation by a square).

    Pixels beyond the border count as False, so the border never erodes the ROI (as a
    -inf-padded max-pool). Separable running sums from cumsums cost O(1) per pixel whatever
    k; an 11 x 11 max-pool of 32 maps at 224^2 takes ~25x longer on one CPU thread.
    """
    r = k // 2
    x = mask.to(torch.int32)
    for dim in (1, 2):
        n = x.shape[dim]
        csum = F.pad(x.cumsum(dim, dtype=torch.int32), (1, 0) if dim == 2 else (0, 0, 1, 0))
        i = torch.arange(n, device=mask.device)
        hi = (i + r + 1).clamp(max=n)
        lo = (i - r).clamp(min=0)
        x = (csum.index_select(dim, hi) - csum.index_select(dim, lo) > 0).to(torch.int32)
    return x.bool()


def sample_seeds_th(
    cams: Tensor,
    n_fg: int = 5,
    n_bg: int = 5,
    min_p: float = 0.4,
    erode_iter: int = 1,
    erode_k: int = 11,
    generator: torch.Generator | None = None,
    fg_rows: Tensor | None = None,
) -> Tensor:
    """TH seeder (Table 15 ablation): FG uniform inside the eroded Otsu ROI, BG in low-CAM pixels.

    c8 = floor(255*C); th = Otsu clamped to [1, 254]; ROI = c8 > th eroded ``erode_iter`` times
    by an ``erode_k`` square (pixels beyond the border do not erode). FG: up to ``n_fg`` pixels
    uniform in the eroded ROI (an empty ROI gives none); BG: ``n_bg`` uniform among the
    ``int(min_p*H*W)`` lowest-CAM pixels; the official TH reads ``sl_min_p``, 0.4 in the
    official command (PB reads ``sl_ng_min_p``, 0.2), hence the default 0.4 here and the config
    key ``th_min_p``. A constant c8 map gives no seed at all. ``fg_rows``
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
    if b == 0:  # nothing to seed (e.g. a batch without tumour images): an empty target
        return torch.full_like(c, IGNORE_INDEX, dtype=torch.long)

    c8 = (c * 255).floor().long()
    flat8 = c8.reshape(b, hw)
    constant = flat8.amin(dim=1) == flat8.amax(dim=1)
    th = _otsu(c8).clamp(1, 254)
    roi = c8 > th.view(b, 1, 1)
    outside = ~roi
    for _ in range(erode_iter):
        outside = _box_any(outside, erode_k)
    roi = (~outside).reshape(b, hw)

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
