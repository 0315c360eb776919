"""NEGEV (Belharbi et al., MIDL 2022): a U-Net decoder trained on a frozen WSOL classifier.

The two-step baseline the paper compares PixelCAM with (docs/official-code.md, NEGEV). The
classifier (encoder + image head of a trained baseline) stays frozen; the decoder of
:class:`pixelcam.models.unet.UNetDecoder` reads skips from every encoder stage and learns from
(i) partial CE on CAM seeds, (ii) a CRF smoothness term (local, scaled to the dense one's
size), (iii) an ELB log-barrier on the FG and BG areas and (iv) optionally a CE that makes
every pixel of a negative (label 0) image BG.

With a ResNet-50 classifier (WGAP head with the background row, 6,147 params) the model counts
23,508,032 + 6,147 + 9,012,928 + 290 = 32,527,397 parameters, the "GradCAM++ / LayerCAM w/
NEGEV" rows of the paper's Table 11.

CRF term, an approximation. The official loss is a *dense* CRF (every pixel pair, computed with
a permutohedral-lattice bilateral filter), which plain PyTorch cannot afford at 224x224 (2.5e9
pairs). :func:`pixelcam.losses.local_crf_loss` keeps the same Potts energy,
sum_ij w_ij S_i^T (1 - S_j), with the same bilateral kernel
w_ij = exp(-|I_i-I_j|^2/(2 sigma_rgb^2) - |p_i-p_j|^2/(2 sigma_xy^2)),
but only over pairs within a k x k window (default 9x9). It loops over the (k^2-1)/2 offsets
of half the window (each unordered pair once, then doubled) with whole-batch tensor ops: time
O(k^2 B H W), extra memory O(B H W) per offset kept for backward (about 0.8 MB per 224x224
image for each of the 40 offsets of a 9x9 window, ~32 MB per image).
Pairs farther than k/2 pixels apart, which the dense loss counts with weight up to
exp(-d^2/2e4), are dropped: with sigma_xy = 100 px a pixel of a 224x224 image has a dense
spatial kernel mass of ~2.5e4 against the window's 80, so the raw window sum is some 300x
smaller than the dense energy and the official weight 2e-9 would all but switch it off.
:func:`pixelcam.losses.negev_losses` therefore multiplies the window sum by
:func:`pixelcam.losses.dense_crf_ratio`, the ratio of the two spatial kernel masses per pixel
(derived from sigma_xy, the window and the grid size; 336 at 224x224), and keeps the official
lambda_crf = 2e-9 on the result. On a synthetic GlaS-like 224x224 image the scaled term is
0.40-2.0x the exact dense Potts energy (unscaled: 166-839x too small; tests/test_unet_negev.py;
0.37-2.7x over 4 images x 4 segmentations); its logit gradients are sharper than the dense
one's (2.6-10x larger in norm, concentrated near region edges rather than spread over the
image), the unscaled ones 33-127x smaller. ``crf_scale`` < 1 evaluates it
on a downsampled grid (as the official code's scale factor) with distances still in input
pixels, and the ratio is that grid's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from pixelcam.errors import ModelError
from pixelcam.models.unet import DEFAULT_DECODER_CHANNELS, UNetDecoder

# its training terms (seeds, local CRF, size barrier, negatives) live in pixelcam.losses
__all__ = ["NEGEV", "encoder_stage_channels", "encoder_stages", "negev_map"]


def _stage_modules(encoder: nn.Module) -> list[tuple[str, int]]:
    """(module name, channels) of every stage of a pixelcam Encoder, shallow to deep.

    ResNets ("resnet" kind): act1 (stride 2), layer1 (4), layer2 (8), layer3, layer4 (8 and 8
    with the WSOL stride change, 16 and 32 without). Other timm CNNs ("features" kind): the
    stages timm's feature_info lists, found in the feature wrapper under their own or their
    flattened ("blocks_0") names. The WSOL VGG16 and InceptionV3 list theirs (Encoder.stages).
    """
    if getattr(encoder, "stages", ()):  # the WSOL VGG16/InceptionV3 name their own stages
        return list(encoder.stages)
    net = getattr(encoder, "net", None)
    info = getattr(net, "feature_info", None)
    if info is None:
        raise ModelError(
            f"encoder {type(encoder).__name__} has no timm net with feature_info; NEGEV needs a "
            "pixelcam Encoder (pixelcam.models.backbones.create_encoder)."
        )
    entries = info.info if hasattr(info, "info") else list(info)
    # an encoder cut at an earlier feature stage (`feature_stage`) ends there: F is its output
    last = getattr(encoder, "last_stage_name", None)
    stages: list[tuple[str, int]] = []
    for entry in entries:
        name = entry["module"]
        for candidate in (name, name.replace(".", "_", 1)):
            try:
                net.get_submodule(candidate)
            except AttributeError:
                continue
            stages.append((candidate, int(entry["num_chs"])))
            break
        else:
            raise ModelError(
                f"encoder {getattr(encoder, 'name', '?')!r}: stage {name!r} is not in its timm "
                "net; use a ResNet or an EfficientNet/MobileNet backbone for NEGEV."
            )
        if stages[-1][0] == last:
            break
    return stages


def encoder_stage_channels(encoder: nn.Module) -> list[int]:
    """Channels of every stage, shallow to deep: what the decoder is built from, no forward."""
    return [c for _, c in _stage_modules(encoder)]


def encoder_stages(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """Outputs of every encoder stage (shallow to deep) from one ordinary ``encoder(x)`` call.

    Forward hooks on the stage modules capture the maps as the encoder's own forward makes
    them, so the WSOL stride change and timm's forward details are respected; the last entry
    is the encoder's output F. For a WSOL ResNet at 224 that is act1 64x112x112, layer1
    256x56x56, layer2 512x28x28, layer3 1024x28x28, layer4 2048x28x28 (ResNet-50 widths).
    """
    stages = _stage_modules(encoder)
    captured: dict[str, Tensor] = {}
    handles = []

    def _hook(name: str):
        def fn(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            captured[name] = output

        return fn

    for name, _ in stages:
        handles.append(encoder.net.get_submodule(name).register_forward_hook(_hook(name)))
    try:
        out = encoder(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [captured[name] for name, _ in stages[:-1]]
    return [*maps, out]


class NEGEV(nn.Module):
    """Frozen WSOL classifier + trainable U-Net decoder: the paper's two-step baseline.

    ``classifier`` is a WSOLModel-like module: an ``encoder`` (pixelcam Encoder) and either a
    ``classify(F)`` method or an ``image_head``. With ``freeze`` its parameters never get
    gradients and it stays in eval mode (BN statistics and dropout fixed) even after
    ``NEGEV.train()``, as the official ``freeze_cl``. ``forward(x)`` returns
    (seg_logits (B,2,H,W) at the input size, cls_logits (B,K) of the classifier).
    """

    def __init__(
        self,
        classifier: nn.Module,
        freeze: bool = True,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        encoder = getattr(classifier, "encoder", None)
        if encoder is None:
            raise ModelError(
                f"NEGEV needs a classifier with an .encoder (a WSOLModel), got "
                f"{type(classifier).__name__}; build it with pixelcam.models.model.build_model."
            )
        self.classifier = classifier
        self.freeze = bool(freeze)
        channels = encoder_stage_channels(encoder)
        if tuple(decoder_channels) == DEFAULT_DECODER_CHANNELS:  # one block per stage it has
            decoder_channels = DEFAULT_DECODER_CHANNELS[-len(channels):]
        self.decoder = UNetDecoder(channels, decoder_channels, align_corners=True)
        if self.freeze:
            for p in self.classifier.parameters():
                p.requires_grad_(False)
            self.classifier.eval()

    def train(self, mode: bool = True) -> NEGEV:
        super().train(mode)
        if self.freeze:
            self.classifier.eval()
        return self

    def _classify(self, features: Tensor) -> Tensor:
        if hasattr(self.classifier, "classify"):
            return self.classifier.classify(features)
        return self.classifier.image_head(features)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # a frozen encoder needs no graph: only the decoder learns from the skips
        with torch.no_grad() if self.freeze else nullcontext():
            stages = encoder_stages(self.classifier.encoder, x)
            cls_logits = self._classify(stages[-1])
        seg_logits = self.decoder(stages, size=(x.shape[-2], x.shape[-1]))
        return seg_logits, cls_logits


def negev_map(
    model: NEGEV, x: Tensor, labels: Tensor | None = None, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """NEGEV localisation map: FG softmax of the decoder at full resolution (B,H,W).

    Class-agnostic (labels are ignored); the logits are the frozen classifier's, so NEGEV's
    classification accuracy is the baseline's.
    """
    with torch.no_grad():
        seg_logits, cls_logits = model(x)
        maps = torch.softmax(seg_logits, dim=1)[:, 1]
    return (maps, cls_logits) if return_logits else maps
