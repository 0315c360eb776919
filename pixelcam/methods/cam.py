"""CAM (Zhou et al. 2016) on the WGAP head: the class's weighted sum of F."""

from pixelcam.methods.base import Method
from pixelcam.models.cams import cam

METHOD = Method(name="cam", label="CAM", maps={"cam": cam}, shares_wgap_training=True)
