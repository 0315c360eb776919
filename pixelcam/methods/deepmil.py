"""Gated DeepMIL (Ilse et al. 2018): attention pooling whose attention is the map."""

from pixelcam.methods.base import Method
from pixelcam.models.cams import deepmil

METHOD = Method(name="deepmil", label="DeepMIL", maps={"deepmil": deepmil}, image_head="deepmil")
