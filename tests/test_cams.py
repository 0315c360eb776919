"""Localisation maps: LayerCAM/GradCAM++ against pytorch-grad-cam and autograd, CAM, DeepMIL,
PixelCAM, compute_maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pixelcam import maps as map_registry
from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.maps import MAPS, compute_maps
from pixelcam.methods import METHODS
from pixelcam.models.cams import (
    cam,
    deepmil,
    gradcampp,
    gradcampp_official,
    layercam,
    minmax,
    pixelcam,
)
from pixelcam.models.heads import WGAP, DeepMIL, PixelHead
from pixelcam.models.model import IMAGE_HEADS, WSOLModel, build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _LogitsOnly(nn.Module):
    """pytorch-grad-cam expects model(x) -> logits."""

    def __init__(self, model: WSOLModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _tiny_model(pixel: bool = False) -> WSOLModel:
    """Stride-1 conv encoder (F has the input's size) and a non-linear image head, so the
    gradient dS/dF varies over space and LayerCAM's element-wise weighting is exercised."""
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
    )
    head = nn.Sequential(
        nn.Conv2d(16, 16, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)
    )
    return WSOLModel(encoder, head, PixelHead(16) if pixel else None, spatial_dropout=0.1)


def _grad_cam_reference(model: WSOLModel, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    with LayerCAM(model=_LogitsOnly(model), target_layers=[model.encoder]) as ref:
        return ref(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels])


def test_minmax_per_image_and_constant_maps() -> None:
    maps = torch.randn(3, 5, 7)
    maps[1] = 4.0
    out = minmax(maps)
    assert out.shape == maps.shape and torch.isfinite(out).all()
    for i in (0, 2):
        expected = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
        torch.testing.assert_close(out[i], expected)
        assert out[i].min() == 0 and out[i].max() == 1
    assert torch.equal(out[1], torch.zeros(5, 7))


def test_layercam_matches_pytorch_grad_cam_at_feature_resolution() -> None:
    # F is 16x16 like the input, so grad-cam's cv2 resize is the identity: a direct comparison
    model = _tiny_model().eval()
    x = torch.randn(3, 3, 16, 16)
    labels = torch.tensor([0, 2, 1])
    ours = layercam(model, x, labels)
    ref = _grad_cam_reference(model, x, labels)
    assert ours.shape == (3, 16, 16)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_layercam_matches_pytorch_grad_cam_on_resnet18_after_resize() -> None:
    # grad-cam min-max scales, resizes with cv2 (bilinear, half-pixel centres) and min-max
    # scales again; we upsample with compute_maps and apply the same final min-max.
    model = build_model("resnet18", num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 0])
    ours = minmax(compute_maps("layercam", model, x, labels, size=(64, 64)))
    ref = _grad_cam_reference(model, x, labels)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_layercam_equals_definition_with_autograd_on_full_forward() -> None:
    model = _tiny_model().eval()
    x = torch.randn(2, 3, 12, 10)
    labels = torch.tensor([2, 0])
    out = model(x)
    score = out.logits[torch.arange(2), labels]
    (grads,) = torch.autograd.grad(score.sum(), out.features)
    expected = minmax(torch.relu((torch.relu(grads) * out.features).sum(1))).detach()
    maps, logits = layercam(model, x, labels, return_logits=True)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(logits, out.logits.detach())
    # the true class decides the map
    assert not torch.allclose(maps, layercam(model, x, torch.tensor([1, 1])))


