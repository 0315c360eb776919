"""Errors the user can act on: each message names the input, the bad value and the fix."""


class PixelCamError(Exception):
    """Base class: bad input raises a subclass of this, never a library's bare traceback."""


class ConfigError(PixelCamError):
    """A params file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(PixelCamError):
    """A data root, fold file, image, mask or stored CAM is missing or malformed."""


class ModelError(PixelCamError):
    """A backbone name or weight file cannot be used."""


class OutputError(PixelCamError):
    """A result cannot be written (disk full, read-only or missing folder); nothing half-written."""


class TrainingInterrupted(PixelCamError):
    """SIGTERM stopped a training after an epoch; its resume state is on disk (exit code 143)."""
