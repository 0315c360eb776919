"""SAT (Spatial-Aware Token, Wu et al. ICCV'23) on timm's DeiT-Tiny/16 (notes 1.1 and 2.4).

A learned location token rides along with [cls, 196 patches]. In every block the raw attention
logits of its query give m = sigmoid(mean over heads of q_loc . k_j * scale), one value per token;
the last 3 blocks multiply the softmax attention of all queries by m over the key axis, and the
map M is the mean of those 3 m's over the patch tokens (14x14). The transformer itself is timm's
(`Block`, and `Attention` subclassed only to expose m), so timm DeiT weights load unchanged.

Parameter count of `build_sat(num_classes=2)` (the paper's 5,528,267):
    DeiT-Tiny without its classifier        5,524,416
        patch embed 3*16*16*192 + 192          147,648
        cls token 192 + pos embed 197*192       38,016
        12 blocks x 444,864                  5,338,368
            (2 LayerNorms 768, qkv 192*576+576, proj 192*192+192, fc1 192*768+768, fc2 768*192+192)
        final LayerNorm                            384
    loc token 192 + loc embed 192                  384
    conv head 192*K*9 + K (K=2)                  3,458
    frozen 3x3 Gaussian kernel                       9   (the official model keeps it as a
                                                          requires_grad=False nn.Parameter)
+ linear pixel head 192*2 + 2 = 386 -> 5,528,653 (the paper's 5,528,651 is a typo, notes 7.19).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, trunc_normal_
from torch import Tensor, nn

from pixelcam.errors import ConfigError, DataError, ModelError
from pixelcam.hub import pretrained_tag, timm_weights_file
from pixelcam.models.backbones import load_weights
from pixelcam.models.cams import minmax
from pixelcam.models.heads import PixelHead
from pixelcam.models.model import ModelOutput

DEIT_NAME = "deit_tiny_patch16_224"  # the timm architecture SAT is built on
SAT_AREA_THRESHOLD = 0.35  # sat_area_th of the official SatLoss
MAP_BLOCKS = 3  # the last 3 blocks re-weight their attention and make the map
GAUSS_NSIG = 6.0  # get_kernel(3, nsig=6) of the official code


class SpatialAwareAttention(Attention):
    """timm's Attention plus the location token's mask m; re-weights attention when `reweight`.

    The location token must be the LAST token. m of the latest call is kept in `last_m` (B, N)
    because timm's Block only passes the attention output on.
    """

    reweight: bool = False
    last_m: Tensor | None = None

    @staticmethod
    def token_mask(loc_logits: Tensor) -> Tensor:
        """m from the loc query's raw logits (B, heads, N): a separate hook point for tests."""
        return torch.sigmoid(loc_logits.mean(dim=1))

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ModelError("SAT attention takes no attention mask; call it as timm's Block does.")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        loc_logits = (q[:, :, -1] * self.scale).unsqueeze(2) @ k.transpose(-2, -1)
        m = self.token_mask(loc_logits.squeeze(2))
        self.last_m = m
        if self.reweight or not self.fused_attn:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            if self.reweight:
                attn = attn * m[:, None, None, :].to(attn.dtype)
            out = self.attn_drop(attn) @ v
        else:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))


