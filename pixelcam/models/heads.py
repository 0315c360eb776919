"""Heads on the encoder's feature map F: the image classifier (WGAP) and the PixelCAM pixel head."""

from __future__ import annotations

from torch import Tensor, nn

from pixelcam.errors import ConfigError

PIXEL_HEAD_KINDS = ("linear", "multi_layer")


class WGAP(nn.Module):
    """Global average pooling + linear classifier: the image head of CAM, GradCAM++ and LayerCAM.

    With `support_background` the classifier has an extra first ("background") output that the
    official code drops before the loss and the argmax (notes 1.4); it is kept only so the
    parameter count and checkpoints match the paper's models.
    """

    def __init__(self, in_channels: int, num_classes: int, support_background: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r} must be >= 1.")
        self.num_classes = int(num_classes)
        self.support_background = bool(support_background)
        self.fc = nn.Linear(in_channels, num_classes + int(self.support_background))
        # the official initialize_head: xavier weights, zero bias
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor) -> Tensor:
        logits = self.fc(features.mean(dim=(2, 3)))
        return logits[:, 1:] if self.support_background else logits


class PixelHead(nn.Module):
    """Classifies every pixel embedding of F into background (channel 0) / foreground (1).

    "linear" is the paper's PixelCAM (one 1x1 conv, PyTorch default init: the official code does
    not re-initialise it); "multi_layer" is the deeper variant of Tables 12/13.
    """

    def __init__(self, in_channels: int, kind: str = "linear", num_outputs: int = 2) -> None:
        super().__init__()
        if kind not in PIXEL_HEAD_KINDS:
            raise ConfigError(
                f"pixel head kind {kind!r} is unknown; use one of {', '.join(PIXEL_HEAD_KINDS)}."
            )
        self.kind = kind
        if kind == "linear":
            self.net: nn.Module = nn.Conv2d(in_channels, num_outputs, kernel_size=1)
        else:
            if in_channels < 8:
                raise ConfigError(
                    f"multi_layer pixel head needs >= 8 input channels, got "
                    f"{in_channels}; use kind='linear'."
                )
            layers: list[nn.Module] = []
            width = in_channels
            for _ in range(3):  # d -> d/2 -> d/4 -> d/8
                layers += [
                    nn.Conv2d(width, width // 2, kernel_size=1),
                    nn.BatchNorm2d(width // 2),
                    nn.ReLU(inplace=True),
                ]
                width //= 2
            layers.append(nn.Conv2d(width, num_outputs, kernel_size=1))
            self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
