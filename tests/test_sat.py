"""SAT on DeiT-Tiny: shapes, the location-token mask, last-3-block re-weighting, losses, weights."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy.stats import norm
from timm.layers import Attention

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.models.cams import layercam
from pixelcam.models.model import ModelOutput, count_parameters
from pixelcam.models.sat import (
    SAT_AREA_THRESHOLD,
    SATModel,
    SpatialAwareAttention,
    build_sat,
    gaussian_kernel3,
    sat_losses,
    sat_map,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def sat() -> SATModel:
    """One eval-mode model shared by the read-only tests (building DeiT costs ~1 s on 2 cores)."""
    torch.manual_seed(0)
    return build_sat(num_classes=3, pixel_head="linear").eval()


def _ones_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force m = 1: re-weighting becomes a no-op, so SAT must reduce to plain timm attention."""
    monkeypatch.setattr(
        SpatialAwareAttention,
        "token_mask",
        staticmethod(lambda logits: torch.ones_like(logits.mean(dim=1))),
    )


def _official_kernel(nsig: float = 6.0) -> np.ndarray:
    """The notes' get_kernel(3, nsig) recipe, rebuilt with scipy as an independent reference."""
    interval = (2 * nsig + 1.0) / 3
    x = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, 4)
    kern1d = np.diff(norm.cdf(x))
    raw = np.sqrt(np.outer(kern1d, kern1d))
    return raw / raw.sum()


def test_shapes_map_range_and_output(images: torch.Tensor, sat: SATModel) -> None:
    model = sat
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 3)
    assert out.features.shape == (2, 192, 14, 14)
    assert out.pixel_logits is not None and out.pixel_logits.shape == (2, 2, 14, 14)
    assert model.last_map.shape == (2, 14, 14)
    # M is a mean of sigmoids: strictly inside (0, 1)
    assert model.last_map.min() > 0.0 and model.last_map.max() < 1.0
    torch.testing.assert_close(model.classify(out.features), out.logits)

    maps, logits = sat_map(model, images, return_logits=True)
    assert maps.shape == (2, 14, 14)
    flat = maps.flatten(1)
    torch.testing.assert_close(flat.amin(1), torch.zeros(2))
    torch.testing.assert_close(flat.amax(1), torch.ones(2))
    torch.testing.assert_close(logits, out.logits)
    # class-agnostic: labels change nothing
    torch.testing.assert_close(sat_map(model, images, labels=torch.tensor([0, 2])), maps)
    low, high = model.last_map.flatten(1).aminmax(dim=1)
    expected = (model.last_map - low.view(2, 1, 1)) / (high - low).view(2, 1, 1)
    torch.testing.assert_close(maps, expected)


def test_deit_tiny_architecture(sat: SATModel) -> None:
    model = sat
    vit = model.encoder.vit
    assert vit.embed_dim == 192 and len(vit.blocks) == 12
    assert all(isinstance(b.attn, SpatialAwareAttention) for b in vit.blocks)
    assert all(b.attn.num_heads == 3 and b.attn.qkv.bias is not None for b in vit.blocks)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1 and all(m.eps == 1e-6 for m in norms)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 12), atol=1e-7)
    assert [b.attn.reweight for b in vit.blocks] == [False] * 9 + [True] * 3
    assert model.encoder.loc_token.shape == (1, 1, 192)
    assert model.encoder.loc_embed.shape == (1, 1, 192)
    assert vit.pos_embed.shape == (1, 197, 192)  # cls + 196 patches; loc has its own embed


def test_parameter_counts_match_the_paper() -> None:
    with torch.device("meta"):  # counting needs shapes only; skips the slow weight init
        model = build_sat(num_classes=2)
        plain = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0)
        with_pixel = build_sat(num_classes=2, pixel_head="linear")
    assert count_parameters(model) == 5_528_267
    deit_body = count_parameters(plain)
    conv_head = 192 * 2 * 9 + 2
    assert count_parameters(model.encoder.vit) == deit_body
    # DeiT-Tiny body + loc token + loc embed + 3x3 conv head + frozen 3x3 Gaussian
    assert count_parameters(model) == deit_body + 192 + 192 + conv_head + 9
    assert count_parameters(with_pixel.pixel_head) == 386
    assert count_parameters(with_pixel) == 5_528_653
    # Table 11 prints 5,528,651 for SAT + PixelCAM: 2 short of 5,528,267 + 386, a typo (notes 7.19)
    assert count_parameters(with_pixel) - 5_528_651 == 2


