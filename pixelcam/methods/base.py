"""What a WSOL method is: everything the kit needs to train, map, label and tabulate it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from pixelcam.models.model import build_model

MapFn = Callable[..., Any]  # (model, x, labels, return_logits=False) -> maps | (maps, logits)
# (config, pixel head kind or None) -> a new model; the config is a pixelcam.config.Config
Builder = Callable[[Any, "str | None"], nn.Module]
# the extra loss terms of the baseline phase, from the (unwrapped) model after its forward pass
ExtraLosses = Callable[[nn.Module], dict[str, Tensor]]


@dataclass(frozen=True)
class Method:
    """One WSOL baseline of the paper's tables.

    A method on a CNN backbone names its image head (`image_head`: the WSOLModel is built for
    it); a method with its own network gives a `builder` instead, and names the timm model its
    ImageNet weights come from (`timm_model`) and, when the network fixes it, its input size.
    """

    name: str  # the params value (`method`, `table_methods`)
    label: str  # the row name of the paper's tables
    # map name -> function: the method's maps (more than one when the map has variants)
    maps: Mapping[str, MapFn]
    image_head: str = "wgap"  # wgap | deepmil: the WSOLModel head (ignored with a builder)
    builder: Builder | None = None
    architecture: str = ""  # what the plan shows for its own network ("" = the backbone)
    timm_model: str | None = None  # the timm model its own network loads with pretrained: timm
    input_size: int | None = None  # a fixed image_size (its resize_size: resize_size)
    resize_size: int | None = None
    extra_losses: ExtraLosses | None = None  # baseline phase only, as the official code
    # one training of the WGAP net (image cross-entropy) yields every method with this flag:
    # their runs differ only in the map that selects B-LOC (pixelcam.pipelines)
    shares_wgap_training: bool = False
    negev_row: bool = True  # the paper's tables have a "<label> + NEGEV" row
    # picks the map name from the config (e.g. a variant key); None = the method's name
    map_for: Callable[[Any], str] | None = field(default=None, repr=False)

    def map_name(self, cfg: Any) -> str:
        """The name (a key of `maps`) of the map this config's baseline uses."""
        return self.map_for(cfg) if self.map_for is not None else self.name

    def architecture_of(self, cfg: Any) -> str:
        return self.architecture or cfg.backbone

    def build(self, cfg: Any, pixel_head: str | None) -> nn.Module:
        """A new model for this method (not seeded here: the caller forks the RNG)."""
        if self.builder is not None:
            return self.builder(cfg, pixel_head)
        return build_model(
            cfg.backbone, num_classes=cfg.num_classes, pretrained=cfg.pretrained,
            output_stride=cfg.output_stride, feature_stage=cfg.feature_stage,
            head=self.image_head, support_background=cfg.support_background,
            pixel_head=pixel_head, spatial_dropout=cfg.spatial_dropout,
        )
