from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import average_precision_score

from pixelcam.metrics import (
    PxAP,
    ResampledPxAP,
    accuracy,
    bootstrap_multiplicities,
    paired_ttest,
    pxap_edges,
    separability_j,
)


def _blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """Random smooth blobs: thresholded low-frequency noise, about 30-50% foreground."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size // 8, size // 8, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return smooth > 0.55


def _noisy_maps(masks: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(masks.shape, generator=g)
    return (0.3 + 0.35 * masks.float() + 0.2 * noise).clamp(0, 1)


def test_edges_match_wsolevaluation() -> None:
    ref = np.append(np.arange(0, 1, 0.001), [1.0, 2.0, 3.0])
    assert np.array_equal(pxap_edges(1000), ref)
    assert len(pxap_edges(7)) == 10


def test_perfect_map_is_100() -> None:
    masks = _blobs(4, 32, seed=0)
    m = PxAP()
    m.update(masks.float(), masks)
    assert m.compute() == 100.0


@pytest.mark.parametrize("c", [0.0, 0.37, 1.0])
def test_constant_map_gives_prevalence(c: float) -> None:
    masks = _blobs(3, 32, seed=1)
    m = PxAP()
    m.update(torch.full(masks.shape, c), masks)
    prevalence = masks.float().mean().item()
    assert abs(m.compute() - 100 * prevalence) < 1e-6


def test_matches_sklearn_on_random_maps() -> None:
    masks = _blobs(6, 64, seed=2)
    maps = _noisy_maps(masks, seed=3)
    m = PxAP()
    m.update(maps, masks)
    y = masks.reshape(-1).numpy()
    raw = maps.reshape(-1).double().numpy()
    quantised = np.floor(raw * 1000) / 1000
    assert abs(m.compute() - 100 * average_precision_score(y, quantised)) < 0.05
    assert abs(m.compute() - 100 * average_precision_score(y, raw)) < 0.5


def test_streaming_equals_single_update() -> None:
    masks = _blobs(6, 32, seed=4)
    maps = _noisy_maps(masks, seed=5)
    whole, parts = PxAP(), PxAP()
    whole.update(maps, masks)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        parts.update(maps[sl], masks[sl])
    assert torch.equal(whole.hist_pos, parts.hist_pos)
    assert torch.equal(whole.hist_neg, parts.hist_neg)
    assert whole.compute() == parts.compute()


def test_merge_and_reset() -> None:
    masks = _blobs(4, 32, seed=6)
    maps = _noisy_maps(masks, seed=7)
    whole, a, b = PxAP(), PxAP(), PxAP()
    whole.update(maps, masks)
    a.update(maps[:2], masks[:2])
    b.update(maps[2:], masks[2:])
    a.merge(b)
    assert torch.equal(a.hist_pos, whole.hist_pos) and torch.equal(a.hist_neg, whole.hist_neg)
    a.reset()
    assert int(a.hist_pos.sum()) == 0 and int(a.hist_neg.sum()) == 0
    assert math.isnan(a.compute())
    with pytest.raises(ValueError, match="num_thresholds"):
        a.merge(PxAP(num_thresholds=10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bin_index_matches_np_histogram(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(8)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    edge_vals = np.array([k / 1000 for k in range(1001)], dtype=np_dtype)
    near = np.concatenate([
        np.nextafter(edge_vals, np_dtype(-1)), np.nextafter(edge_vals, np_dtype(2))
    ])
    near = near[(near >= 0) & (near <= 1)]
    values = np.concatenate([
        torch.rand(5000, generator=g, dtype=dtype).numpy(), edge_vals, near,
        np.array([0.0, 1.0], dtype=np_dtype),
    ])
    m = PxAP()
    m.update(torch.from_numpy(values).view(1, 1, -1), torch.ones(1, 1, values.size))
    expected, _ = np.histogram(values, bins=m.edges)
    assert np.array_equal(m.hist_pos.numpy(), expected)
    assert int(m.hist_neg.sum()) == 0
    # 1.0 is in the [1, 2) bin, exactly as np.histogram puts it.
    assert int(m.hist_pos[1000]) == int((values == 1.0).sum())


def test_ignore_pixels_are_excluded() -> None:
    masks = _blobs(2, 16, seed=9)
    maps = _noisy_maps(masks, seed=10)
    ignore = _blobs(2, 16, seed=11)
    m, ref = PxAP(), PxAP()
    m.update(maps, masks, ignore)
    keep = ~ignore
    ref.update(maps[keep].view(1, 1, -1), masks[keep].view(1, 1, -1))
    assert torch.equal(m.hist_pos, ref.hist_pos) and torch.equal(m.hist_neg, ref.hist_neg)


def test_invalid_maps_raise() -> None:
    m = PxAP()
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            m.update(torch.full((1, 2, 2), bad), mask)
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.zeros(1, 2, 2), torch.ones(1, 2, 3))


def test_rates_perfect_map() -> None:
    masks = _blobs(3, 32, seed=12)
    m = PxAP()
    m.update(masks.float(), masks)
    r = m.rates()
    assert r["TP*"] == 100.0 and r["FP*"] == 0.0 and r["TN*"] == 100.0 and r["FN*"] == 0.0
    assert r["mIoU"] == 100.0
    # The first best operating point (ties -> first index) is map >= 1.0.
    assert m.best_miou_threshold() == 1.0 == r["threshold"]


def test_rates_at_given_threshold_hand_example() -> None:
    maps = torch.tensor([[[0.1, 0.2, 0.6, 0.9], [0.3, 0.7, 0.05, 0.95]]])
    masks = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 1]]], dtype=torch.bool)
    m = PxAP()
    m.update(maps, masks)
    r = m.rates(0.5)
    # map >= 0.5 -> FG: {0.6, 0.9, 0.7, 0.95}; GT FG: {0.2, 0.6, 0.9, 0.05, 0.95}.
    tp, fn, tn, fp = 3, 2, 2, 1
    assert r["threshold"] == 0.5
    assert r["TP*"] == pytest.approx(100 * tp / (tp + fn))
    assert r["FN*"] == pytest.approx(100 * fn / (tp + fn))
    assert r["TN*"] == pytest.approx(100 * tn / (tn + fp))
    assert r["FP*"] == pytest.approx(100 * fp / (tn + fp))
    miou = 0.5 * (tp / (tp + fp + fn) + tn / (tn + fp + fn))
    assert r["mIoU"] == pytest.approx(100 * miou)
    # Off-edge thresholds snap to the nearest edge: 0.5004 -> 0.5.
    assert m.rates(0.5004) == r
    # Oracle threshold: the mIoU-best one, checked by brute force over map values.
    best = max(
        (0.5 * (((maps >= t) & masks).sum() / ((maps >= t) | masks).sum()
                + ((maps < t) & ~masks).sum() / ((maps < t) | ~masks).sum())).item()
        for t in maps.unique().tolist()
    )
    assert m.rates()["mIoU"] == pytest.approx(100 * best)


def test_curve_is_reversed_and_consistent() -> None:
    masks = _blobs(2, 16, seed=13)
    maps = _noisy_maps(masks, seed=14)
    m = PxAP()
    m.update(maps, masks)
    c = m.curve()
    assert c["thresholds"][0] == 2.0 and c["thresholds"][1] == 1.0 and c["thresholds"][-1] == 0.0
    for k in (0, 1, 300, 700, 1001):
        t = c["thresholds"][k]
        assert c["tp"][k] == int(((maps.double() >= t) & masks).sum())
        assert c["fp"][k] == int(((maps.double() >= t) & ~masks).sum())
    assert np.all(c["tp"] + c["fn"] == int(masks.sum()))


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, labels) == 50.0
    with pytest.raises(ValueError):
        accuracy(logits, labels[:3])


def test_separability_j_hand_example() -> None:
    # 1-d features: BG {-1, 1} (mean 0), FG {9, 11} (mean 10), global mean 5.
    # tr(S_B) = 2*25 + 2*25 = 100, tr(S_W) = 4 * 1 = 4 -> J = 25.
    feats = torch.tensor([[[-1.0, 1.0], [9.0, 11.0]]])
    mask = torch.tensor([[False, False], [True, True]])
    assert separability_j(feats, mask) == pytest.approx(25.0)
    # Adding a constant feature channel changes neither trace.
    feats2 = torch.cat([feats, torch.full_like(feats, 3.0)])
    assert separability_j(feats2, mask) == pytest.approx(25.0)
    assert math.isnan(separability_j(feats, torch.zeros(2, 2, dtype=torch.bool)))
    assert math.isnan(separability_j(feats, torch.ones(2, 2, dtype=torch.bool)))


def test_separability_j_matches_scatter_matrices() -> None:
    g = torch.Generator().manual_seed(15)
    feats = torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 7, generator=g) > 0.6
    x = feats.reshape(5, -1).t().numpy()
    y = mask.reshape(-1).numpy()
    m = x.mean(0)
    sw = np.zeros((5, 5))
    sb = np.zeros((5, 5))
    for c in (False, True):
        xc = x[y == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc)
        sb += len(xc) * np.outer(mc - m, mc - m)
    assert separability_j(feats, mask) == pytest.approx(np.trace(sb) / np.trace(sw), rel=1e-10)


def test_paired_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(16)
    a = rng.normal(60, 2, size=29)
    b = a + rng.normal(1.0, 0.5, size=29)
    out = paired_ttest(a.tolist(), b.tolist())
    ref = stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic)
    assert out["p"] == pytest.approx(ref.pvalue)
    assert out["df"] == 28 and out["n"] == 29
    with pytest.raises(ValueError, match="same length"):
        paired_ttest([1.0, 2.0], [1.0])


def _edge_heavy_values(n: int, dtype: torch.dtype, seed: int) -> np.ndarray:
    """Random values plus every edge of ``n`` thresholds and its two neighbours in ``dtype``."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    edges = pxap_edges(n)[: n + 1].astype(np_dtype)
    near = np.concatenate([np.nextafter(edges, np_dtype(-1)), np.nextafter(edges, np_dtype(2))])
    rand = torch.rand(4000, generator=torch.Generator().manual_seed(seed), dtype=dtype).numpy()
    values = np.concatenate([rand, edges, near, np.array([0.0, 1.0], dtype=np_dtype)])
    return values[(values >= 0) & (values <= 1)]