def test_mask_and_reweighting_formula(sat: SATModel) -> None:
    """m = sigmoid(mean_h(q_loc . k * scale)); in a last-3 block attention is softmax * m."""
    attn = sat.encoder.vit.blocks[10].attn
    x = torch.randn(2, 198, 192)
    with torch.no_grad():
        out = attn(x)
        b, n, c = x.shape
        q, k, v = (attn.qkv(x).view(b, n, 3, 3, 64).permute(2, 0, 3, 1, 4)).unbind(0)
        logits = (q @ k.transpose(-2, -1)) * 64**-0.5
        m = torch.sigmoid(logits[:, :, -1, :].mean(dim=1))
        weights = logits.softmax(dim=-1) * m[:, None, None, :]
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(attn.last_m, m)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # re-weighted attention rows no longer sum to 1: the mask really acts
    assert (weights.sum(-1) - 1).abs().max() > 1e-2


def test_reweighting_only_in_last_three_blocks(
    images: torch.Tensor, sat: SATModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = sat
    blocks = model.encoder.vit.blocks
    with torch.no_grad():
        inputs, real = [], []
        h = model.encoder.tokens(images[:1])
        for blk in blocks:
            inputs.append(h)
            h = blk(h)
            real.append(h)
        _ones_mask(monkeypatch)
        ones = [blk(inp) for blk, inp in zip(blocks, inputs)]
        plain = [blk.norm1(inp) for blk, inp in zip(blocks, inputs)]
        plain = [Attention.forward(blk.attn, p) for blk, p in zip(blocks, plain)]
        masked = [blk.attn(blk.norm1(inp)) for blk, inp in zip(blocks, inputs)]
    for i in range(12):
        if i < 9:  # the mask is computed but never applied
            assert torch.equal(real[i], ones[i]), f"block {i} changed with m = 1"
        else:
            assert (real[i] - ones[i]).abs().max() > 1e-3, f"block {i} ignores m"
        # with m = 1 every block is timm's own attention
        torch.testing.assert_close(masked[i], plain[i], atol=1e-5, rtol=1e-5)


def test_sat_with_unit_mask_is_timm_deit(
    images: torch.Tensor, sat: SATModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apart from m, the encoder is timm's DeiT on [cls, patches, loc]; F maps patch p to
    (p // 14, p % 14)."""
    model = sat
    with torch.device("meta"):
        plain = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0)
    # assign=True shares the SAT weights instead of copying into meta tensors
    plain.load_state_dict(model.encoder.vit.state_dict(), assign=True)
    plain.eval()
    _ones_mask(monkeypatch)
    with torch.no_grad():
        seq = model.encoder.tokens(images)
        expected = plain.norm(plain.blocks(seq))
        feats = model(images).features
    assert seq.shape == (2, 198, 192)
    loc = (model.encoder.loc_token + model.encoder.loc_embed)[0]
    torch.testing.assert_close(seq[:, -1], loc.expand(2, -1))
    torch.testing.assert_close(feats[:, :, 3, 5], expected[:, 1 + 3 * 14 + 5], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        feats, expected[:, 1:-1].transpose(1, 2).reshape(2, 192, 14, 14), atol=1e-4, rtol=1e-4
    )


def test_map_is_mean_of_last_three_masks_over_patches(images: torch.Tensor, sat: SATModel) -> None:
    model = sat
    with torch.no_grad():
        model(images)
    blocks = model.encoder.vit.blocks
    masks = [blocks[i].attn.last_m for i in (9, 10, 11)]
    assert all(m.shape == (2, 198) for m in masks)
    expected = (sum(masks) / 3)[:, 1:-1].reshape(2, 14, 14)
    torch.testing.assert_close(model.last_map, expected)
    assert not torch.allclose(blocks[8].attn.last_m[:, 1:-1].reshape(2, 14, 14), model.last_map)


def test_gaussian_kernel_matches_official_recipe(sat: SATModel) -> None:
    kernel = gaussian_kernel3()
    np.testing.assert_allclose(kernel.numpy(), _official_kernel(), atol=1e-7)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(kernel, kernel.T)
    assert not sat.smooth_kernel.requires_grad
    torch.testing.assert_close(sat.smooth_kernel[0, 0], kernel)


def test_sat_losses_hand_examples() -> None:
    losses = sat_losses(torch.zeros(2, 5, 5))
    assert set(losses) == {"loss_area", "loss_norm"}
    assert losses["loss_area"].item() == pytest.approx(SAT_AREA_THRESHOLD, abs=1e-7)
    assert losses["loss_norm"].item() == pytest.approx(0.0, abs=1e-9)

    # all-ones 4x4 map: smoothing with zero padding leaves 4 interior ones, 8 edge pixels at
    # 1 - s and 4 corners at (1 - s)^2, s = the 1D side weight of the separable kernel
    side = np.sqrt(np.diff(norm.cdf(np.linspace(-6 - 13 / 6, 6 + 13 / 6, 4))))
    s = side[0] / side.sum()
    edge, corner = 1 - s, (1 - s) ** 2
    expected_norm = (8 * edge * (1 - edge) + 4 * corner * (1 - corner)) / 16
    losses = sat_losses(torch.ones(1, 4, 4))
    assert losses["loss_area"].item() == pytest.approx(0.65, abs=1e-6)
    assert losses["loss_norm"].item() == pytest.approx(expected_norm, rel=1e-5)

    # a single centred spike: M~ is the kernel itself
    spike = torch.zeros(1, 1, 3, 3)
    spike[0, 0, 1, 1] = 1.0
    k = _official_kernel()
    losses = sat_losses(spike)
    assert losses["loss_area"].item() == pytest.approx(abs(1 / 9 - 0.35), abs=1e-6)
    assert losses["loss_norm"].item() == pytest.approx(float((k * (1 - k)).mean()), rel=1e-5)

    # the area term takes |.| of the batch mean, not a mean of per-image |.|
    batch = torch.stack([torch.zeros(3, 3), torch.ones(3, 3)])
    assert sat_losses(batch)["loss_area"].item() == pytest.approx(0.15, abs=1e-6)

    maps = torch.full((2, 6, 6), 0.5, requires_grad=True)
    total = sum(sat_losses(maps).values())
    total.backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all()
    with pytest.raises(DataError, match="shape"):
        sat_losses(torch.zeros(14, 14))


def test_one_training_step_stays_finite(images: torch.Tensor) -> None:
    model = build_sat(num_classes=2, pixel_head="linear").train()
    groups = model.param_groups(1e-3, head_lr_ratio=10.0)
    assert len(groups) == 1 and groups[0]["name"] == "all" and groups[0]["lr"] == 1e-3
    ids = [id(p) for p in groups[0]["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in groups[0]["params"]) == count_parameters(model) - 9
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=1e-4)

    out = model(images)
    labels = torch.tensor([0, 1])
    seeds = torch.full((2, 14, 14), -255, dtype=torch.long)
    seeds[:, 2, 3], seeds[:, 10, 11] = 1, 0
    loss = (
        F.cross_entropy(out.logits, labels)
        + sum(sat_losses(model.last_map).values())
        + F.cross_entropy(out.pixel_logits, seeds, ignore_index=-255)
    )
    opt.zero_grad()
    loss.backward()
    enc = model.encoder
    assert torch.isfinite(loss)
    for p in (enc.loc_token, enc.loc_embed, model.image_head.weight, model.pixel_head.net.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    opt.step()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.equal(model.smooth_kernel, before["smooth_kernel"])
    assert not torch.equal(enc.loc_token, before["encoder.loc_token"])
    with torch.no_grad():
        again = model(images)
    assert torch.isfinite(again.logits).all() and torch.isfinite(model.last_map).all()


def test_timm_deit_state_dict_loads(tmp_path, sat: SATModel) -> None:
    # a timm deit_tiny_patch16_224 state dict with its 1000-way classifier, distinct values
    state = {k: v + 0.5 for k, v in sat.encoder.vit.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 192), torch.zeros(1000)
    wrapped = tmp_path / "deit_tiny.pth"
    torch.save({"model": state}, wrapped)  # the layout of the official DeiT release
    plain = tmp_path / "deit_plain.pt"
    torch.save(state, plain)
    for path in (wrapped, plain):
        torch.manual_seed(0)
        model = build_sat(pretrained=str(path))
        own = model.encoder.vit.state_dict()
        assert set(own) == {k for k in state if not k.startswith("head.")}
        for key, value in own.items():
            assert torch.equal(value, state[key]), key
        # location token/embedding and heads stay newly initialised (same seed as `sat`)
        torch.testing.assert_close(model.encoder.loc_token, sat.encoder.loc_token)
        assert model.image_head.weight.shape == (2, 192, 3, 3)

    bad = dict(state, **{"extra.weight": torch.zeros(3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="unexpected"):
        build_sat(pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(ModelError, match="does not exist"):
        build_sat(pretrained=str(tmp_path / "missing.pth"))


def test_gradient_cams_run_on_sat(images: torch.Tensor, sat: SATModel) -> None:
    """The encoder/classify split lets LayerCAM use SAT's F and conv head."""
    model = sat
    maps, logits = layercam(model, images, torch.tensor([0, 1]), return_logits=True)
    assert maps.shape == (2, 14, 14)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images).logits)


def test_bad_inputs_raise_kit_errors(sat: SATModel) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_sat(num_classes=0)
    with pytest.raises(ConfigError, match="pixel head"):
        build_sat(pixel_head="deep")
    with pytest.raises(DataError, match="224"):
        sat(torch.randn(1, 3, 64, 64))
    with pytest.raises(ModelError, match="build_sat"):
        sat_map(torch.nn.Linear(2, 2), torch.randn(1, 3, 224, 224))
