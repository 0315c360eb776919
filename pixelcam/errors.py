"""Errors the user can act on: each message names the input, the bad value and the fix."""


class PixelCamError(Exception):
    """Base class: the kit raises only subclasses of this for bad input, never a library's traceback."""


class ConfigError(PixelCamError):
    """A params file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(PixelCamError):
    """A data root, fold file, image, mask or stored CAM is missing or malformed."""


class ModelError(PixelCamError):
    """A backbone name or weight file cannot be used."""