class SATEncoder(nn.Module):
    """x (B,3,224,224) -> F (B,192,14,14), leaving M (B,14,14) in `last_map`.

    Being an encoder that returns F keeps the WSOLModel contract (`model.encoder(x)` then
    `model.classify(F)`), so gradient CAMs also run on a SAT model. timm's network sits in `vit`
    with its own key names, so a timm DeiT state dict loads into it directly.
    """

    def __init__(self, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.vit = timm.create_model(
            DEIT_NAME,
            pretrained=False,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            attn_layer=SpatialAwareAttention,
        )
        dim = self.vit.embed_dim
        self.out_channels = dim
        self.grid = self.vit.patch_embed.grid_size
        self.loc_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.loc_embed = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.loc_token, std=0.02)
        trunc_normal_(self.loc_embed, std=0.02)
        depth = len(self.vit.blocks)
        for i, block in enumerate(self.vit.blocks):
            block.attn.reweight = i >= depth - MAP_BLOCKS
        self.last_map: Tensor | None = None

    def tokens(self, x: Tensor) -> Tensor:
        """[cls, patches, loc] with positions: the input of the first block (B, 198, 192)."""
        size = tuple(self.vit.patch_embed.img_size)
        if x.ndim != 4 or tuple(x.shape[-2:]) != size:
            raise DataError(
                f"SAT (DeiT-Tiny/16) needs images of shape (B,3,{size[0]},{size[1]}), got "
                f"{tuple(x.shape)}; resize/crop the images to {size[0]}x{size[1]}."
            )
        vit = self.vit
        patches = vit.patch_embed(x)
        b = patches.shape[0]
        seq = torch.cat(
            [vit.cls_token.expand(b, -1, -1), patches, self.loc_token.expand(b, -1, -1)], dim=1
        )
        seq = seq + torch.cat([vit.pos_embed, self.loc_embed], dim=1)
        return vit.norm_pre(vit.patch_drop(vit.pos_drop(seq)))

    def forward(self, x: Tensor) -> Tensor:
        seq = self.vit.norm(self.vit.blocks(self.tokens(x)))
        b, gh, gw = seq.shape[0], *self.grid
        masks = torch.stack([blk.attn.last_m for blk in self.vit.blocks[-MAP_BLOCKS:]])
        self.last_map = masks.mean(dim=0)[:, 1:-1].reshape(b, gh, gw)
        return seq[:, 1:-1].transpose(1, 2).reshape(b, -1, gh, gw)


def gaussian_kernel3(nsig: float = GAUSS_NSIG) -> Tensor:
    """The fixed 3x3 smoothing kernel of SAT's norm loss (the official `get_kernel(3, nsig=6)`).

    Per axis: the mass of a unit normal in 3 equal bins spanning [-nsig - w/2, nsig + w/2]
    with w = (2*nsig + 1)/3, i.e. a Gaussian of sigma 3/(2*nsig+1) = 0.23 px before the square
    root; the 2D kernel is sqrt(outer(mass, mass)) normalised to sum 1. The square root widens
    it to a sampled Gaussian of sigma ~0.42 px: weights 0.805 centre, 0.046 edge, 0.0026 corner,
    a light smoothing. Built in float64 from the normal CDF (no scipy needed).
    """
    width = (2.0 * nsig + 1.0) / 3.0
    edges = torch.linspace(
        -nsig - width / 2, nsig + width / 2, 4, dtype=torch.float64, device="cpu"
    )
    mass = torch.special.ndtr(edges).diff()
    kernel = torch.outer(mass, mass).sqrt()
    return (kernel / kernel.sum()).float()


@lru_cache(maxsize=1)
def _cached_kernel() -> Tensor:
    return gaussian_kernel3(GAUSS_NSIG)


