"""Encoders, heads (WGAP, gated DeepMIL, pixel) and WSOLModel: shapes, the paper's parameter
counts, weights, lr groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from pixelcam.errors import ConfigError, ModelError
from pixelcam.models import backbones
from pixelcam.models.backbones import EncoderSpec, create_encoder, load_weights
from pixelcam.models.heads import WGAP, DeepMIL, PixelHead
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


def test_efficientnet_f_is_the_activated_head_conv() -> None:
    # the last block ends in a linear projection (signed); F is the ReLU6 head conv after it
    enc = create_encoder("efficientnet_lite0", output_stride=8).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert enc.out_channels == 1280 and enc.output_stride == 8
    assert feats.shape == (1, 1280, 8, 8)
    assert feats.min() >= 0 and feats.max() <= 6
    assert enc.last_stage_name == ("blocks.6", "conv_head", "bn2")
    last = {id(p) for p in enc.last_stage.parameters()}
    expected = {id(p) for m in (enc.net.blocks[6], enc.net.conv_head, enc.net.bn2)
                for p in m.parameters()}
    assert last == expected


def test_feature_stage_ends_the_encoder_early() -> None:
    enc = create_encoder("efficientnet_lite0", output_stride=16, feature_stage=3).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert enc.out_channels == 112 and enc.output_stride == 16 and feats.shape == (1, 112, 4, 4)
    assert enc.last_stage_name == "blocks.4"
    # the truncated wrapper holds no deeper layer
    assert not any(n.startswith(("blocks.5", "blocks.6", "conv_head")) for n, _ in
                   enc.net.named_parameters())
    with pytest.raises(ConfigError, match="feature_stage=3 is not supported for 'resnet18'"):
        create_encoder("resnet18", feature_stage=3)


def test_bad_backbone_and_stride_raise_actionable_errors() -> None:
    with pytest.raises(ModelError, match="resnet50"):
        create_encoder("resnet_does_not_exist")
    with pytest.raises(ConfigError, match="output_stride"):
        create_encoder("resnet18", output_stride=4)
    with pytest.raises(ModelError, match="does not exist.*'timm', 'package' or 'false'"):
        create_encoder("resnet18", pretrained="/nonexistent/weights.pth")


def test_timm_pretrained_failure_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> nn.Module:
        assert kwargs["pretrained"] is True
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    # the pinned tag's file is "cached"; timm failing on it is wrapped in one line
    cached = Path("/cache/model.safetensors")
    monkeypatch.setattr(backbones, "timm_weights_file", lambda tag: cached)
    monkeypatch.setattr(backbones.timm, "create_model", offline)
    with pytest.raises(ModelError, match="resnet18.tv_in1k.*local weight file"):
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
    net = model.encoder.net
    last = {id(p) for m in (net.blocks[6], net.conv_head, net.bn2) for p in m.parameters()}
    head = {id(p) for p in model.image_head.parameters()}
    assert fast == last | head
    staged = build_model("mobilenetv3_small_100", feature_stage=2)
    fast = {id(p) for p in staged.param_groups(0.1)[1]["params"]}
    assert fast == ({id(p) for p in staged.encoder.last_stage.parameters()}
                    | {id(p) for p in staged.image_head.parameters()})


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


# --- gated DeepMIL head -------------------------------------------------------------------------


def test_paper_parameter_counts_resnet50_deepmil() -> None:
    d, mid, k = 2048, 128, 2
    # tanh branch + sigmoid gate (1x1 convs d->128), attention conv 128->K, K Linear(d, 1)
    expected_head = 2 * (d * mid + mid) + (mid * k + k) + k * (d + 1)
    assert expected_head == 528_900 == 24_036_932 - 23_508_032
    model = build_model("resnet50", num_classes=2, head="deepmil")
    assert isinstance(model.image_head, DeepMIL) and model.image_head.gated
    assert count_parameters(model.image_head) == 528_900
    assert count_parameters(model) == 24_036_932
    pixel = build_model("resnet50", num_classes=2, head="deepmil", pixel_head="linear")
    assert count_parameters(pixel) == 24_041_030
    # the ungated head only lacks the gate conv
    assert count_parameters(DeepMIL(d, k, gated=False)) == 528_900 - (d * mid + mid)


def test_deepmil_attention_sums_to_one_over_positions() -> None:
    head = DeepMIL(16, 3, mid_channels=8)
    feats = torch.randn(4, 16, 5, 7)
    att = head.attention(feats)
    assert att.shape == (4, 3, 5, 7) and (att > 0).all()
    torch.testing.assert_close(att.sum(dim=(2, 3)), torch.ones(4, 3))
    logits, att2 = head.forward_with_attention(feats)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(att2, att)
    torch.testing.assert_close(head(feats), logits)
    # xavier weights, zero biases, as the official initialize_head does for the image head
    assert all(torch.count_nonzero(m.bias) == 0 for m in head.modules() if hasattr(m, "bias"))


def test_deepmil_logits_equal_a_hand_computation() -> None:
    # d=2, mid=1, K=2, one image with three positions; every weight set by hand
    head = DeepMIL(2, 2, mid_channels=1, gated=True)
    with torch.no_grad():
        head.hidden.weight.copy_(torch.tensor([0.5, -1.0]).view(1, 2, 1, 1))
        head.hidden.bias.fill_(0.1)
        head.gate.weight.copy_(torch.tensor([2.0, 0.3]).view(1, 2, 1, 1))
        head.gate.bias.fill_(-0.2)
        head.score.weight.copy_(torch.tensor([1.5, -2.0]).view(2, 1, 1, 1))
        head.score.bias.copy_(torch.tensor([0.0, 0.4]))
        head.classifiers[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.classifiers[0].bias.fill_(0.5)
        head.classifiers[1].weight.copy_(torch.tensor([[-3.0, 0.25]]))
        head.classifiers[1].bias.fill_(-1.0)
    positions = [(0.2, 1.0), (-0.7, 0.4), (1.3, -0.5)]
    feats = torch.tensor(positions).T.reshape(1, 2, 1, 3)

    def sigmoid(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    u = [
        math.tanh(0.5 * f0 - 1.0 * f1 + 0.1) * sigmoid(2.0 * f0 + 0.3 * f1 - 0.2)
        for f0, f1 in positions
    ]
    expected = []
    for s, t, (w0, w1), b in [(1.5, 0.0, (1.0, 2.0), 0.5), (-2.0, 0.4, (-3.0, 0.25), -1.0)]:
        scores = [math.exp(s * up + t) for up in u]
        a = [e / sum(scores) for e in scores]
        z0 = sum(ap * f0 for ap, (f0, _) in zip(a, positions))
        z1 = sum(ap * f1 for ap, (_, f1) in zip(a, positions))
        expected.append(w0 * z0 + w1 * z1 + b)
    with torch.no_grad():
        logits = head(feats)
    torch.testing.assert_close(logits, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_build_model_deepmil_ignores_support_background() -> None:
    model = build_model("resnet18", head="deepmil", support_background=True).eval()
    assert isinstance(model.image_head, DeepMIL) and not model.image_head.support_background
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (2, 2) and out.features.shape == (2, 512, 4, 4)
    torch.testing.assert_close(out.logits, model.image_head(out.features))
    fast = {id(p) for p in model.param_groups(0.1)[1]["params"]}
    assert {id(p) for p in model.image_head.parameters()} <= fast
    with pytest.raises(ConfigError, match="wgap, deepmil"):
        build_model("resnet18", head="mil")
    with pytest.raises(ConfigError, match="mid_channels"):
        DeepMIL(8, 2, mid_channels=0)


def test_make_optimizer_takes_the_phase_lr() -> None:
    from pixelcam.config import load_config
    from pixelcam.train import make_optimizer

    model = build_model("resnet18", pixel_head="linear")
    cfg = load_config(None, {"lr": 0.01, "head_lr_ratio": 10, "pixelcam_lr": 0.001})
    assert [g["lr"] for g in make_optimizer(model, cfg).param_groups] == [0.01, 0.1]
    assert [g["lr"] for g in make_optimizer(model, cfg, cfg.phase_lr).param_groups] == \
        [0.001, 0.01]
    assert cfg.replace(pixelcam_lr=0).phase_lr == 0.01
