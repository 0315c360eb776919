"""Pixel-feature analysis: class separability J (Tables 4/5, Figs 3/6-8) and t-SNE (Figs 19-24).

Both look at F, the feature map the PixelCAM pixel head classifies, with the GT mask brought
down to F's grid by :func:`mask_to_grid`. J is computed per image by
:func:`pixelcam.metrics.separability_j`, at F's own resolution: upsampling F (as the official
orthogonality loss does) would only add interpolated, strongly correlated pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pixelcam.errors import DataError
from pixelcam.metrics import separability_j

__all__ = [
    "mask_to_grid",
    "pixel_embedding",
    "pixel_features",
    "separability",
    "separability_summary",
]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm statistics, no drop-path) for the analysis, then the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pixel_features(model: nn.Module, x: Tensor) -> Tensor:
    """F (B,d,h,w): the un-dropped encoder output that the pixel head sees.

    WSOLModel: the encoder's map; SAT: its 14x14 patch tokens reshaped to a map (the same F its
    image and pixel heads read). Models without such an F (U-Net, NEGEV) raise ValueError.
    Runs without gradients in the model's current mode: put it in eval mode first.
    """
    if not getattr(model, "has_pixel_features", False):
        raise ValueError(
            f"pixel_features: {type(model).__name__} has no pixel-feature map F; separability "
            "and t-SNE need a WSOLModel (CNN + WGAP/DeepMIL) or a SAT model"
        )
    with torch.no_grad():
        return model.encoder(x)


def mask_to_grid(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """GT masks (B,H,W), nonzero = FG -> (B,h,w) bool labels of F's cells by area majority.

    A cell is FG when at least half of the image pixels it covers are FG (area / adaptive
    average pooling; a tie counts as FG). Official notes 5.6 leave the choice open; nearest
    sampling would label a cell by one pixel near its corner, so thin glands or small
    metastases would flip with a one-pixel shift, while the area fraction labels each cell by
    what most of its area shows.
    """
    if masks.ndim != 3:
        raise ValueError(f"mask_to_grid: expected masks (B,H,W), got {tuple(masks.shape)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"mask_to_grid: grid size must be positive, got {tuple(size)}")
    fg = (masks != 0).float().unsqueeze(1)
    return F.adaptive_avg_pool2d(fg, (h, w))[:, 0] >= 0.5


def _batch_masks(batch: dict, where: str) -> Tensor:
    if "mask" not in batch:
        raise DataError(
            f"{where}: the loader's batches carry no 'mask'; separability needs GT masks, so "
            "use an evaluation split with masks (valpx or test)"
        )
    return batch["mask"]


def separability(model: nn.Module, loader: DataLoader, device: torch.device) -> pd.DataFrame:
    """One row per image: index, label, j (NaN when F's grid has no FG or no BG cell)."""
    rows: dict[str, list] = {"index": [], "label": [], "j": []}
    model = model.to(device)
    with _eval_mode(model):
        for batch in loader:
            masks = _batch_masks(batch, "separability")
            feats = pixel_features(model, batch["image"].to(device))
            grid = mask_to_grid(masks.to(device), tuple(feats.shape[-2:]))
            rows["index"] += [int(i) for i in batch["index"]]
            rows["label"] += [int(v) for v in batch["label"]]
            rows["j"] += [separability_j(f, g) for f, g in zip(feats, grid)]
    return pd.DataFrame({"index": pd.Series(rows["index"], dtype="int64"),
                         "label": pd.Series(rows["label"], dtype="int64"),
                         "j": pd.Series(rows["j"], dtype="float64")})


def separability_summary(
    df: pd.DataFrame, class_names: Sequence[str] = ("normal", "cancer")
) -> dict[str, float]:
    """Mean J over label-0 images, label-1 images and all (keys: class_names + "all").

    NaN rows (no FG, e.g. CAMELYON normal patches) are left out; a class with no defined J
    gives NaN, which the tables print as "-", as the paper does.
    """
    if len(class_names) != 2:
        raise ValueError(f"separability_summary: need 2 class names, got {list(class_names)}")
    missing = {"label", "j"} - set(df.columns)
    if missing:
        raise ValueError(f"separability_summary: df lacks column(s) {sorted(missing)}")
    j = df["j"].astype("float64")
    out = {}
    for label, name in enumerate(class_names):
        out[str(name)] = float(j[df["label"] == label].mean(skipna=True))
    out["all"] = float(j.mean(skipna=True))
    return out


def _balanced_subsample(is_fg: np.ndarray, max_pixels: int, seed: int) -> np.ndarray:
    """Sorted positions: up to half of max_pixels per class, a short class's spare to the other."""
    rng = np.random.default_rng(seed)
    fg = np.flatnonzero(is_fg)
    bg = np.flatnonzero(~is_fg)
    n_fg = min(len(fg), max_pixels // 2)
    n_bg = min(len(bg), max_pixels - n_fg)
    n_fg = min(len(fg), max_pixels - n_bg)
    take_fg = rng.choice(fg, size=n_fg, replace=False) if n_fg else fg[:0]
    take_bg = rng.choice(bg, size=n_bg, replace=False) if n_bg else bg[:0]
    return np.sort(np.concatenate([take_fg, take_bg]))


def pixel_embedding(
    model: nn.Module,
    image: Tensor,
    mask: Tensor,
    *,
    max_pixels: int = 400,
    seed: int = 0,
    perplexity: float = 30.0,
) -> dict[str, np.ndarray | None]:
    """t-SNE of one image's pixel features F, FG/BG from the mask (Figs 19-24).

    Returns points (n,2), is_fg (n,) bool, pixel_logits (n,2) of the same pixels [BG, FG] or
    None without a pixel head, and position (n,) (flat index on F's h x w grid). At most
    ``max_pixels`` pixels, a seeded FG/BG-balanced draw; perplexity is lowered to n - 1 when
    the image has fewer pixels (t-SNE needs perplexity < n).
    """
    from sklearn.manifold import TSNE

    if image.ndim != 3 or mask.ndim != 2:
        raise ValueError(
            f"pixel_embedding: expected image (3,H,W) and mask (H,W), got "
            f"{tuple(image.shape)} and {tuple(mask.shape)}"
        )
    if max_pixels < 4:
        raise ValueError(f"pixel_embedding: max_pixels must be >= 4, got {max_pixels}")
    device = next(model.parameters()).device
    with _eval_mode(model):
        feats = pixel_features(model, image[None].to(device))  # (1,d,h,w)
        logits = None
        if model.pixel_head is not None:
            with torch.no_grad():
                logits = model.pixel_head(feats)[0]
    h, w = feats.shape[-2:]
    is_fg = mask_to_grid(mask[None].to(feats.device), (h, w))[0].reshape(-1).cpu().numpy()
    pos = _balanced_subsample(is_fg, int(max_pixels), seed)
    if len(pos) < 4:
        raise ValueError(
            f"pixel_embedding: F's grid has only {h}x{w} = {h * w} pixels; t-SNE needs >= 4, "
            "use a larger image or a smaller output stride"
        )
    x = feats[0].reshape(feats.shape[1], -1).t()[torch.as_tensor(pos, device=feats.device)]
    x = x.double().cpu().numpy()
    tsne = TSNE(n_components=2, perplexity=float(min(perplexity, len(pos) - 1)), init="pca",
                random_state=seed)
    points = tsne.fit_transform(x)
    px = None
    if logits is not None:
        flat = logits.reshape(logits.shape[0], -1).t()
        px = flat[torch.as_tensor(pos, device=flat.device)].double().cpu().numpy()
    return {"points": points, "is_fg": is_fg[pos].astype(bool), "pixel_logits": px,
            "position": pos}