class SATModel(nn.Module):
    """SAT classifier (3x3 conv + GAP on F) with an optional PixelCAM pixel head on the same F.

    Exposes the WSOLModel interface (encoder, classify, pixel_head, param_groups) so training,
    evaluation and the map registry treat it like the CNN models.
    """

    has_pixel_features = True  # `encoder(x)` is F (its patch tokens as a map), as WSOLModel

    def __init__(
        self, num_classes: int = 2, pixel_head: str | None = None, drop_path_rate: float = 0.1
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r} must be a positive integer.")
        self.encoder = SATEncoder(drop_path_rate=drop_path_rate)
        dim = self.encoder.out_channels
        # PyTorch default init: the official head init only touches Linear/LayerNorm modules
        self.image_head = nn.Conv2d(dim, num_classes, kernel_size=3, padding=1)
        self.pixel_head = PixelHead(dim, kind=pixel_head) if pixel_head is not None else None
        # unused by forward; kept as a frozen parameter so the count matches the official model
        kernel = gaussian_kernel3().view(1, 1, 3, 3)
        self.smooth_kernel = nn.Parameter(kernel, requires_grad=False)
        self.last_map: Tensor | None = None

    def classify(self, features: Tensor) -> Tensor:
        """Image logits from F: lets gradient CAMs differentiate w.r.t. F without the encoder."""
        return self.image_head(features).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.encoder(x)
        self.last_map = self.encoder.last_map  # keeps its graph: sat_losses train through it
        logits = self.classify(features)
        pixel_logits = self.pixel_head(features) if self.pixel_head is not None else None
        return ModelOutput(logits, features, pixel_logits)

    def param_groups(self, lr: float, head_lr_ratio: float = 10.0) -> list[dict]:
        """One group at lr for every trainable weight: the official DeiT setup (notes 4.2).

        `head_lr_ratio` is accepted for interface parity with WSOLModel and ignored.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "all"}]


def sat_map(
    model: nn.Module, x: Tensor, labels: Tensor | None = None, return_logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """SAT's localisation map: per-image min-max of M (B,14,14), as the official ReadyCam.

    Class-agnostic (labels are ignored): M comes from the location token, not a class score.
    """
    if not isinstance(model, SATModel):
        raise ModelError(
            f"the SAT map needs a SAT model, got {type(model).__name__}; build it with "
            "build_sat() (method 'sat')."
        )
    with torch.no_grad():
        out = model(x)
        maps = minmax(model.last_map.float())
    return (maps, out.logits) if return_logits else maps


def sat_losses(maps: Tensor, area_threshold: float = SAT_AREA_THRESHOLD) -> dict[str, Tensor]:
    """SAT's auxiliary losses on M (B,H,W): the official SatLoss terms, without lambdas.

    loss_area = |mean(M) - 0.35| over the whole batch (the official code averages first, then
    takes the absolute value); loss_norm = mean((1 - M~) * M~), M~ = M smoothed by the 3x3
    Gaussian with zero padding, which pushes every smoothed value towards 0 or 1.
    """
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise DataError(
            f"sat_losses expects SAT maps of shape (B,H,W), got {tuple(maps.shape)}; "
            "pass model.last_map after a forward pass."
        )
    kernel = _cached_kernel().to(device=maps.device, dtype=maps.dtype).view(1, 1, 3, 3)
    smooth = F.conv2d(maps.unsqueeze(1), kernel, padding=1)
    return {
        "loss_area": (maps.mean() - area_threshold).abs(),
        "loss_norm": ((1.0 - smooth) * smooth).mean(),
    }


def build_sat(
    num_classes: int = 2, pixel_head: str | None = None, pretrained: str = "false"
) -> SATModel:
    """The SAT factory: `pretrained` is "false", "timm" or a local timm DeiT-Tiny state dict file.

    "timm" reads the original DeiT-Tiny ImageNet checkpoint (`deit_tiny_patch16_224.fb_in1k`,
    pixelcam.weights.PRETRAINED_TAGS) from the local Hugging Face cache, never downloading; a
    file may be that checkpoint, the original DeiT release (`{"model": ...}`) or any state dict
    in timm's key names. Only the timm part loads (classifier `head.*` keys are dropped); any
    other key the network lacks, or any DeiT key the file lacks, raises ModelError. The location
    token/embedding and the heads stay newly initialised, as in the official ImageNet
    initialisation.
    """
    source = str(pretrained).strip()
    if source.lower() == "package":
        raise ModelError(
            f"SAT has no packaged weights (pretrained={source!r}); use 'timm', 'false' or the "
            f"path of a local timm {DEIT_NAME} state dict."
        )
    # the weight file is found (or refused) before building
    if source.lower() == "timm":
        path: Path | None = timm_weights_file(pretrained_tag(DEIT_NAME))
    elif source.lower() == "false":
        path = None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelError(
                f"SAT pretrained weight file {source!r} does not exist; give 'false', 'timm' or "
                f"the path of a local timm {DEIT_NAME} state dict (.pth/.pt/.safetensors)."
            )
    model = SATModel(num_classes=num_classes, pixel_head=pixel_head)
    if path is not None:
        load_weights(model.encoder.vit, path)
    return model
