"""A localisation map by name: every method's maps (`pixelcam.methods`) and those of the run
kinds on top of them (PixelCAM's pixel head, NEGEV's decoder, the U-Net), resized and clean."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelcam.errors import ConfigError
from pixelcam.methods import METHODS
from pixelcam.methods.base import MapFn
from pixelcam.models.cams import pixelcam
from pixelcam.models.negev import negev_map
from pixelcam.models.unet import unet_map

# map name -> function; a results.json's `map_method` is one of these names
MAPS: dict[str, MapFn] = {
    **{name: fn for m in METHODS.values() for name, fn in m.maps.items()},
    "pixelcam": pixelcam,
    "negev": negev_map,
    "unet": unet_map,
}


def compute_maps(
    method: str,
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    size: tuple[int, int] | None = None,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Maps (B,h,w) in [0,1] by map name, optionally resized to `size` for evaluation."""
    if method not in MAPS:
        raise ConfigError(f"map method {method!r} is unknown; use one of {', '.join(MAPS)}.")
    if size is not None and (len(size) != 2 or any(int(s) < 1 for s in size)):
        raise ConfigError(f"map size {size!r} must be two positive integers (height, width).")
    result = MAPS[method](model, x, labels, return_logits=return_logits)
    maps, logits = result if return_logits else (result, None)
    if size is not None:
        maps = F.interpolate(
            maps.unsqueeze(1),
            size=(int(size[0]), int(size[1])),
            mode="bilinear",
            align_corners=False,
        ).squeeze(1)
    maps = torch.nan_to_num(maps, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    return (maps, logits) if return_logits else maps


__all__ = ["MAPS", "compute_maps"]
