from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import pixelcam.sampler as sampler_module
from pixelcam.sampler import (
    IGNORE_INDEX,
    otsu_threshold,
    sample_seeds_pb,
    sample_seeds_th,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct_cam(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """CAMs whose values are all distinct, so the lowest-min_p region is unambiguous."""
    g = _gen(seed)
    perm = torch.stack([torch.randperm(h * w, generator=g) for _ in range(b)])
    return (perm.float() / (h * w - 1)).view(b, h, w)


@pytest.mark.parametrize("bg_mode", ["official", "paper"])
def test_pb_shape_dtype_and_counts(bg_mode: str) -> None:
    cams = _distinct_cam(6, 16, 16, seed=0)
    cams[:, :8] *= 0.1  # top half low, so FG and BG rarely collide
    t = sample_seeds_pb(cams, n_fg=5, n_bg=4, bg_mode=bg_mode, generator=_gen(1))
    assert t.shape == (6, 16, 16) and t.dtype == torch.long
    assert set(t.unique().tolist()) <= {1, 0, IGNORE_INDEX}
    fg = (t == 1).sum(dim=(1, 2))
    bg = (t == 0).sum(dim=(1, 2))
    conflicts = (5 - fg)  # each conflict removes one FG and one BG seed
    assert torch.equal(bg, 4 - conflicts)
    # With these maps conflicts need an FG draw among the lowest-CAM pixels: rare, not every row.
    assert (conflicts == 0).sum() >= 4


def test_pb_accepts_channel_dim() -> None:
    cams = _distinct_cam(2, 8, 8, seed=2)
    a = sample_seeds_pb(cams, generator=_gen(3))
    b = sample_seeds_pb(cams.unsqueeze(1), generator=_gen(3))
    assert torch.equal(a, b)


def test_pb_fg_frequencies_proportional_to_cam() -> None:
    weights = torch.arange(16, dtype=torch.float32).view(4, 4) / 15  # includes an exact zero
    reps = 20000
    cams = weights.expand(reps, 4, 4)
    t = sample_seeds_pb(cams, n_fg=1, n_bg=0, generator=_gen(4))
    assert torch.equal((t == 1).sum(dim=(1, 2)), torch.ones(reps, dtype=torch.long))
    freq = (t == 1).float().mean(0).flatten()
    p = (weights.flatten() + 1e-6) / (weights.flatten() + 1e-6).sum()
    assert (freq - p).abs().max().item() < 0.02
    assert freq[0].item() < 0.001  # the zero-CAM pixel is (almost) never FG


def test_pb_official_bg_uniform_in_lowest_region() -> None:
    reps, h, w, min_p, n_bg = 5000, 8, 8, 0.25, 3
    cam = _distinct_cam(1, h, w, seed=5)[0]
    k = int(min_p * h * w)
    lowest = torch.zeros(h * w, dtype=torch.bool)
    lowest[cam.flatten().argsort()[:k]] = True
    t = sample_seeds_pb(cam.expand(reps, h, w), n_fg=0, n_bg=n_bg, min_p=min_p,
                        generator=_gen(6))
    bg = (t == 0).view(reps, -1)
    assert torch.equal(bg.sum(1), torch.full((reps,), n_bg))
    assert not bg[:, ~lowest].any()
    freq = bg.float().mean(0)[lowest]
    assert (freq - n_bg / k).abs().max().item() < 0.03


def test_pb_official_bg_ties_keep_raster_order() -> None:
    # 40% of the pixels are exact zeros; with min_p=0.2 the region is the first zeros in raster
    # order (stable sort), as torch's stable argsort in the official pipeline.
    cam = torch.rand(10, 10, generator=_gen(7)) * 0.5 + 0.5
    zeros = torch.rand(10, 10, generator=_gen(8)) < 0.4
    cam[zeros] = 0
    region = torch.nonzero(zeros.flatten())[:20, 0]
    t = sample_seeds_pb(cam.expand(3000, 10, 10), n_fg=0, n_bg=5, min_p=0.2, generator=_gen(9))
    seen = torch.nonzero((t == 0).view(3000, -1).any(0))[:, 0]
    assert torch.equal(seen, region.sort().values)


def test_pb_paper_bg_proportional_to_one_minus_cam() -> None:
    weights = torch.arange(16, dtype=torch.float32).view(4, 4) / 15
    reps = 20000
    t = sample_seeds_pb(weights.expand(reps, 4, 4), n_fg=0, n_bg=1, bg_mode="paper",
                        generator=_gen(10))
    freq = (t == 0).float().mean(0).flatten()
    q = 1 - weights.flatten() + 1e-6
    assert (freq - q / q.sum()).abs().max().item() < 0.02
    assert freq[0] > freq[-1] * 50  # low CAM -> far more BG seeds


def test_pb_conflicts_become_ignore() -> None:
    # 2x2 map, every pixel is FG; the 2 lowest pixels are also BG -> ignored.
    cam = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])
    t = sample_seeds_pb(cam, n_fg=4, n_bg=2, min_p=0.5, generator=_gen(11))
    expected = torch.tensor([[[1, IGNORE_INDEX], [IGNORE_INDEX, 1]]])
    assert torch.equal(t, expected)