@pytest.mark.parametrize("n", [7, 12, 600, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("product", [True, False])
def test_fast_bin_index_matches_np_histogram_for_any_n(
    n: int, dtype: torch.dtype, product: bool
) -> None:
    # float32: the exact float64 product where it is exact (not for n=600), else the
    # corrected path (forced with product=False). float64 maps: n=7 and n=12 have edges
    # k*(1/n) just below k/n, so the two-sided correction runs.
    values = _edge_heavy_values(n, dtype, seed=20 + n)
    m = PxAP(num_thresholds=n)
    m._f32_exact = m._f32_exact and product
    expected, _ = np.histogram(values, bins=m.edges)
    idx = m.bin_index(torch.from_numpy(values))
    assert idx.dtype == torch.int64
    got = torch.bincount(idx, minlength=n + 2)
    assert np.array_equal(got.numpy(), expected)
    assert torch.equal(m._bin_index(torch.from_numpy(values)), idx.int())


def test_which_bin_path_is_exact_for_which_n() -> None:
    cpu = torch.device("cpu")
    assert PxAP(1000)._f32_exact and not PxAP(600)._f32_exact
    m = PxAP(1000)
    assert m._edges_for(torch.float32, cpu)[1] and m._edges_for(torch.float64, cpu)[1]
    assert not PxAP(7)._edges_for(torch.float64, cpu)[1]
    # n=600: 0.875 = 525/600 is a float32, but the float64 edge 525*(1/600) lies just above
    # it, so np.histogram puts 0.875 in bin 524 while floor(0.875 * 600) = 525.
    m = PxAP(600)
    assert m.edges[525] > 0.875
    assert np.histogram([0.875], bins=m.edges)[0][524] == 1
    assert m.bin_index(torch.tensor([0.875])).item() == 524


def test_chunked_update_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import pixelcam.metrics as metrics

    masks = _blobs(5, 48, seed=21)
    maps = _noisy_maps(masks, seed=22)
    ignore = _blobs(5, 48, seed=23)
    whole = PxAP()
    whole.update(maps, masks, ignore)
    # A chunk size that does not divide the pixel count: the last chunk is partial.
    monkeypatch.setattr(metrics, "_CPU_CHUNK", 997)
    chunked = PxAP()
    chunked.update(maps, masks, ignore)
    assert torch.equal(whole.hist_pos, chunked.hist_pos)
    assert torch.equal(whole.hist_neg, chunked.hist_neg)
    keep = ~ignore
    expected_pos, _ = np.histogram(maps[keep & masks].numpy(), bins=whole.edges)
    expected_neg, _ = np.histogram(maps[keep & ~masks].numpy(), bins=whole.edges)
    assert np.array_equal(chunked.hist_pos.numpy(), expected_pos)
    assert np.array_equal(chunked.hist_neg.numpy(), expected_neg)


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.int64, torch.float32])
def test_non_bool_masks_and_ignore(mask_dtype: torch.dtype) -> None:
    masks = _blobs(3, 32, seed=24)
    maps = _noisy_maps(masks, seed=25)
    ignore = _blobs(3, 32, seed=26)
    ref, m = PxAP(), PxAP()
    ref.update(maps, masks, ignore)
    # Any nonzero value is foreground / ignored, not only 1.
    m.update(maps, masks.to(mask_dtype) * 3, ignore.to(mask_dtype) * 2)
    assert torch.equal(ref.hist_pos, m.hist_pos) and torch.equal(ref.hist_neg, m.hist_neg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps_bin_as_their_float32_values(dtype: torch.dtype) -> None:
    masks = _blobs(2, 32, seed=27)
    maps = _noisy_maps(masks, seed=28).to(dtype)
    m, ref = PxAP(), PxAP()
    m.update(maps, masks)
    ref.update(maps.float(), masks)
    assert torch.equal(m.hist_pos, ref.hist_pos) and torch.equal(m.hist_neg, ref.hist_neg)
    assert int(m.hist_pos.sum() + m.hist_neg.sum()) == maps.numel()


def test_empty_batch_adds_nothing() -> None:
    m = PxAP()
    m.update(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool))
    assert int(m.hist_pos.sum()) == 0 and int(m.hist_neg.sum()) == 0


