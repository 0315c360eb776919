"""WSOLModel: one encoder, an image head and an optional PixelCAM pixel head on the same F."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from pixelcam.errors import ConfigError
from pixelcam.models.backbones import create_encoder
from pixelcam.models.heads import WGAP, DeepMIL, PixelHead

IMAGE_HEADS = ("wgap", "deepmil")


class ModelOutput(NamedTuple):
    """Everything a loss or a map needs from one forward pass (F is kept for gradient CAMs)."""

    logits: Tensor
    features: Tensor
    pixel_logits: Tensor | None


class WSOLModel(nn.Module):
    """Encoder -> F; image logits from spatially-dropped F; pixel logits from the un-dropped F."""

    has_pixel_features = True  # `encoder(x)` is F, the map the pixel head reads (analysis)

    def __init__(
        self,
        encoder: nn.Module,
        image_head: nn.Module,
        pixel_head: nn.Module | None = None,
        spatial_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(spatial_dropout) < 1.0:
            raise ConfigError(f"spatial_dropout={spatial_dropout!r} must lie in [0, 1).")
        self.encoder = encoder
        self.image_head = image_head
        self.pixel_head = pixel_head
        # whole-channel dropout, active in train mode only (official STDClModel.forward)
        self.dropout = nn.Dropout2d(p=float(spatial_dropout))

    def classify(self, features: Tensor) -> Tensor:
        """Image logits from F: lets gradient CAMs differentiate w.r.t. F without the encoder."""
        return self.image_head(self.dropout(features))

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.encoder(x)
        logits = self.classify(features)
        pixel_logits = self.pixel_head(features) if self.pixel_head is not None else None
        return ModelOutput(logits, features, pixel_logits)

    def _last_stage(self) -> nn.Module | None:
        return getattr(self.encoder, "last_stage", None)

    def param_groups(self, lr: float, head_lr_ratio: float = 10.0) -> list[dict]:
        """Two SGD groups as in the official code: last encoder stage + heads at lr*ratio.

        The last stage is `encoder.last_stage`: `layer4` for ResNets, and for other timm nets the
        module that timm's feature_info names for the returned feature map (e.g. `blocks.6` of
        efficientnet_lite0). The pixel head sits in the fast group too, because the official
        name pattern 'classification_head.' also matches 'pixel_wise_classification_head.'.
        """
        fast_modules = [self.image_head]
        if self.pixel_head is not None:
            fast_modules.append(self.pixel_head)
        last = self._last_stage()
        if last is not None:
            fast_modules.append(last)
        fast_ids = {id(p) for m in fast_modules for p in m.parameters()}
        base, fast = [], []
        for p in self.parameters():  # parameters() already yields each tensor once
            if p.requires_grad:
                (fast if id(p) in fast_ids else base).append(p)
        return [
            {"params": base, "lr": lr, "name": "encoder"},
            {"params": fast, "lr": lr * head_lr_ratio, "name": "last_stage_and_heads"},
        ]


def build_model(
    backbone: str,
    *,
    num_classes: int = 2,
    pretrained: str = "false",
    output_stride: int = 8,
    feature_stage: int = -1,
    head: str = "wgap",
    support_background: bool = True,
    pixel_head: str | None = None,
    spatial_dropout: float = 0.1,
) -> WSOLModel:
    """The one factory the rest of the kit uses, so configs map to models in one place.

    `head="deepmil"` builds the gated DeepMIL head and ignores `support_background` (the
    official DeepMil has no background logit), so one config default serves every head.
    """
    if head not in IMAGE_HEADS:
        raise ConfigError(f"image head {head!r} is unknown; use one of {', '.join(IMAGE_HEADS)}.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be a positive integer.")
    encoder = create_encoder(backbone, pretrained=pretrained, output_stride=output_stride,
                             feature_stage=feature_stage)
    d = encoder.out_channels
    image_head: nn.Module
    if head == "deepmil":
        image_head = DeepMIL(d, num_classes, mid_channels=128, gated=True)
    else:
        image_head = WGAP(d, num_classes, support_background=support_background)
    px = PixelHead(d, kind=pixel_head) if pixel_head is not None else None
    return WSOLModel(encoder, image_head, px, spatial_dropout=spatial_dropout)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen, as the paper counts model size."""
    return sum(p.numel() for p in model.parameters())
