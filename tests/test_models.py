"""Encoders, heads and WSOLModel: shapes, the paper's parameter counts, weights, lr groups."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from pixelcam.errors import ConfigError, ModelError
from pixelcam.models import backbones
from pixelcam.models.backbones import EncoderSpec, create_encoder, load_weights
from pixelcam.models.heads import WGAP, PixelHead
from pixelcam.models.model import ModelOutput, WSOLModel, build_model, count_parameters


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_resnet50_wsol_feature_map_at_224() -> None:
    enc = create_encoder("resnet50").eval()
    assert enc.out_channels == 2048 and enc.output_stride == 8
    assert enc.spec == EncoderSpec("resnet50", 2048, 8)
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 2048, 28, 28)
    # the WSOL change is stride 1 without dilation (not timm's dilated output_stride route)
    for stage in (enc.net.layer3, enc.net.layer4):
        assert stage[0].conv2.stride == (1, 1) and stage[0].conv2.dilation == (1, 1)
        assert stage[0].downsample[0].stride == (1, 1)


def test_paper_parameter_counts_resnet50() -> None:
    assert count_parameters(create_encoder("resnet50")) == 23_508_032
    baseline = build_model("resnet50", num_classes=2, support_background=True)
    assert count_parameters(baseline) == 23_514_179
    assert count_parameters(baseline.image_head) == 2048 * 3 + 3
    pixel = build_model("resnet50", num_classes=2, pixel_head="linear")
    assert count_parameters(pixel) == 23_518_277
    assert count_parameters(pixel.pixel_head) == 4_098


@pytest.mark.parametrize(("output_stride", "size"), [(8, (64, 96)), (16, (64, 96)), (32, (64, 96))])
def test_resnet18_output_stride(output_stride: int, size: tuple[int, int]) -> None:
    enc = create_encoder("resnet18", output_stride=output_stride).eval()
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, *size))
    assert feats.shape == (2, 512, size[0] // output_stride, size[1] // output_stride)
    assert enc.output_stride == output_stride and enc.out_channels == 512


def test_efficientnet_lite0_builds_and_returns_last_map() -> None:
    enc = create_encoder("efficientnet_lite0", output_stride=8).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert enc.out_channels == 320 and enc.output_stride == 8
    assert feats.shape == (1, 320, 8, 8)
    assert enc.last_stage_name == "blocks.6"


def test_bad_backbone_and_stride_raise_actionable_errors() -> None:
    with pytest.raises(ModelError, match="resnet50"):
        create_encoder("resnet_does_not_exist")
    with pytest.raises(ConfigError, match="output_stride"):
        create_encoder("resnet18", output_stride=4)
    with pytest.raises(ModelError, match="does not exist"):
        create_encoder("resnet18", pretrained="/nonexistent/weights.pth")


def test_timm_pretrained_failure_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> nn.Module:
        assert kwargs["pretrained"] is True
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(backbones.timm, "create_model", offline)
    with pytest.raises(ModelError, match="local weight file"):
        create_encoder("resnet18", pretrained="timm")


def _outputs(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return enc.eval()(x)


def test_load_weights_round_trip(tmp_path) -> None:
    x = torch.randn(1, 3, 32, 32)
    src = create_encoder("resnet18")
    torch.save(src.state_dict(), tmp_path / "enc.pth")
    dst = create_encoder("resnet18")
    assert not torch.equal(_outputs(src, x), _outputs(dst, x))
    load_weights(dst, tmp_path / "enc.pth")
    assert torch.equal(_outputs(src, x), _outputs(dst, x))
    # the same file through the factory
    assert torch.equal(
        _outputs(src, x), _outputs(create_encoder("resnet18", str(tmp_path / "enc.pth")), x)
    )


def test_load_weights_accepts_wrapped_prefixed_and_safetensors(tmp_path) -> None:
    x = torch.randn(1, 3, 32, 32)
    src = create_encoder("resnet18")
    # a DataParallel-style ImageNet checkpoint in timm/torchvision key names, with its classifier
    state = {f"module.{k}": v for k, v in src.net.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)
    state["module.fc.bias"] = torch.zeros(1000)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    dst = create_encoder("resnet18")
    load_weights(dst, tmp_path / "ckpt.pt")
    assert torch.equal(_outputs(src, x), _outputs(dst, x))

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    dst2 = create_encoder("resnet18", pretrained=str(tmp_path / "w.safetensors"))
    assert torch.equal(_outputs(src, x), _outputs(dst2, x))


def test_load_full_timm_checkpoint_into_feature_encoder(tmp_path) -> None:
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")
    enc = create_encoder("efficientnet_lite0", pretrained=str(tmp_path / "full.pth"))
    loaded = enc.net.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], full.state_dict()["conv_stem.weight"])
    assert torch.equal(
        loaded["blocks.6.0.conv_pwl.weight"], full.state_dict()["blocks.6.0.conv_pwl.weight"]
    )


def test_load_weights_errors_name_the_file(tmp_path) -> None:
    enc = create_encoder("resnet18")
    with pytest.raises(ModelError, match="missing.pth"):
        load_weights(enc, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        load_weights(enc, tmp_path / "junk.pth")
    torch.save(create_encoder("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ModelError, match=r"r34\.pth.*unexpected keys \(e\.g\. net\.layer1\.2"):
        load_weights(enc, tmp_path / "r34.pth")
    bad = enc.state_dict()
    bad["net.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ModelError, match="size mismatch"):
        load_weights(enc, tmp_path / "shape.pth")
    partial = enc.state_dict()
    del partial["net.layer4.1.bn2.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"1 missing keys \(e\.g\. layer4\.1\.bn2\.weight\)"):
        load_weights(enc, tmp_path / "partial.pth")


def test_wgap_drops_background_logit() -> None:
    feats = torch.randn(3, 8, 5, 4)
    head = WGAP(8, 2, support_background=True)
    assert head.fc.out_features == 3 and torch.count_nonzero(head.fc.bias) == 0
    full = head.fc(feats.mean(dim=(2, 3)))
    out = head(feats)
    assert out.shape == (3, 2)
    torch.testing.assert_close(out, full[:, 1:])
    plain = WGAP(8, 2, support_background=False)
    assert plain.fc.out_features == 2
    torch.testing.assert_close(plain(feats), plain.fc(feats.mean(dim=(2, 3))))


def test_pixel_heads() -> None:
    feats = torch.randn(2, 64, 6, 5)
    linear = PixelHead(64)
    assert isinstance(linear.net, nn.Conv2d) and count_parameters(linear) == 64 * 2 + 2
    assert linear(feats).shape == (2, 2, 6, 5)
    deep = PixelHead(64, kind="multi_layer")
    convs = [m for m in deep.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 32), (32, 16), (16, 8), (8, 2)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in deep.modules()) == 3
    assert deep(feats).shape == (2, 2, 6, 5)
    with pytest.raises(ConfigError, match="linear, multi_layer"):
        PixelHead(64, kind="mlp")
    with pytest.raises(ConfigError, match="wgap"):
        build_model("resnet18", head="gap")


def test_param_groups_cover_every_trainable_param_once() -> None:
    model = build_model("resnet18", pixel_head="linear")
    groups = model.param_groups(1e-3, head_lr_ratio=10.0)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    fast = {id(p) for p in groups[1]["params"]}
    expected_fast = [model.encoder.net.layer4, model.image_head, model.pixel_head]
    assert fast == {id(p) for m in expected_fast for p in m.parameters()}
    assert not fast & {id(p) for p in model.encoder.net.layer3.parameters()}
    # frozen parameters are left out of both groups
    for p in model.encoder.net.conv1.parameters():
        p.requires_grad_(False)
    ids = {id(p) for g in model.param_groups(1e-3) for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}


def test_param_groups_for_feature_backbone_use_last_stage() -> None:
    model = build_model("efficientnet_lite0")
    fast = {id(p) for p in model.param_groups(0.1)[1]["params"]}
    last = {id(p) for p in model.encoder.net.blocks[6].parameters()}
    head = {id(p) for p in model.image_head.parameters()}
    assert fast == last | head


def test_forward_dropout_only_in_train_and_pixel_head_on_undropped_features() -> None:
    model = build_model("resnet18", pixel_head="linear", spatial_dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert isinstance(a, ModelOutput)
    assert torch.equal(a.logits, b.logits)
    torch.testing.assert_close(a.logits, model.image_head(a.features))
    model.train()
    out = model(x)
    assert not torch.allclose(out.logits, model.image_head(out.features))
    torch.testing.assert_close(out.pixel_logits, model.pixel_head(out.features))
    # the pixel head is not detached: its loss reaches the encoder
    out.pixel_logits.sum().backward()
    assert model.encoder.net.conv1.weight.grad is not None
    assert model.image_head.fc.weight.grad is None


def test_wsol_model_without_pixel_head_and_bad_dropout() -> None:
    enc = nn.Conv2d(3, 4, 1)
    model = WSOLModel(enc, WGAP(4, 3, support_background=False), None, spatial_dropout=0.0)
    out = model(torch.randn(2, 3, 5, 5))
    assert out.pixel_logits is None and out.logits.shape == (2, 3)
    # an encoder without a last_stage: everything but the heads stays at the base lr
    groups = model.param_groups(1.0)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in enc.parameters()}
    with pytest.raises(ConfigError, match="spatial_dropout"):
        WSOLModel(enc, WGAP(4, 3), spatial_dropout=1.0)
