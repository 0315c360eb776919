"""pixelcam: PixelCAM (MIDL 2025) and its WSOL baselines, metrics, data and training."""

__version__ = "0.1.0"