# -- ResampledPxAP (Table 2's paired values) ------------------------------------------------


def test_resampled_pxap_with_unit_multiplicities_is_pxap() -> None:
    masks = _blobs(5, 32, seed=20)
    maps = _noisy_maps(masks, seed=21)
    ref = PxAP()
    ref.update(maps, masks)
    res = ResampledPxAP(5, multiplicities=np.ones((1, 5), dtype=np.int64))
    res.update(maps[:2], masks[:2], torch.tensor([0, 1]))
    res.update(maps[2:], masks[2:], [2, 3, 4])
    assert torch.equal(res.hist_pos[0], ref.hist_pos)
    assert torch.equal(res.hist_neg[0], ref.hist_neg)
    out = res.compute()
    assert out.shape == (1,) and out[0] == ref.compute()


def test_bootstrap_multiplicities_are_seeded_draws() -> None:
    a = bootstrap_multiplicities(80, 29, seed=0)
    assert a.shape == (29, 80) and a.dtype == np.int64
    assert (a.sum(axis=1) == 80).all() and (a >= 0).all()
    assert np.array_equal(a, bootstrap_multiplicities(80, 29, seed=0))
    assert not np.array_equal(a, bootstrap_multiplicities(80, 29, seed=1))
    # same (n_images, seed) -> same resamples for two models
    assert np.array_equal(ResampledPxAP(80).multiplicities, ResampledPxAP(80).multiplicities)
    # a bootstrap of 80 leaves out about 1/e of the images
    assert 0.25 < (a == 0).mean() < 0.50