def test_pb_determinism() -> None:
    cams = _distinct_cam(4, 16, 16, seed=12)
    for mode in ("official", "paper"):
        a = sample_seeds_pb(cams, bg_mode=mode, generator=_gen(13))
        b = sample_seeds_pb(cams, bg_mode=mode, generator=_gen(13))
        c = sample_seeds_pb(cams, bg_mode=mode, generator=_gen(14))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_pb_fg_rows() -> None:
    reps, h, w, n_bg = 4000, 6, 6, 2
    cam = _distinct_cam(1, h, w, seed=15)[0]
    cams = cam.expand(reps, h, w)
    fg_rows = torch.arange(reps) % 2 == 0
    for mode in ("official", "paper"):
        t = sample_seeds_pb(cams, n_fg=3, n_bg=n_bg, min_p=0.2, bg_mode=mode,
                            generator=_gen(16), fg_rows=fg_rows)
        off = t[~fg_rows].view(reps // 2, -1)
        assert not (off == 1).any()
        assert torch.equal((off == 0).sum(1), torch.full((reps // 2,), n_bg))
        # BG of the FG-less rows is uniform over the whole image, whatever the CAM.
        freq = (off == 0).float().mean(0)
        assert (freq - n_bg / (h * w)).abs().max().item() < 0.03
        on = t[fg_rows]
        assert ((on == 1).sum(dim=(1, 2)) + (on == IGNORE_INDEX).sum(dim=(1, 2)) > 0).all()
    with pytest.raises(ValueError, match="fg_rows"):
        sample_seeds_pb(cams[:3], fg_rows=torch.ones(2, dtype=torch.bool))


def test_pb_bad_arguments() -> None:
    cams = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="official"):
        sample_seeds_pb(cams, bg_mode="uniform")
    with pytest.raises(ValueError, match="min_p"):
        sample_seeds_pb(cams, n_bg=20, min_p=0.2)
    with pytest.raises(ValueError, match="shape"):
        sample_seeds_pb(torch.rand(8, 8))


def _otsu_brute_force(img: np.ndarray) -> int:
    v = img.reshape(-1).astype(np.int64)
    best_t, best = -1, -1.0
    for t in range(256):
        lo, hi = v[v <= t], v[v > t]
        if lo.size == 0 or hi.size == 0:
            continue
        between = lo.size * hi.size * (lo.mean() - hi.mean()) ** 2
        if between > best:
            best_t, best = t, between
    return best_t


def test_otsu_matches_brute_force() -> None:
    g = _gen(17)
    b = 6
    low = (torch.randn(b, 20, 20, generator=g) * 20 + 60).clamp(0, 255)
    high = (torch.randn(b, 20, 20, generator=g) * 25 + 180).clamp(0, 255)
    pick = torch.rand(b, 20, 20, generator=g) < torch.linspace(0.2, 0.7, b).view(b, 1, 1)
    c8 = torch.where(pick, high, low).floor().to(torch.uint8)
    c8[-1] = (torch.rand(20, 20, generator=g) * 256).floor().clamp(max=255).to(torch.uint8)
    th = otsu_threshold(c8)
    assert th.shape == (b,) and th.dtype == torch.long
    for i in range(b):
        assert th[i].item() == _otsu_brute_force(c8[i].numpy())
    # Two-level image: the threshold separates the two levels.
    two = torch.tensor([[[10, 10], [200, 200]]], dtype=torch.uint8)
    assert otsu_threshold(two).item() == 10
    with pytest.raises(ValueError):
        otsu_threshold(torch.rand(1, 4, 4))


def _disc_cams(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """A bright noisy disc per image at a random centre: a CAM with one clear Otsu ROI."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy = torch.randint(h // 3, 2 * h // 3, (b, 1, 1), generator=g)
    cx = torch.randint(w // 3, 2 * w // 3, (b, 1, 1), generator=g)
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
    cams = (1 - dist / (0.8 * h)).clamp(0, 1) + 0.02 * torch.rand(b, h, w, generator=g)
    return cams.clamp(0, 1)


def test_th_fg_inside_eroded_roi_and_bg_in_lowest() -> None:
    b, h, w = 8, 32, 32
    cams = _disc_cams(b, h, w, seed=18)
    n_fg, n_bg, min_p = 5, 4, 0.2
    t = sample_seeds_th(cams, n_fg=n_fg, n_bg=n_bg, min_p=min_p, erode_iter=1, erode_k=5,
                        generator=_gen(19))
    c8 = (cams * 255).floor().to(torch.uint8)
    k = int(min_p * h * w)
    for i in range(b):
        th = min(max(_otsu_brute_force(c8[i].numpy()), 1), 254)
        roi = c8[i].numpy() > th
        eroded = ndimage.binary_erosion(roi, structure=np.ones((5, 5)), border_value=1)
        fg = (t[i] == 1).numpy()
        bg = (t[i] == 0).numpy()
        assert fg.sum() == n_fg and bg.sum() == n_bg
        assert eroded[fg].all()
        lowest = np.zeros(h * w, dtype=bool)
        lowest[np.argsort(cams[i].flatten().numpy(), kind="stable")[:k]] = True
        assert lowest.reshape(h, w)[bg].all()


def test_th_constant_and_empty_roi_rows() -> None:
    cams = torch.rand(3, 16, 16, generator=_gen(20))
    cams[0] = 0.5  # constant -> no seeds at all
    cams[1] = 0.0
    cams[1, 0, 0] = 1.0  # ROI is one pixel: erosion with an 11x11 square empties it
    t = sample_seeds_th(cams, generator=_gen(21))
    assert (t[0] == IGNORE_INDEX).all()
    assert not (t[1] == 1).any() and (t[1] == 0).sum() == 5
    # Same seed, same targets.
    assert torch.equal(t, sample_seeds_th(cams, generator=_gen(21)))


def test_th_fg_rows() -> None:
    cams = _disc_cams(4, 16, 16, seed=22)
    t = sample_seeds_th(cams, erode_k=3, generator=_gen(23),
                        fg_rows=torch.tensor([True, False, True, False]))
    assert not (t[1] == 1).any() and not (t[3] == 1).any()
    assert (t[1] == 0).sum() == 5 and (t[3] == 0).sum() == 5
    assert (t[0] == 1).sum() == 5 and (t[2] == 1).sum() == 5


# --- CPU fast paths: same law as the reference (multinomial / stable argsort) ---------------


@pytest.mark.parametrize(
    "test",
    [
        test_pb_official_bg_uniform_in_lowest_region,
        test_pb_official_bg_ties_keep_raster_order,
        test_pb_fg_rows,
        test_pb_conflicts_become_ignore,
        lambda: test_pb_shape_dtype_and_counts("official"),
        test_th_fg_inside_eroded_roi_and_bg_in_lowest,
        test_th_fg_rows,
    ],
    ids=["bg_uniform", "bg_ties", "fg_rows", "conflicts", "counts", "th_roi", "th_fg_rows"],
)
def test_reference_paths_keep_the_same_laws(test, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU runs the fast paths; the GPU runs torch.multinomial and a stable argsort. Run
    # the same distribution checks through the latter on the CPU.
    monkeypatch.setattr(sampler_module, "_CPU_FAST", False)
    test()


def _tie_heavy_cam(h: int, w: int, seed: int) -> torch.Tensor:
    """Exact zeros (half of them -0.0), a tie group at 0.3 and distinct values above 0.5."""
    g = _gen(seed)
    cam = 0.5 + 0.5 * torch.rand(h * w, generator=g)
    perm = torch.randperm(h * w, generator=g)
    n = h * w
    cam[perm[: n // 16]] = 0.0
    cam[perm[: n // 32]] = -0.0
    cam[perm[n // 16 : n // 8]] = 0.1
    cam[perm[n // 8 : n // 2]] = 0.3
    return cam.view(h, w)


@pytest.mark.parametrize("hw", [37, 4099])
def test_stable_keys_sort_like_a_stable_argsort(hw: int) -> None:
    g = _gen(30)
    rows = [
        torch.rand(hw, generator=g),
        _tie_heavy_cam(1, hw, seed=31).flatten(),  # ties at -0.0/+0.0, 0.1 and 0.3
        torch.zeros(hw),
        (torch.rand(hw, generator=g) * 8).floor() / 8,
        torch.rand(hw, generator=g) * 1e-30,  # tiny values: only the low bits differ
    ]
    flat = torch.stack(rows)
    keys = sampler_module._stable_keys(flat)
    for i in range(len(rows)):
        assert keys[i].unique().numel() == hw  # distinct: the positions differ
        assert torch.equal(keys[i].argsort(), flat[i].argsort(stable=True))


def test_fast_bg_region_is_the_stable_argsort_region_with_partial_ties() -> None:
    h = w = 40
    reps, n_bg, min_p = 2000, 5, 0.2
    cam = _tie_heavy_cam(h, w, seed=32)
    k = int(min_p * h * w)
    region = torch.zeros(h * w, dtype=torch.bool)
    region[cam.flatten().argsort(stable=True)[:k]] = True
    # The region holds the 100 zeros and 100 0.1s and only the first 120 of the 600 0.3s.
    ties = torch.nonzero(cam.flatten() == 0.3)[:, 0]
    assert len(ties) == 600
    assert region[ties[:120]].all() and not region[ties[120:]].any()
    t = sample_seeds_pb(cam.expand(reps, h, w), n_fg=0, n_bg=n_bg, min_p=min_p,
                        generator=_gen(33))
    bg = (t == 0).view(reps, -1)
    assert torch.equal(bg.sum(1), torch.full((reps,), n_bg))
    assert torch.equal(bg.any(0), region)
    freq = bg.float().mean(0)[region]
    assert (freq - n_bg / k).abs().max().item() < 0.012


def test_first_distinct_hand_example() -> None:
    cand = torch.tensor([[3, 3, 5, 3, 7, 5, 9]])
    picks, have = sampler_module._first_distinct(cand, 3)
    assert picks.tolist() == [[3, 5, 7]] and have.tolist() == [3]
    valid = torch.tensor([[False, True, True, True, False, True, True]])
    picks, have = sampler_module._first_distinct(cand, 4, valid)
    assert picks[:, :3].tolist() == [[3, 5, 9]] and have.tolist() == [3]


@pytest.mark.parametrize("fast", [True, False])
def test_weighted_pick_has_the_sequential_law(fast: bool) -> None:
    # One heavy pixel: about 5% of the rows find fewer than 3 distinct pixels among their 12
    # candidates, so the exact completion runs too.
    p = torch.tensor([8.0, 1.0, 1.0, 1.0]) / 11
    reps = 40000
    weights = (p * 11).expand(reps, 4)
    if fast:
        picks = sampler_module._weighted_pick(weights, 3, _gen(34))
    else:
        picks = torch.multinomial(weights, 3, replacement=False, generator=_gen(34))
    assert (picks.sort(1).values.diff(dim=1) > 0).all()  # distinct
    first = torch.bincount(picks[:, 0], minlength=4).float() / reps
    assert (first - p).abs().max().item() < 0.01
    pair = torch.bincount(picks[:, 0] * 4 + picks[:, 1], minlength=16).float().view(4, 4) / reps
    exact = p.unsqueeze(1) * p.unsqueeze(0) / (1 - p.unsqueeze(1))
    exact.fill_diagonal_(0)
    assert (pair - exact).abs().max().item() < 0.01
    missing_heavy = (picks != 0).all(1).float().mean().item()
    assert abs(missing_heavy - 6 / 990) < 0.002


def test_weighted_pick_completion_is_deterministic_and_distinct() -> None:
    # Almost all mass on one pixel of a large map: every row needs the completion race.
    weights = torch.full((8, 4096), 1e-6)
    weights[:, 7] = 1.0
    a = sampler_module._weighted_pick(weights, 5, _gen(35))
    b = sampler_module._weighted_pick(weights, 5, _gen(35))
    assert torch.equal(a, b)
    assert (a == 7).any(1).all()
    assert (a.sort(1).values.diff(dim=1) > 0).all()


def test_build_target_rejected_picks_do_not_erase_seeds() -> None:
    # A not-ok FG pick on a BG seed's pixel must leave that BG seed in place.
    fg_idx = torch.tensor([[0, 2]])
    fg_ok = torch.tensor([[True, False]])
    bg_idx = torch.tensor([[2, 3]])
    bg_ok = torch.tensor([[True, True]])
    t = sampler_module._build_target((1, 2, 2), fg_idx, fg_ok, bg_idx, bg_ok)
    assert t.view(-1).tolist() == [1, IGNORE_INDEX, 0, 0]


@pytest.mark.parametrize("k", [1, 3, 11, 31])
def test_box_dilation_equals_max_pool(k: int) -> None:
    mask = torch.rand(3, 17, 23, generator=_gen(36)) > 0.93
    mask[1] = False
    mask[2, 0, 0] = True
    ref = F.max_pool2d(mask.float().unsqueeze(1), k, stride=1, padding=k // 2)[:, 0] > 0
    assert torch.equal(sampler_module._box_any(mask, k), ref)


def test_both_seeders_accept_an_empty_batch():
    from pixelcam.sampler import sample_seeds_pb, sample_seeds_th

    for seeder in (sample_seeds_pb, sample_seeds_th):
        target = seeder(torch.rand(0, 16, 16), n_fg=2, n_bg=2, min_p=0.2)
        assert target.shape == (0, 16, 16) and target.dtype == torch.long


def test_training_th_seeder_takes_bg_from_the_lowest_40_percent_and_pb_from_20() -> None:
    """The official TH reads sl_min_p (0.4 in the official command), PB sl_ng_min_p (0.2): the
    config's defaults th_min_p = 0.4 and min_p = 0.2 reach the seeders the training step calls."""
    from pixelcam.config import Config
    from pixelcam.train import configured_seeds

    reps, h, w = 2000, 16, 16
    cams = _distinct_cam(reps, h, w, seed=30)
    rank = cams.flatten(1).argsort(dim=1).argsort(dim=1).view(reps, h, w)  # 0 = lowest CAM
    for seeder, fraction in (("th", 0.4), ("pb", 0.2)):
        cfg = Config(seeder=seeder, n_fg=0)  # BG only: no FG/BG conflict removes a seed
        assert (cfg.th_min_p, cfg.min_p) == (0.4, 0.2)
        t = configured_seeds(cfg, cams, _gen(31))
        bg_rank = rank[t == 0]
        assert bg_rank.numel() == reps * cfg.n_bg
        k = int(fraction * h * w)
        assert int(bg_rank.max()) < k  # inside the lowest `fraction` of the pixels
        # uniform over that region: its upper half gets about half of the BG seeds
        upper = float((bg_rank >= k // 2).float().mean())
        assert upper == pytest.approx((k - k // 2) / k, abs=0.03)
