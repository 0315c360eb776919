"""SAT (Wu et al. 2023): DeiT-Tiny/16 with a location token whose map M is the map.

Its own network (fixed 224x224 input), its own ImageNet weights, and two extra losses in the
baseline phase (dropped in the PixelCAM phase, as in the official code). The paper has no
SAT + NEGEV row.
"""

from typing import Any

from torch import Tensor, nn

from pixelcam.methods.base import Method
from pixelcam.models.sat import DEIT_NAME, build_sat, sat_losses, sat_map


def _build(cfg: Any, pixel_head: str | None) -> nn.Module:
    return build_sat(cfg.num_classes, pixel_head=pixel_head, pretrained=cfg.pretrained)


def _losses(model: nn.Module) -> dict[str, Tensor]:
    return sat_losses(model.last_map.float())


METHOD = Method(name="sat", label="SAT", maps={"sat": sat_map}, builder=_build,
                architecture="DeiT-Tiny", timm_model=DEIT_NAME, input_size=224, resize_size=256,
                extra_losses=_losses, negev_row=False)