def test_resampled_pxap_hand_example() -> None:
    # image 0 alone: scores 0.9(+) 0.6(-) 0.4(+) 0.1(-) -> AP = 0.5*1 + 0.5*(2/3) = 5/6
    maps = torch.tensor([[[0.9, 0.6], [0.4, 0.1]],
                         [[0.5, 0.5], [0.5, 0.5]],
                         [[0.2, 0.3], [0.7, 0.8]]])
    masks = torch.tensor([[[1, 0], [1, 0]],
                          [[1, 1], [0, 0]],
                          [[0, 0], [0, 0]]], dtype=torch.bool)
    mult = np.array([[1, 0, 0], [2, 0, 0], [2, 1, 0], [0, 0, 3], [1, 1, 1]])
    res = ResampledPxAP(3, multiplicities=mult)
    res.update(maps[2:], masks[2:], [2])  # order of images and batches does not matter
    res.update(maps[:2], masks[:2], [0, 1])
    out = res.compute()
    assert out[0] == pytest.approx(100 * 5 / 6, abs=1e-12)
    assert out[1] == pytest.approx(100 * 5 / 6, abs=1e-12)  # duplicates scale both histograms
    assert math.isnan(out[3])  # only image 2 drawn: no foreground, PxAP undefined
    for r in (2, 4):
        rep = torch.tensor(np.repeat(np.arange(3), mult[r]))
        ref = PxAP()
        ref.update(maps[rep], masks[rep])
        assert torch.equal(res.hist_pos[r], ref.hist_pos)
        assert torch.equal(res.hist_neg[r], ref.hist_neg)
        assert out[r] == ref.compute()
    # resample 2 = image 0 twice + image 1: positives 0.9 x2, 0.5 x2, 0.4 x2 vs negatives
    # 0.6 x2, 0.5 x2, 0.1 x2 -> recall steps of 1/3 at precisions 1, 4/8, 6/10 -> AP = 0.7
    assert out[2] == pytest.approx(70.0, abs=1e-12)


