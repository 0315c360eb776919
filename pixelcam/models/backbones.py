"""timm encoders at the WSOL output stride, and offline loading of local weight files.

ResNets follow the WSOL convention of the official code: the strided convolutions of the first
block of layer3/layer4 get stride 1 *without* dilation, so ResNet-50 at 224 gives F of
2048 x 28 x 28 (output stride 8). Other timm CNNs go through timm's own feature-extraction
wrapper, which reaches the same output stride by dilation.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from pixelcam.errors import ConfigError, ModelError, PixelCamError

KNOWN_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_lite0",
    "mobilenetv3_small_100",
)
OUTPUT_STRIDES = (8, 16, 32)
# Keys of an ImageNet classifier that an encoder never has; a checkpoint may carry them.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")


@dataclass
class EncoderSpec:
    """What a head needs to know about an encoder: its channel count and its output stride."""

    name: str
    out_channels: int
    stride: int


class Encoder(nn.Module):
    """A timm network seen as x (B,3,H,W) -> F (B,d,H/os,W/os): the last stage's feature map.

    The wrapped timm module lives in `net`, so `load_weights` can use timm's own key names.
    """

    def __init__(
        self, name: str, net: nn.Module, kind: str, out_channels: int, stride: int, last_stage: str
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.kind = kind  # "resnet" (forward_features) or "features" (timm features_only)
        self.out_channels = int(out_channels)
        self.output_stride = int(stride)
        self.last_stage_name = last_stage

    @property
    def spec(self) -> EncoderSpec:
        """The encoder's shape contract, for building heads without a forward pass."""
        return EncoderSpec(self.name, self.out_channels, self.output_stride)

    @property
    def last_stage(self) -> nn.Module:
        """The deepest stage, which the optimiser runs at the head learning rate (notes 4.2)."""
        return self.net.get_submodule(self.last_stage_name)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "resnet":
            return self.net.forward_features(x)
        return self.net(x)[-1]


def _unknown_backbone(name: str) -> ModelError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ModelError(
        f"unknown backbone {name!r}{hint}; use a timm CNN name such as "
        f"{', '.join(KNOWN_BACKBONES)}."
    )


def _unstride_first_block(block: nn.Module) -> None:
    """Remove the stride-2 step of a ResNet stage's first block without adding dilation."""
    for child_name, child in list(block.named_modules()):
        if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
            child.stride = (1, 1)
        elif isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)) and child.stride not in (1, (1, 1)):
            # avg-down shortcuts (resnet*d) pool by 2; with stride 1 the pool would shrink the map
            block.set_submodule(child_name, nn.Identity())


def _build_resnet(name: str, pretrained: bool, output_stride: int) -> Encoder:
    net = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    stages = {8: ("layer3", "layer4"), 16: ("layer4",), 32: ()}[output_stride]
    for stage in stages:
        _unstride_first_block(getattr(net, stage)[0])
    return Encoder(name, net, "resnet", net.num_features, output_stride, "layer4")


def _build_features(name: str, pretrained: bool, output_stride: int) -> Encoder:
    net = timm.create_model(
        name,
        pretrained=pretrained,
        features_only=True,
        out_indices=(-1,),
        output_stride=output_stride,
    )
    info = net.feature_info
    module_name = info.module_name()[-1]
    # FeatureListNet flattens "stages.3" into a child called "stages_3"
    for candidate in (module_name, module_name.replace(".", "_", 1)):
        try:
            net.get_submodule(candidate)
        except AttributeError:
            continue
        module_name = candidate
        break
    else:
        raise ModelError(
            f"backbone {name!r}: cannot find its last stage {module_name!r} in timm's "
            "feature wrapper; use a ResNet or an EfficientNet/MobileNet backbone."
        )
    return Encoder(name, net, "features", info.channels()[-1], info.reduction()[-1], module_name)


def create_encoder(name: str, pretrained: str = "false", output_stride: int = 8) -> nn.Module:
    """Build the WSOL encoder; `pretrained` is "false", "timm" (cached timm weights) or a file."""
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"output_stride={output_stride!r} is not supported; use one of "
            f"{', '.join(map(str, OUTPUT_STRIDES))}."
        )
    if not isinstance(name, str) or not timm.is_model(name):
        raise _unknown_backbone(str(name))
    source = str(pretrained).strip()
    use_timm = source.lower() == "timm"
    weights_file = None
    if source.lower() not in ("false", "timm"):
        weights_file = Path(source).expanduser()
        if not weights_file.is_file():
            raise ModelError(
                f"pretrained weight file {str(weights_file)!r} does not exist; give "
                "an existing .pth/.pt/.safetensors path, 'timm' or 'false'."
            )
    builder = (
        _build_resnet if timm.models.is_model_in_modules(name, ["resnet"]) else _build_features
    )
    try:
        encoder = builder(name, use_timm, output_stride)
    except PixelCamError:
        raise
    except Exception as exc:  # timm raises many types (hub, network, unsupported option)
        if use_timm:
            raise ModelError(
                f"cannot load timm's pretrained weights for {name!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); download them on a machine "
                "with internet into the HF cache, or pass a local weight file path."
            ) from exc
        raise ModelError(
            f"timm cannot build backbone {name!r} with output_stride={output_stride} "
            f"({type(exc).__name__}); use one of {', '.join(KNOWN_BACKBONES)}."
        ) from exc
    if weights_file is not None:
        load_weights(encoder, weights_file)
    return encoder


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelError(
            f"weight file {str(path)!r} does not exist; give an existing "
            ".pth/.pt/.safetensors path."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot read weight file {str(path)!r} ({type(exc).__name__}); save a "
            "plain state_dict with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(
            f"weight file {str(path)!r} holds no state_dict of tensors; save one "
            "with torch.save(model.state_dict(), path)."
        )
    return obj


def _pruned_keys(encoder: Encoder) -> set[str]:
    """Keys of the full timm net that its feature wrapper drops (e.g. conv_head, final norm)."""
    try:
        with torch.device("meta"):
            full = timm.create_model(encoder.name, pretrained=False)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        # only an allowance for extra keys: without it they are reported as unexpected
        return set()
    return set(full.state_dict())


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint strictly (classifier keys aside), for machines without internet."""
    path = Path(path).expanduser()
    raw = _read_state_dict(path)
    target = module.net if isinstance(module, Encoder) else module
    own = target.state_dict()
    allowed_extra = (
        _pruned_keys(module) if isinstance(module, Encoder) and module.kind == "features" else set()
    )
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in raw.items():
        name = key.removeprefix("module.")
        if isinstance(module, Encoder):
            name = name.removeprefix("net.")
        if name.startswith(_CLASSIFIER_PREFIXES):
            continue
        for candidate in (name, name.replace(".", "_", 1)):
            if candidate in own:
                mapped[candidate] = value
                break
        else:
            if name not in allowed_extra:
                unexpected.append(key)
    # BatchNorm fills a missing num_batches_tracked itself (old torchvision checkpoints lack it)
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise ModelError(
            f"weight file {str(path)!r} does not match the encoder: "
            f"{'; '.join(parts)}; use weights of the same architecture."
        )
    try:
        target.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else "shape mismatch"
        raise ModelError(
            f"weight file {str(path)!r} does not fit the encoder ({detail}); "
            "use weights of the same architecture."
        ) from exc
