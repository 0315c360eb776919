"""GradCAM++ (Chattopadhay et al. 2018) on the WGAP net.

Two variants (`gradcampp_variant`): `official`, what produced the paper's numbers (the alpha
division of the official code is a no-op), and `paper`, the published alpha; docs/methods.md.
"""

from typing import Any

from pixelcam.methods.base import Method
from pixelcam.models.cams import gradcampp, gradcampp_official


def _map_for(cfg: Any) -> str:
    return "gradcampp_official" if cfg.gradcampp_variant == "official" else "gradcampp"


METHOD = Method(name="gradcampp", label="GradCAM++",
                maps={"gradcampp": gradcampp, "gradcampp_official": gradcampp_official},
                map_for=_map_for, shares_wgap_training=True)
