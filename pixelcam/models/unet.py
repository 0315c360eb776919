"""The fully supervised U-Net upper bound of the paper's tables, and the decoder NEGEV reuses.

The architecture is the usual "U-Net on a ResNet encoder": the timm encoder returns the outputs
of its 5 stages (ResNet: act1 at stride 2, layer1..layer4 at strides 4..32); the deepest one
enters the decoder, the 4 others are skip connections, and the 5th decoder block has no skip
(it only brings stride 2 back to stride 1). Each block upsamples (nearest) to its skip's size,
concatenates the skip, then applies two 3x3 conv + BN + ReLU; a 3x3 conv gives 2 logits (BG, FG).

With ResNet-50 and decoder channels (256, 128, 64, 32, 16) this counts 32,521,250 parameters:
encoder 23,508,032 + decoder 9,012,928 + head 290, exactly the U-Net row of the paper's
Table 11 (so the authors' U-Net is this layout, conv biases off where BN follows).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.hub import pretrained_tag
from pixelcam.models.backbones import weight_source

__all__ = [
    "DEFAULT_DECODER_CHANNELS",
    "UNet",
    "UNetDecoder",
    "segmentation_loss",
    "unet_map",
]

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    # no conv bias: the BN that follows has its own shift (and the paper's count needs it so)
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class _DecoderBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *_conv_bn_relu(in_ch + skip_ch, out_ch), *_conv_bn_relu(out_ch, out_ch)
        )

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            # upsampling to the skip's size (not a fixed x2) also serves encoders whose deep
            # stages share one stride (WSOL ResNets: layer2..layer4 all at stride 8) and inputs
            # that are not multiples of 32
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """Stage outputs (shallow -> deep) to 2-channel logits at the input size.

    Shared by :class:`UNet` and NEGEV so that both count the same decoder parameters.
    ``stage_channels`` lists the channels of the encoder stages from shallow to deep; there must
    be one decoder block per stage (the deepest stage is the input, the others the skips, the
    last block has none).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        align_corners: bool = False,
        num_outputs: int = 2,
    ) -> None:
        super().__init__()
        stage_channels = [int(c) for c in stage_channels]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != len(stage_channels) or min(decoder_channels, default=0) < 1:
            raise ConfigError(
                f"decoder_channels={tuple(decoder_channels)} must hold {len(stage_channels)} "
                f"positive widths, one per encoder stage; e.g. {DEFAULT_DECODER_CHANNELS}."
            )
        skips = stage_channels[-2::-1] + [0]  # deep -> shallow, then no skip
        ins = [stage_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            _DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels)
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_outputs, kernel_size=3, padding=1)
        self.align_corners = bool(align_corners)

    def forward(self, stages: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        if len(stages) != len(self.blocks):
            raise ValueError(
                f"UNetDecoder: expected {len(self.blocks)} stage outputs, got {len(stages)}"
            )
        skips: list[Tensor | None] = [*stages[-2::-1], None]
        x = stages[-1]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        logits = self.head(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(
                logits, size=size, mode="bilinear", align_corners=self.align_corners
            )
        return logits


def _build_stage_encoder(name: str, pretrained: str) -> nn.Module:
    """timm's features_only net (normal strides), weights as in create_encoder:
    false/timm/package/file.

    "timm" loads the backbone's pinned tag (pixelcam.weights.PRETRAINED_TAGS, e.g.
    resnet50.tv_in1k) from the local Hugging Face cache only, never downloading; "package" the
    ImageNet weights a pip package ships (EfficientNet-Lite0, backbones.PACKAGED_WEIGHTS).
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ModelError(
            f"unknown U-Net encoder {name!r}; use a timm CNN name such as resnet50 or resnet18."
        )
    source = weight_source(name, pretrained)
    try:
        if source.cached is None:
            net = timm.create_model(name, pretrained=False, features_only=True)
        else:
            net = timm.create_model(
                pretrained_tag(name),
                pretrained=True,
                pretrained_cfg_overlay={"file": str(source.cached)},
                features_only=True,
            )
    except Exception as exc:  # timm raises many types (bad checkpoint, unsupported option)
        if source.cached is not None:
            raise source.cache_error(name, exc) from exc
        raise ModelError(
            f"cannot build a features_only {name!r} ({type(exc).__name__}); use a timm CNN "
            "such as resnet50."
        ) from exc
    source.load_into(net, name)
    return net


class UNet(nn.Module):
    """Fully supervised segmentation model: the localisation upper bound of Tables 1, 6 and 11.

    ``forward(x)`` returns logits (B,2,H,W) (channel 1 = FG) at the input size. ``pretrained``
    is "false", "timm" (the pinned tag's cached weights, never a download), "package" (weights
    a pip package ships: EfficientNet-Lite0) or a local weight file.
    """

    def __init__(
        self,
        encoder_name: str = "resnet50",
        pretrained: str = "false",
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.encoder = _build_stage_encoder(encoder_name, pretrained)
        channels = self.encoder.feature_info.channels()
        self.decoder = UNetDecoder(channels, decoder_channels, align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x), size=(x.shape[-2], x.shape[-1]))


def unet_map(
    model: nn.Module, x: Tensor, labels: Tensor | None = None, return_logits: bool = False
) -> Tensor | tuple[Tensor, None]:
    """U-Net localisation map: the FG softmax at full resolution (B,H,W), class-agnostic.

    Same calling convention as the CAM functions so evaluation can treat U-Net as one more
    method; U-Net has no image classifier, so with ``return_logits`` the logits are None (the
    caller must skip classification accuracy, as the paper's tables do with "n/a").
    """
    with torch.no_grad():
        maps = torch.softmax(model(x), dim=1)[:, 1]
    return (maps, None) if return_logits else maps


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Pixel CE on full masks: U-Net is the fully supervised upper bound, so every pixel counts."""
    if logits.ndim != 4 or masks.ndim != 3 or logits.shape[0] != masks.shape[0]:
        raise ValueError(
            f"segmentation_loss: expected logits (B,2,H,W) and masks (B,H,W), got "
            f"{tuple(logits.shape)} and {tuple(masks.shape)}"
        )
    masks = masks.long()
    if masks.numel() and bool((masks.min() < 0) | (masks.max() > 1)):
        raise DataError(
            "segmentation_loss: masks must hold only 0 (BG) and 1 (FG); binarise the mask "
            "files (e.g. mask > 0) before training the U-Net."
        )
    if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks)