def test_layercam_leaves_parameter_grads_untouched_under_no_grad() -> None:
    model = _tiny_model(pixel=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        maps = layercam(model, x, torch.tensor([0, 1]))
    assert all(p.grad is None for p in model.parameters())
    assert not maps.requires_grad
    assert maps.shape == (2, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    with pytest.raises(DataError, match="2 labels for a batch of 3"):
        layercam(model, torch.randn(3, 3, 8, 8), torch.tensor([0, 1]))


def test_layercam_with_frozen_encoder() -> None:
    model = _tiny_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    maps = layercam(model, torch.randn(1, 3, 8, 8), torch.tensor([1]))
    assert maps.shape == (1, 8, 8) and torch.isfinite(maps).all()


def test_pixelcam_is_softmax_foreground_and_class_agnostic() -> None:
    model = build_model("resnet18", pixel_head="linear").eval()
    x = torch.randn(2, 3, 48, 40)
    maps, logits = pixelcam(model, x, torch.tensor([0, 1]), return_logits=True)
    with torch.no_grad():
        out = model(x)
    expected = torch.softmax(out.pixel_logits, dim=1)[:, 1]
    assert maps.shape == (2, 6, 5) and not maps.requires_grad
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(logits, out.logits)
    assert maps.min() >= 0 and maps.max() <= 1
    # not min-max normalised, and independent of the labels
    assert maps.min() > 0 and maps.max() < 1  # min-max would have produced exact 0 and 1
    torch.testing.assert_close(pixelcam(model, x, None), maps)
    no_head = build_model("resnet18")
    with pytest.raises(ModelError, match="pixel_head='linear'"):
        pixelcam(no_head, x)


def test_compute_maps_sizes_and_dispatch() -> None:
    model = _tiny_model(pixel=True).eval()
    x = torch.randn(2, 3, 8, 6)
    labels = torch.tensor([0, 1])
    assert set(MAPS) >= {"layercam", "pixelcam"}
    low = compute_maps("pixelcam", model, x, labels)
    assert low.shape == (2, 8, 6)
    up = compute_maps("pixelcam", model, x, labels, size=(20, 15))
    assert up.shape == (2, 20, 15) and up.min() >= 0 and up.max() <= 1
    raw = pixelcam(model, x)
    ref = F.interpolate(raw[:, None], size=(20, 15), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)
    maps, logits = compute_maps("layercam", model, x, labels, size=(16, 12), return_logits=True)
    assert maps.shape == (2, 16, 12) and logits.shape == (2, 3)
    with pytest.raises(ConfigError, match="layercam, gradcampp, .*, pixelcam, negev, unet"):
        compute_maps("gradcam", model, x, labels)
    with pytest.raises(ConfigError, match="two positive integers"):
        compute_maps("pixelcam", model, x, labels, size=(0, 4))


def test_compute_maps_cleans_nan_and_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object, x: torch.Tensor, labels: object, return_logits: bool = False):
        return torch.tensor([[[float("nan"), 2.0], [-1.0, 0.25]]])

    monkeypatch.setitem(map_registry.MAPS, "broken", broken)
    out = compute_maps("broken", None, torch.zeros(1), None)
    assert torch.equal(out, torch.tensor([[[0.0, 1.0], [0.0, 0.25]]]))


def test_wgap_layercam_is_relu_of_positive_class_weights() -> None:
    # with a GAP-linear head dS/dF_k = w_ck / (h*w) everywhere, so LayerCAM is the ReLU'd CAM
    # of the positive class weights (background row skipped): an independent closed form
    enc = nn.Conv2d(3, 6, 3, padding=1)
    head = WGAP(6, 2, support_background=True)
    model = WSOLModel(enc, head).eval()
    x = torch.randn(2, 3, 7, 7)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        feats = enc(x)
        w = head.fc.weight[1:][labels].clamp_min(0)
        expected = minmax(torch.relu(torch.einsum("bk,bkhw->bhw", w, feats)))
    torch.testing.assert_close(layercam(model, x, labels), expected)


# --- GradCAM++, CAM, DeepMIL maps --------------------------------------------------------------


def _gradcampp_reference(model: WSOLModel, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    with GradCAMPlusPlus(model=_LogitsOnly(model), target_layers=[model.encoder]) as ref:
        return ref(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels])


def _sharpen(linear: nn.Linear, factor: float) -> None:
    # pytorch-grad-cam adds eps=1e-6 to the GradCAM++ denominator, which only vanishes when
    # G^2 >> 1e-6; larger class weights (as after training) put G in that regime.
    with torch.no_grad():
        linear.weight.mul_(factor)


def _wgap_model(support_background: bool = True) -> WSOLModel:
    enc = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
    return WSOLModel(enc, WGAP(6, 2, support_background=support_background)).eval()


def test_gradcampp_matches_pytorch_grad_cam_at_feature_resolution() -> None:
    model = _tiny_model().eval()
    _sharpen(model.image_head[-1], 4096.0)
    x = torch.randn(3, 3, 16, 16)
    labels = torch.tensor([0, 2, 1])
    ours = gradcampp(model, x, labels)
    assert ours.shape == (3, 16, 16)
    np.testing.assert_allclose(ours.numpy(), _gradcampp_reference(model, x, labels), atol=1e-4)
    # the paper variant is not the official one on a spatially varying gradient
    assert (ours - gradcampp_official(model, x, labels)).abs().max() > 1e-2


def test_gradcampp_matches_pytorch_grad_cam_after_resize() -> None:
    # a strided encoder and a WGAP head as in the baselines: F is 10x8 for a 40x32 image, and
    # grad-cam's cv2 resize + min-max is matched by compute_maps' resize + min-max
    enc = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    model = WSOLModel(enc, WGAP(16, 2, support_background=True)).eval()
    _sharpen(model.image_head.fc, 1000.0)
    x = torch.randn(2, 3, 40, 32)
    labels = torch.tensor([1, 0])
    ours = minmax(compute_maps("gradcampp", model, x, labels, size=(40, 32)))
    np.testing.assert_allclose(ours.numpy(), _gradcampp_reference(model, x, labels), atol=1e-4)


def test_gradcampp_closed_forms_with_wgap_head() -> None:
    # WGAP: G_k = w_yk / (h*w) at every position, so with S_k = sum_ab F_k,
    # paper: w_k = h*w * ReLU(g_k) / (2 + S_k g_k);  official: w_k = h*w * ReLU(g_k)^3
    model = _wgap_model()
    x = torch.randn(3, 3, 5, 6)
    labels = torch.tensor([1, 0, 1])
    with torch.no_grad():
        feats = model.encoder(x)
        g = model.image_head.fc.weight[1:][labels] / 30.0
        s = feats.sum(dim=(2, 3))
        w_paper = 30.0 * torch.relu(g) / (2.0 + s * g)
        w_official = 30.0 * torch.relu(g) ** 3
        paper = minmax(torch.relu(torch.einsum("bk,bkhw->bhw", w_paper, feats)))
        official = minmax(torch.relu(torch.einsum("bk,bkhw->bhw", w_official, feats)))
    torch.testing.assert_close(gradcampp(model, x, labels), paper)
    torch.testing.assert_close(gradcampp(model, x, labels, variant="paper"), paper)
    torch.testing.assert_close(gradcampp_official(model, x, labels), official)
    torch.testing.assert_close(gradcampp(model, x, labels, variant="official"), official)
    assert not torch.allclose(paper, official)


def test_gradcampp_official_equals_definition_with_autograd_on_full_forward() -> None:
    model = _tiny_model().eval()
    x = torch.randn(2, 3, 9, 7)
    labels = torch.tensor([1, 2])
    out = model(x)
    score = out.logits[torch.arange(2), labels]
    (grads,) = torch.autograd.grad(score.sum(), out.features)
    weights = (grads**2 * torch.relu(grads)).sum(dim=(2, 3))
    expected = minmax(torch.relu(torch.einsum("bk,bkhw->bhw", weights, out.features))).detach()
    maps, logits = gradcampp_official(model, x, labels, return_logits=True)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(logits, out.logits.detach())


def test_gradcampp_zero_gradient_gives_zero_map_not_nan() -> None:
    # a zero class row: G = 0 everywhere, the paper denominator is 0 -> alpha 0, map all zeros
    model = _wgap_model()
    with torch.no_grad():
        model.image_head.fc.weight[2].zero_()
    x = torch.randn(2, 3, 4, 4)
    for variant in ("paper", "official"):
        maps = gradcampp(model, x, torch.tensor([1, 1]), variant=variant)
        assert torch.equal(maps, torch.zeros(2, 4, 4))
    with pytest.raises(ConfigError, match="paper, official"):
        gradcampp(model, x, torch.tensor([1, 1]), variant="torchcam")


def test_cam_uses_class_rows_not_the_background_row() -> None:
    model = _wgap_model(support_background=True)
    x = torch.randn(2, 3, 6, 5)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        feats = model.encoder(x)
        w = model.image_head.fc.weight
        expected = minmax(torch.einsum("bk,bkhw->bhw", w[1:][labels], feats))
        official_bug = minmax(torch.einsum("bk,bkhw->bhw", w[labels], feats))
        out = model(x)
    maps, logits = cam(model, x, labels, return_logits=True)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(logits, out.logits)
    assert not torch.allclose(maps[0], official_bug[0])  # class 0 differs from the bg row
    assert maps.shape == (2, 6, 5) and torch.equal(maps.amin(dim=(1, 2)), torch.zeros(2))
    # without a background row the class rows are the whole weight
    plain = _wgap_model(support_background=False)
    with torch.no_grad():
        feats = plain.encoder(x)
        expected = minmax(torch.einsum("bk,bkhw->bhw", plain.image_head.fc.weight[labels], feats))
    torch.testing.assert_close(cam(plain, x, labels), expected)
    with pytest.raises(ModelError, match="head='wgap'"):
        cam(_deepmil_model(), x, labels)


def _deepmil_model() -> WSOLModel:
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    return WSOLModel(enc, DeepMIL(8, 2, mid_channels=4)).eval()


def test_deepmil_map_is_minmax_of_true_class_attention() -> None:
    model = _deepmil_model()
    x = torch.randn(3, 3, 7, 6)
    labels = torch.tensor([1, 0, 1])
    with torch.no_grad():
        out = model(x)
        att = model.image_head.attention(out.features)
    maps, logits = deepmil(model, x, labels, return_logits=True)
    assert maps.shape == (3, 7, 6)
    torch.testing.assert_close(maps, minmax(att[torch.arange(3), labels]))
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(maps.flatten(1).amax(1), torch.ones(3))
    assert not torch.allclose(maps, deepmil(model, x, 1 - labels))
    with pytest.raises(ModelError, match="head='deepmil'"):
        deepmil(_wgap_model(), x, labels)
    with pytest.raises(DataError, match=r"label 2 falls outside the model.s 2 classes"):
        deepmil(model, x, torch.tensor([0, 2, 1]))


def test_registry_and_baseline_heads() -> None:
    assert list(METHODS) == ["layercam", "gradcampp", "deepmil", "cam", "sat"]
    heads = {name: m.image_head for name, m in METHODS.items() if m.builder is None}
    assert heads == {"layercam": "wgap", "gradcampp": "wgap", "deepmil": "deepmil",
                     "cam": "wgap"}
    assert set(heads.values()) <= set(IMAGE_HEADS)
    assert set(MAPS) >= {"cam", "gradcampp", "gradcampp_official", "layercam", "deepmil",
                         "sat", "pixelcam", "negev", "unet"}
    assert MAPS["gradcampp"] is gradcampp and MAPS["cam"] is cam and MAPS["deepmil"] is deepmil
    assert MAPS["gradcampp_official"] is gradcampp_official
    shared = {name for name, m in METHODS.items() if m.shares_wgap_training}
    assert shared == {"cam", "gradcampp", "layercam"}
    assert [name for name, m in METHODS.items() if not m.negev_row] == ["sat"]


@pytest.mark.parametrize(
    "method", ["cam", "gradcampp", "gradcampp_official", "layercam", "deepmil"]
)
def test_every_baseline_map_shape_range_and_untouched_grads(method: str) -> None:
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    owner = METHODS["gradcampp" if method == "gradcampp_official" else method]
    head = DeepMIL(8, 2, mid_channels=4) if owner.image_head == "deepmil" else WGAP(8, 2)
    model = WSOLModel(enc, head, PixelHead(8)).eval()
    x = torch.randn(2, 3, 10, 12)
    labels = torch.tensor([0, 1])
    maps, logits = compute_maps(method, model, x, labels, size=(10, 12), return_logits=True)
    assert maps.shape == (2, 10, 12) and logits.shape == (2, 2)
    assert maps.min() >= 0 and maps.max() <= 1 and not maps.requires_grad
    low = MAPS[method](model, x, labels)
    assert low.shape == (2, 5, 6)
    torch.testing.assert_close(low.flatten(1).amax(1), torch.ones(2))
    torch.testing.assert_close(low.flatten(1).amin(1), torch.zeros(2))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(DataError, match="2 labels for a batch of 3"):
        MAPS[method](model, torch.randn(3, 3, 10, 12), labels)
    with pytest.raises(DataError, match="labels=None"):
        MAPS[method](model, x, None)
