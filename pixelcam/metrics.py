"""Evaluation metrics: pooled-histogram PxAP (as wsolevaluation), rates, accuracy, J, t-test.

PxAP follows wsolevaluation's MaskEvaluator: thresholds ``[0, 1/n, ..., 1 - 1/n]``, bin edges
``thresholds + [1, 2, 3]`` (n + 2 bins), histograms of the map values of GT-positive and GT-negative
pixels pooled over every image of a split, and the area under the precision-recall curve built
from reversed cumulative sums. The arrays of :meth:`PxAP.curve` keep wsolevaluation's reversed
order: index ``k`` counts the pixels whose score is ``>= edges[n + 1 - k]``, so ``k = 0`` is the
empty prediction (threshold 2.0) and ``k = n + 1`` labels every pixel foreground (threshold 0.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PxAP",
    "ResampledPxAP",
    "accuracy",
    "bootstrap_multiplicities",
    "paired_ttest",
    "pxap_edges",
    "separability_j",
]

# Pixels per pass of PxAP.update on the CPU: 2 MiB of float32, small enough to stay in cache.
_CPU_CHUNK = 1 << 19


def pxap_edges(num_thresholds: int = 1000) -> np.ndarray:
    """Bin edges identical to wsolevaluation's, so histograms match ``np.histogram`` bit for bit.

    ``np.arange(0, 1, 1/n)`` computes ``i * (1/n)``; building it that way keeps the length exactly
    ``n`` for every ``n`` (arange's length can be off by one for some steps).
    """
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    thr = np.arange(num_thresholds, dtype=np.float64) * (1.0 / num_thresholds)
    return np.append(thr, [1.0, 2.0, 3.0])


def _edges_at_or_above(edges: np.ndarray, dtype: torch.dtype) -> Tensor:
    """Smallest value of ``dtype`` >= each float64 edge.

    For a value v of that dtype, ``v >= e`` (exact, in float64) holds iff ``v >= e_up``, so the
    comparison can stay in the map's own precision without a float64 copy of the map.
    """
    if dtype == torch.float64:
        return torch.from_numpy(edges.copy())
    np_dtype = np.float32
    low = edges.astype(np_dtype)
    up = np.where(low.astype(np.float64) < edges, np.nextafter(low, np_dtype(np.inf)), low)
    return torch.from_numpy(up.astype(np_dtype))


def _count(index: Tensor, size: int) -> Tensor:
    """Histogram of integer ``index`` values in ``[0, size)`` as int64, without a host sync.

    ``torch.bincount`` on CUDA reads ``index.max()`` back to the host; a scatter-add into a
    fixed-size tensor does not. On the CPU bincount is the faster of the two (and int32 indices
    halve its memory traffic).
    """
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)
    out = torch.zeros(size, dtype=torch.int64, device=index.device)
    ones = torch.ones(index.shape, dtype=torch.int64, device=index.device)
    return out.index_add_(0, index, ones)


def _float32_product_is_exact(edges: np.ndarray, num_thresholds: int) -> bool:
    """True when ``floor(float64(v) * n)`` is the exact bin of every float32 v in [0, 1].

    ``float64(v) * n`` is exact (24 + 30 bits), so it differs from the bin only if a float32
    lies between an edge ``k * (1/n)`` (rounded in float64) and k/n. Checking the smallest
    float32 at or above each edge and its predecessor covers every value, by monotonicity.
    It holds for most n (1000 included); for the others the corrected path runs.
    """
    n = num_thresholds
    if n >= 1 << 29:
        return False
    up = _edges_at_or_above(edges, torch.float32).numpy()[: n + 1]
    first = up.astype(np.float64)
    before = np.nextafter(up[1:], np.float32(-1)).astype(np.float64)
    k = np.arange(n + 1)
    return bool((np.floor(first * n) == k).all() and (np.floor(before * n) == k[1:] - 1).all())


def _estimate_never_low(edges_up: Tensor, num_thresholds: int) -> bool:
    """True when ``floor(v * n)`` (in the table's dtype) is never below the exact bin of v.

    The smallest value of bin k is ``edges_up[k]``; rounding and floor are monotone, so if its
    estimate is >= k, every value of bin k estimates >= k. Then one downward correction is
    exact. It holds for every practical n (the edges are within an ulp of k/n); very large n
    falls back to a correction on both sides.
    """
    k = torch.arange(num_thresholds + 1, device=edges_up.device)
    est = (edges_up[: num_thresholds + 1] * num_thresholds).floor().long()
    return bool((est >= k).all())


def _check_update(where: str, maps: Tensor, masks: Tensor, ignore: Tensor | None) -> None:
    """The shared input checks of the PxAP metrics' update()."""
    if maps.shape != masks.shape:
        raise ValueError(
            f"{where}: maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must "
            "have the same shape (resize the maps to the mask size first)"
        )
    if ignore is not None and ignore.shape != maps.shape:
        raise ValueError(
            f"{where}: ignore {tuple(ignore.shape)} must have the maps' shape {tuple(maps.shape)}"
        )
    if not torch.is_floating_point(maps):
        raise ValueError(f"{where}: maps must be floating point, got {maps.dtype}")


class PxAP:
    """Streaming dataset-level PxAP: only two int64 histograms are kept, on the inputs' device.

    Memory does not grow with the number of images, the histograms of several processes can be
    summed (:meth:`merge`), and ``update`` never copies maps to the host.
    """

    def __init__(self, num_thresholds: int = 1000) -> None:
        self.num_thresholds = int(num_thresholds)
        self.edges = pxap_edges(self.num_thresholds)
        self.num_bins = self.num_thresholds + 2
        self.hist_pos = torch.zeros(self.num_bins, dtype=torch.int64)
        self.hist_neg = torch.zeros(self.num_bins, dtype=torch.int64)
        self._edge_cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, bool]] = {}
        self._f32_exact = _float32_product_is_exact(self.edges, self.num_thresholds)

    # -- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new split; the histograms stay on their current device."""
        self.hist_pos.zero_()
        self.hist_neg.zero_()

    def merge(self, other: PxAP) -> None:
        """Add another evaluator's histograms (e.g. after gathering them from other processes)."""
        if other.num_thresholds != self.num_thresholds:
            raise ValueError(
                f"cannot merge PxAP with {other.num_thresholds} thresholds into one with "
                f"{self.num_thresholds}; build both with the same num_thresholds"
            )
        self.hist_pos += other.hist_pos.to(self.hist_pos.device)
        self.hist_neg += other.hist_neg.to(self.hist_neg.device)

    def _edges_for(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, bool]:
        key = (dtype, device)
        if key not in self._edge_cache:
            up = _edges_at_or_above(self.edges, dtype)
            self._edge_cache[key] = (up.to(device), _estimate_never_low(up, self.num_thresholds))
        return self._edge_cache[key]

    def bin_index(self, values: Tensor) -> Tensor:
        """Bin (int64) of each value in ``[0, 1]``, equal to ``np.histogram``'s on :attr:`edges`.

        Values must already lie in [0, 1] (:meth:`update` checks that).
        """
        return self._bin_index(values).long()

    def _bin_index(self, values: Tensor) -> Tensor:
        """:meth:`bin_index` as int32, which halves the memory traffic of the counting pass.

        float32 and narrower maps: one exact float64 product and a truncation, when that is
        exact for this n (checked once; true for n = 1000). Measured on one CPU thread this is
        ~3x faster than a float32 product corrected against an edge table, which is what
        float64 maps (and the rare n where the product is not exact) use: rounding can push
        ``floor(v * n)`` one bin too high near an edge, and one comparison with the exact
        edge fixes it.
        """
        n = self.num_thresholds
        if values.dtype != torch.float64 and self._f32_exact:
            return values.to(torch.float64).mul_(n).to(torch.int32)
        if values.dtype != torch.float64:
            values = values.float()
        edges, never_low = self._edges_for(values.dtype, values.device)
        idx = (values * n).to(torch.int32)
        idx.sub_((values < edges.index_select(0, idx)).to(torch.int32))
        if not never_low:
            idx.add_((values >= edges.index_select(0, idx + 1)).to(torch.int32))
        return idx

    def update(self, maps: Tensor, masks: Tensor, ignore: Tensor | None = None) -> None:
        """Add a batch of maps (B,H,W) in [0,1] with GT masks (nonzero = foreground).

        ``ignore`` (same shape, nonzero = excluded) removes pixels from both histograms, as the
        ignore masks of wsolevaluation do.
        """
        _check_update("PxAP.update", maps, masks, ignore)
        values = maps.detach().reshape(-1)  # half precision is widened chunk by chunk
        device = values.device
        if self.hist_pos.device != device:
            self.hist_pos = self.hist_pos.to(device)
            self.hist_neg = self.hist_neg.to(device)
        if values.numel() == 0:
            return
        # One scalar read-back per batch: scores outside [0,1] (or NaN) would be silently
        # counted in the wrong bin, which wsolevaluation also refuses. aminmax is one pass and
        # propagates NaN, so the comparisons below fail on it.
        lo, hi = torch.aminmax(values)
        if not bool((lo >= 0) & (hi <= 1)):
            raise ValueError(
                "PxAP.update: maps must lie in [0, 1] without NaN; normalise them (min-max or "
                "softmax) and apply nan_to_num before evaluation"
            )
        is_pos = masks.detach().reshape(-1).to(device)
        drop = None if ignore is None else ignore.detach().reshape(-1).to(device)
        # On the CPU, chunks whose temporaries stay in the cache make the passes below ~1.5x
        # faster than whole-batch temporaries (80x224x224 maps); a GPU takes the batch at once.
        step = _CPU_CHUNK if device.type == "cpu" else values.numel()
        counts = torch.zeros(2 * self.num_bins + 1, dtype=torch.int64, device=device)
        for start in range(0, values.numel(), step):
            end = start + step
            counts += self._chunk_counts(values[start:end], is_pos[start:end],
                                         None if drop is None else drop[start:end])
        nb = self.num_bins
        self.hist_neg += counts[:nb]
        self.hist_pos += counts[nb : 2 * nb]

    def _chunk_counts(self, values: Tensor, is_pos: Tensor, drop: Tensor | None) -> Tensor:
        """Counts of (bin + nb * is_positive): both classes in a single counting pass."""
        nb = self.num_bins
        idx = self._bin_index(values)
        pos = is_pos if is_pos.dtype == torch.bool else is_pos != 0
        idx.add_(pos.view(torch.uint8), alpha=nb)  # int32 arithmetic: no uint8 overflow
        if drop is not None:
            # Ignored pixels go to a spare bucket that is dropped: no boolean indexing, no sync.
            idx.masked_fill_(drop if drop.dtype == torch.bool else drop != 0, 2 * nb)
        return _count(idx, 2 * nb + 1)

    # -- results -----------------------------------------------------------------------------
    def curve(self) -> dict[str, np.ndarray]:
        """PR curve in wsolevaluation's reversed order (index k <-> ``thresholds[k]``).

        Keys: thresholds (``edges[n+1-k]``: 2.0, 1.0, 1-1/n, ..., 0.0), precision, recall
        (NaN where undefined), tp, fp, fn, tn (int64 pixel counts) and miou.
        """
        pos = self.hist_pos.cpu().numpy().astype(np.int64)
        neg = self.hist_neg.cpu().numpy().astype(np.int64)
        tp = np.cumsum(pos[::-1])
        fp = np.cumsum(neg[::-1])
        fn = pos.sum() - tp
        tn = neg.sum() - fp
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
            miou = 0.5 * (tp / (tp + fp + fn) + tn / (tn + fp + fn))
        thresholds = self.edges[: self.num_bins][::-1].copy()
        return {
            "thresholds": thresholds,
            "precision": precision,
            "recall": recall,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "miou": miou,
        }

    def compute(self) -> float:
        """PxAP in percent; NaN when no foreground pixel was seen (undefined, not zero)."""
        c = self.curve()
        if c["tp"][-1] == 0:
            return float("nan")
        prec, rec = c["precision"], c["recall"]
        defined = (c["tp"] + c["fp"])[1:] > 0
        area = prec[1:][defined] * np.diff(rec)[defined]
        return float(100.0 * area.sum())

    def _best_index(self, c: dict[str, np.ndarray]) -> int:
        miou = np.where(np.isnan(c["miou"]), -np.inf, c["miou"])
        return int(np.argmax(miou))  # first maximum, as np.argmax in wsolevaluation

    def best_miou_threshold(self) -> float:
        """Map value t of the mIoU-best operating point on this split (``map >= t`` is FG)."""
        c = self.curve()
        return float(c["thresholds"][self._best_index(c)])

    def _index_of_threshold(self, threshold: float) -> int:
        """Reversed-curve index of the bin edge nearest to ``threshold`` (ties: lower edge)."""
        n = self.num_thresholds
        if not np.isfinite(threshold):
            raise ValueError(f"rates: threshold must be a finite float, got {threshold}")
        if threshold > 1.0:
            j = n + 1  # edge 2.0: no pixel is foreground
        elif threshold <= 0.0:
            j = 0
        else:
            j = int(np.argmin(np.abs(self.edges[: n + 1] - threshold)))
        return n + 1 - j

    def rates(self, threshold: float | None = None) -> dict[str, float]:
        """Pooled pixel rates (percent) at an operating point, as Table 6 of the paper.

        ``threshold=None`` uses this split's own mIoU-best threshold (what the official code
        reports on test: an oracle); a float (e.g. tuned on validation) is snapped to the
        nearest bin edge and applied to this split's histograms.
        """
        c = self.curve()
        k = self._best_index(c) if threshold is None else self._index_of_threshold(threshold)
        n_pos = float(c["tp"][k] + c["fn"][k])
        n_neg = float(c["tn"][k] + c["fp"][k])
        tp_rate = 100.0 * c["tp"][k] / n_pos if n_pos > 0 else float("nan")
        tn_rate = 100.0 * c["tn"][k] / n_neg if n_neg > 0 else float("nan")
        return {
            "TP*": float(tp_rate),
            "FN*": float(100.0 - tp_rate),
            "TN*": float(tn_rate),
            "FP*": float(100.0 - tn_rate),
            "threshold": float(c["thresholds"][k]),
            "mIoU": float(100.0 * c["miou"][k]),
        }


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Classification accuracy in percent, the CL column of the paper's tables."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"accuracy: expected logits (N,K) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("accuracy: empty batch, accuracy is undefined")
    correct = logits.argmax(dim=1) == labels.to(logits.device)
    return float(100.0 * correct.double().mean().item())


