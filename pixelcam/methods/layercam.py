"""LayerCAM (Jiang et al. 2021) on the WGAP net: F weighted by its positive gradients."""

from pixelcam.methods.base import Method
from pixelcam.models.cams import layercam

METHOD = Method(name="layercam", label="LayerCAM", maps={"layercam": layercam},
                shares_wgap_training=True)
