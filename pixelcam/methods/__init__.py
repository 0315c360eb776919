"""The registry of WSOL methods: every other module asks it, none names a method.

Adding a method is one file in this package that declares its `METHOD`, and one line below
(docs/development.md).
"""

from __future__ import annotations

from pixelcam.errors import ConfigError
from pixelcam.methods import cam, deepmil, gradcampp, layercam, sat
from pixelcam.methods.base import Method

# in the paper's row order
METHODS: dict[str, Method] = {m.name: m for m in (
    layercam.METHOD,
    gradcampp.METHOD,
    deepmil.METHOD,
    cam.METHOD,
    sat.METHOD,
)}


def method(name: str) -> Method:
    """The method called `name`; ConfigError naming the valid ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method {name!r} is unknown: use one of {', '.join(METHODS)}") from None


def label(name: str) -> str:
    """The paper's row name of a method (the name itself for one the registry lacks)."""
    return METHODS[name].label if name in METHODS else name


def row_label(kind: str, method_name: str) -> str:
    """The row name the paper's tables use for a run kind on top of a baseline method."""
    if kind == "unet":
        return "U-Net"
    suffix = {"pixelcam": " + PixelCAM", "negev": " + NEGEV"}.get(kind, "")
    return label(method_name) + suffix


__all__ = ["METHODS", "Method", "method", "label", "row_label"]