def separability_j(features: Tensor, mask: Tensor) -> float:
    """Fisher class separability J = tr(S_B)/tr(S_W) of one image's pixel features (App. D).

    The trace form avoids d x d scatter matrices. NaN when either class is empty, because the
    ratio is undefined there (the paper prints "-"), not zero.
    """
    if features.ndim != 3 or mask.shape != features.shape[1:]:
        raise ValueError(
            f"separability_j: expected features (d,h,w) and mask (h,w) on the same grid, got "
            f"{tuple(features.shape)} and {tuple(mask.shape)}"
        )
    x = features.detach().reshape(features.shape[0], -1).t().double()  # (N, d)
    fg = mask.detach().reshape(-1).to(x.device) != 0
    n_fg = int(fg.sum())
    n_bg = fg.numel() - n_fg
    if n_fg == 0 or n_bg == 0:
        return float("nan")
    w = fg.double().unsqueeze(1)
    m = x.mean(dim=0)
    m_fg = (x * w).sum(dim=0) / n_fg
    m_bg = (x * (1 - w)).sum(dim=0) / n_bg
    between = n_fg * (m_fg - m).square().sum() + n_bg * (m_bg - m).square().sum()
    centred = x - torch.where(fg.unsqueeze(1), m_fg, m_bg)
    within = centred.square().sum()
    b, wi = float(between), float(within)
    if wi == 0.0:
        return float("inf") if b > 0 else float("nan")
    return b / wi


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided paired t-test (scipy ``ttest_rel``), the test behind the paper's Table 2."""
    from scipy import stats

    xa = np.asarray(a, dtype=np.float64).reshape(-1)
    xb = np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(
            f"paired_ttest: the two samples must be paired (same length), got {xa.size} and "
            f"{xb.size}"
        )
    if xa.size < 2:
        raise ValueError(f"paired_ttest: need at least 2 pairs, got {xa.size}")
    res = stats.ttest_rel(xa, xb, alternative="two-sided")
    return {"t": float(res.statistic), "p": float(res.pvalue), "df": int(xa.size - 1),
            "n": int(xa.size)}


