"""Heads on the encoder's feature map F: image classifiers (WGAP, gated DeepMIL) and the
PixelCAM pixel head."""

from __future__ import annotations

import torch
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


class DeepMIL(nn.Module):
    """Attention-MIL image head (Ilse et al. 2018, notes 2.1): its attention IS the DeepMIL map.

    Each class c has its own attention a_c over the h*w positions (a softmax, so it sums to 1),
    its own bag embedding z_c = sum_p a_c(p) F_p and its own Linear(d, 1) scoring z_c. The
    paper's runs use the gated variant (tanh branch times a sigmoid gate); with d=2048, K=2 the
    head has 528,900 parameters, as in the official log. There is no background logit: the
    official DeepMil asserts support_background=False.
    """

    def __init__(
        self, in_channels: int, num_classes: int, mid_channels: int = 128, gated: bool = True
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r} must be >= 1.")
        if mid_channels < 1:
            raise ConfigError(f"DeepMIL mid_channels={mid_channels!r} must be >= 1.")
        self.num_classes = int(num_classes)
        self.gated = bool(gated)
        self.support_background = False
        self.hidden = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
        self.gate = nn.Conv2d(in_channels, mid_channels, kernel_size=1) if self.gated else None
        self.score = nn.Conv2d(mid_channels, num_classes, kernel_size=1)
        # K separate Linear(d, 1), one per class embedding (their count and init match the
        # official head); forward stacks them to score all classes in one einsum
        self.classifiers = nn.ModuleList(nn.Linear(in_channels, 1) for _ in range(num_classes))
        # the official initialize_head treats the whole classification head: xavier, zero bias
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def attention_logits(self, features: Tensor) -> Tensor:
        """Unnormalised attention A (B,K,h,w), before the softmax over positions."""
        hidden = torch.tanh(self.hidden(features))
        if self.gate is not None:
            hidden = hidden * torch.sigmoid(self.gate(features))
        return self.score(hidden)

    def attention(self, features: Tensor) -> Tensor:
        """Per-class attention (B,K,h,w) that sums to 1 over the h*w positions."""
        att = self.attention_logits(features)
        return torch.softmax(att.flatten(2), dim=-1).view_as(att)

    def forward_with_attention(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B,K) and attention (B,K,h,w) of one pass, so the map costs no second forward."""
        att = self.attention(features)
        bags = torch.einsum("bkp,bdp->bkd", att.flatten(2), features.flatten(2))
        weight = torch.cat([lin.weight for lin in self.classifiers], dim=0)  # K,d
        bias = torch.cat([lin.bias for lin in self.classifiers], dim=0)  # K
        logits = (bags * weight).sum(dim=-1) + bias
        return logits, att

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_with_attention(features)[0]


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