def test_resampled_pxap_pairs_two_models_with_df_28() -> None:
    masks = _blobs(12, 16, seed=22)
    good = _noisy_maps(masks, seed=23)
    bad = (0.5 * good + 0.5 * torch.rand(masks.shape, generator=torch.Generator().manual_seed(24)))
    a, b = ResampledPxAP(12, seed=3), ResampledPxAP(12, seed=3)
    a.update(good, masks, range(12))
    b.update(bad, masks, range(12))
    res = paired_ttest(a.compute(), b.compute())
    assert res["df"] == 28 and res["n"] == 29
    assert res["t"] > 0 and res["p"] < 1e-6


def test_resampled_pxap_ignore_merge_and_errors() -> None:
    masks = _blobs(4, 16, seed=25)
    maps = _noisy_maps(masks, seed=26)
    ignore = torch.zeros_like(masks)
    ignore[:, :4] = True
    ref = PxAP()
    ref.update(maps, masks, ignore)
    one = np.ones((2, 4), dtype=np.int64)
    res = ResampledPxAP(4, multiplicities=one)
    part = ResampledPxAP(4, multiplicities=one)
    res.update(maps[:3], masks[:3], [0, 1, 2], ignore[:3])
    part.update(maps[3:], masks[3:], [3], ignore[3:])
    res.merge(part)
    assert torch.equal(res.hist_pos[1], ref.hist_pos)
    assert torch.equal(res.hist_neg[1], ref.hist_neg)
    with pytest.raises(ValueError, match="different resamples"):
        res.merge(ResampledPxAP(4, n_resamples=2))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        res.update(maps[:1], masks[:1], [4])
    with pytest.raises(ValueError, match="one split index per image"):
        res.update(maps[:2], masks[:2], [0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        res.update(maps[:1] + 1, masks[:1], [0])
    with pytest.raises(ValueError, match="shape"):
        ResampledPxAP(4, multiplicities=np.ones((2, 3)))
