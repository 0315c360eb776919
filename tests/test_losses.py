from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixelcam.losses import partial_cross_entropy, pixelcam_objective
from pixelcam.sampler import IGNORE_INDEX, sample_seeds_pb


def _target(b: int, h: int, w: int, seeds: dict[tuple[int, int, int], int]) -> torch.Tensor:
    t = torch.full((b, h, w), IGNORE_INDEX, dtype=torch.long)
    for (i, y, x), v in seeds.items():
        t[i, y, x] = v
    return t


def test_equals_hand_computation_same_resolution() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 3, generator=g)
    seeds = {(0, 0, 0): 1, (0, 2, 1): 0, (1, 1, 1): 1, (1, 0, 2): 0, (1, 2, 2): 0}
    t = _target(2, 3, 3, seeds)
    logp = logits.log_softmax(dim=1)
    expected = -sum(logp[i, v, y, x] for (i, y, x), v in seeds.items()) / len(seeds)
    assert partial_cross_entropy(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_upsamples_low_resolution_logits() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 4, generator=g)
    cams = torch.rand(2, 16, 16, generator=g)
    t = sample_seeds_pb(cams, generator=torch.Generator().manual_seed(2))
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    logp = up.log_softmax(dim=1)
    labelled = t != IGNORE_INDEX
    picked = logp.gather(1, t.clamp(min=0).unsqueeze(1))[:, 0][labelled]
    expected = -picked.mean()
    assert partial_cross_entropy(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ignored_pixels_do_not_contribute() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 5, 5, generator=g)
    t = _target(1, 5, 5, {(0, 1, 1): 1, (0, 3, 4): 0})
    base = partial_cross_entropy(logits, t)
    changed = logits.clone()
    changed[:, :, 0, :] += 7.0  # row 0 holds no seed
    changed[:, :, 2:, 0] -= 3.0
    assert partial_cross_entropy(changed, t).item() == base.item()
    x = logits.clone().requires_grad_(True)
    partial_cross_entropy(x, t).backward()
    grad_mass = x.grad.abs().sum(dim=1)[0]
    assert torch.count_nonzero(grad_mass) == 2
    assert grad_mass[1, 1] > 0 and grad_mass[3, 4] > 0


def test_all_ignore_is_zero_with_grad() -> None:
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    t = torch.full((2, 8, 8), IGNORE_INDEX, dtype=torch.long)
    loss = partial_cross_entropy(logits, t)
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_rows_restriction() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 2, 4, 4, generator=g)
    seeds = {(0, 0, 0): 1, (1, 1, 1): 0, (1, 2, 2): 1, (2, 3, 3): 0}
    t = _target(3, 4, 4, seeds)
    rows = torch.tensor([True, False, True])
    kept = {k: v for k, v in seeds.items() if rows[k[0]]}
    expected = partial_cross_entropy(logits, _target(3, 4, 4, kept))
    assert partial_cross_entropy(logits, t, rows=rows).item() == pytest.approx(expected.item())
    only_b = partial_cross_entropy(logits[1:2], t[1:2])
    assert partial_cross_entropy(logits, t, rows=~rows).item() == pytest.approx(only_b.item())
    none = partial_cross_entropy(logits, t, rows=torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0


def test_objective_and_lam_scaling() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1])
    px = torch.randn(4, 2, 4, 4, generator=g, requires_grad=True)
    t = sample_seeds_pb(torch.rand(4, 8, 8, generator=g), n_fg=2, n_bg=2,
                        generator=torch.Generator().manual_seed(6))
    cl = F.cross_entropy(logits, labels)
    pxl = partial_cross_entropy(px, t)
    for lam in (0.0, 1.0, 2.5):
        total, parts = pixelcam_objective(logits, labels, px, t, lam=lam)
        assert total.item() == pytest.approx((cl + lam * pxl).item(), rel=1e-6)
        assert set(parts) == {"loss_cl", "loss_px"}
        for v in parts.values():
            assert isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad
        assert parts["loss_px"].item() == pytest.approx(pxl.item())
    total, _ = pixelcam_objective(logits, labels, px, t, lam=2.0)
    total.backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    rows = torch.tensor([True, True, False, False])
    _, parts_r = pixelcam_objective(logits, labels, px, t, rows=rows)
    assert parts_r["loss_px"].item() == pytest.approx(
        partial_cross_entropy(px, t, rows=rows).item()
    )


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="target"):
        partial_cross_entropy(torch.zeros(2, 2, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        partial_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
