"""Localisation maps: LayerCAM against pytorch-grad-cam and autograd, PixelCAM, compute_maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.models import cams
from pixelcam.models.cams import MAPS, compute_maps, layercam, minmax, pixelcam
from pixelcam.models.heads import WGAP, PixelHead
from pixelcam.models.model import WSOLModel, build_model


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
    with pytest.raises(ConfigError, match="layercam, pixelcam"):
        compute_maps("gradcam", model, x, labels)
    with pytest.raises(ConfigError, match="two positive integers"):
        compute_maps("pixelcam", model, x, labels, size=(0, 4))


def test_compute_maps_cleans_nan_and_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object, x: torch.Tensor, labels: object, return_logits: bool = False):
        return torch.tensor([[[float("nan"), 2.0], [-1.0, 0.25]]])

    monkeypatch.setitem(cams.MAPS, "broken", broken)
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