def bootstrap_multiplicities(n_images: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_images) int64: how often each image is drawn in each bootstrap resample.

    Each row is n_images draws with replacement from numpy ``Generator(seed)``, so two models
    evaluated on the same split with the same (n_images, seed) see the same resamples: that
    pairing is what makes ``paired_ttest`` over the resampled PxAPs meaningful.
    """
    if n_images < 1 or n_resamples < 1:
        raise ValueError(
            f"bootstrap_multiplicities: n_images ({n_images}) and n_resamples ({n_resamples}) "
            "must both be >= 1"
        )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))
    offsets = (np.arange(n_resamples) * n_images)[:, None]
    counts = np.bincount((draws + offsets).reshape(-1), minlength=n_resamples * n_images)
    return counts.reshape(n_resamples, n_images).astype(np.int64)


class ResampledPxAP:
    """Pooled PxAP of each of R bootstrap resamples of a split's images, in one streaming pass.

    The paper's Table 2 t/p values fit df = 28 (official-code notes 5.5), i.e. 29 paired
    values; per-image AP would give df = n_images - 1. So each model gets R = 29 dataset-level
    PxAPs, one per resample of the test images (the same resamples for every model), and the
    t-test pairs them. Per batch, each image's positive/negative histograms come from one
    bincount; an (R,B) x (B,2*bins) product adds them to every resample with its multiplicity.
    State: (R, bins) int64 histograms on the inputs' device.
    """

    def __init__(
        self,
        n_images: int,
        n_resamples: int = 29,
        seed: int = 0,
        num_thresholds: int = 1000,
        *,
        multiplicities: np.ndarray | None = None,
    ) -> None:
        """``multiplicities`` (R, n_images) replaces the bootstrap draw (e.g. all ones = PxAP)."""
        self.n_images = int(n_images)
        if multiplicities is None:
            mult = bootstrap_multiplicities(self.n_images, int(n_resamples), seed)
        else:
            mult = np.asarray(multiplicities)
            if mult.ndim != 2 or mult.shape[1] != self.n_images:
                raise ValueError(
                    f"ResampledPxAP: multiplicities must have shape (R, {self.n_images}), got "
                    f"{mult.shape}"
                )
            if (mult < 0).any() or not np.array_equal(mult, np.round(mult)):
                raise ValueError("ResampledPxAP: multiplicities must be non-negative integers")
            mult = mult.astype(np.int64)
        self.multiplicities = mult
        self.n_resamples = int(mult.shape[0])
        self._pxap = PxAP(num_thresholds)  # bins the values and computes each resample's PxAP
        self.num_thresholds = self._pxap.num_thresholds
        self.num_bins = self._pxap.num_bins
        self.hist_pos = torch.zeros(self.n_resamples, self.num_bins, dtype=torch.int64)
        self.hist_neg = torch.zeros(self.n_resamples, self.num_bins, dtype=torch.int64)
        self._weights = torch.from_numpy(mult.astype(np.float64))

    def reset(self) -> None:
        """Start a new split with the same resamples."""
        self.hist_pos.zero_()
        self.hist_neg.zero_()

    def merge(self, other: ResampledPxAP) -> None:
        """Add another evaluator's histograms (another process's share of the same split)."""
        if (other.num_thresholds != self.num_thresholds
                or not np.array_equal(other.multiplicities, self.multiplicities)):
            raise ValueError(
                "cannot merge ResampledPxAP objects with different resamples or thresholds; "
                "build both with the same n_images, n_resamples, seed and num_thresholds"
            )
        self.hist_pos += other.hist_pos.to(self.hist_pos.device)
        self.hist_neg += other.hist_neg.to(self.hist_neg.device)

    def update(self, maps: Tensor, masks: Tensor, indices: Tensor | Sequence[int],
               ignore: Tensor | None = None) -> None:
        """Add a batch of maps (B,H,W) in [0,1], GT masks and the images' split indices (B,).

        ``indices`` are positions in the split (``batch["index"]``), in ``[0, n_images)``: they
        pick each image's column of the multiplicity matrix.
        """
        if maps.ndim != 3:
            raise ValueError(f"ResampledPxAP.update: expected maps (B,H,W), got "
                             f"{tuple(maps.shape)}")
        _check_update("ResampledPxAP.update", maps, masks, ignore)
        idx = torch.as_tensor(indices).reshape(-1).long().cpu()
        b = maps.shape[0]
        if idx.numel() != b:
            raise ValueError(
                f"ResampledPxAP.update: {idx.numel()} indices for a batch of {b} maps; pass one "
                "split index per image"
            )
        if b and (int(idx.min()) < 0 or int(idx.max()) >= self.n_images):
            raise ValueError(
                f"ResampledPxAP.update: image indices must lie in [0, {self.n_images}), got "
                f"{int(idx.min())}..{int(idx.max())}; build it with n_images = len(dataset)"
            )
        device = maps.device
        if self.hist_pos.device != device:
            self.hist_pos = self.hist_pos.to(device)
            self.hist_neg = self.hist_neg.to(device)
        if maps.numel() == 0:
            return
        values = maps.detach()
        lo, hi = torch.aminmax(values)
        if not bool((lo >= 0) & (hi <= 1)):
            raise ValueError(
                "ResampledPxAP.update: maps must lie in [0, 1] without NaN; normalise them "
                "(min-max or softmax) and apply nan_to_num before evaluation"
            )
        is_pos = masks.detach().to(device)
        drop = None if ignore is None else ignore.detach().to(device)
        counts = self._image_counts(values, is_pos, drop)  # (B, 2 * nb) int64
        # float64 products are exact here (counts and multiplicities far below 2**53), and
        # unlike int64 matmul they run on CUDA too
        weights = self._weights[:, idx].to(device)
        added = (weights @ counts.double()).round_().long()
        nb = self.num_bins
        self.hist_neg += added[:, :nb]
        self.hist_pos += added[:, nb:]

    def _image_counts(self, values: Tensor, is_pos: Tensor, drop: Tensor | None) -> Tensor:
        """Per-image counts of (bin + nb * is_positive): one bincount per chunk of images."""
        nb = self.num_bins
        b = values.shape[0]
        per_image = values[0].numel()
        step = b
        if values.device.type == "cpu":  # cache-sized chunks, as PxAP.update
            step = max(1, _CPU_CHUNK // max(per_image, 1))
        out = []
        for start in range(0, b, step):
            sl = slice(start, start + step)
            n = values[sl].shape[0]
            idx = self._pxap._bin_index(values[sl].reshape(-1))
            pos = is_pos[sl].reshape(-1)
            pos = pos if pos.dtype == torch.bool else pos != 0
            idx.add_(pos.view(torch.uint8), alpha=nb)
            offsets = torch.arange(n, device=idx.device, dtype=torch.int32) * (2 * nb)
            idx = (idx.view(n, per_image) + offsets[:, None]).reshape(-1)
            if drop is not None:
                d = drop[sl].reshape(-1)
                idx.masked_fill_(d if d.dtype == torch.bool else d != 0, 2 * nb * n)
            out.append(_count(idx, 2 * nb * n + 1)[: 2 * nb * n].view(n, 2 * nb))
        return torch.cat(out)

    def compute(self) -> np.ndarray:
        """PxAP (percent) of each resample, by :meth:`PxAP.compute`; NaN where no FG was drawn."""
        scorer = PxAP(self.num_thresholds)
        pos = self.hist_pos.cpu()
        neg = self.hist_neg.cpu()
        out = np.empty(self.n_resamples, dtype=np.float64)
        for r in range(self.n_resamples):
            scorer.hist_pos = pos[r].clone()
            scorer.hist_neg = neg[r].clone()
            out[r] = scorer.compute()
        return out
