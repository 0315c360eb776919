"""Pixel-feature analysis (J, mask_to_grid, t-SNE), the resampled PxAP hook and the figures."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from pixelcam.analysis import (
    mask_to_grid,
    pixel_embedding,
    pixel_features,
    separability,
    separability_summary,
)
from pixelcam.errors import DataError
from pixelcam.evaluate import evaluate_split, iter_maps
from pixelcam.figures import separability_hist, stain_curves, tsne_grid
from pixelcam.metrics import PxAP, ResampledPxAP, separability_j
from pixelcam.models.model import build_model
from pixelcam.models.sat import build_sat
from pixelcam.models.unet import UNet

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _small() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", pretrained="false", output_stride=8, head="wgap",
                       pixel_head="linear").eval()


def _items(n: int = 3, size: int = 32) -> list[dict]:
    """Tiny split: image i has a left-half FG mask, except image 1 whose mask is empty."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.uint8)
        if i != 1:
            mask[:, : size // 2 + 4 * i] = 1
        items.append({"image": torch.randn(3, size, size, generator=g), "label": i % 2,
                      "mask": mask, "index": i})
    return items


# -- J ----------------------------------------------------------------------------------------


def test_j_of_mask_features_is_infinite_and_of_random_features_near_zero() -> None:
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(16, 16, generator=g) > 0.6
    onehot = torch.stack([mask.float(), 1 - mask.float()])
    assert separability_j(onehot, mask) == math.inf  # no within-class scatter at all
    noisy = onehot * 10 + 0.01 * torch.randn(2, 16, 16, generator=g)
    assert separability_j(noisy, mask) > 1e4
    # random d=64 features on 256 pixels: E[J] is about (c-1)/(n-c) = 1/254
    rand = torch.randn(64, 16, 16, generator=g)
    assert 0.0 <= separability_j(rand, mask) < 0.02


# -- mask_to_grid ------------------------------------------------------------------------------


def test_mask_to_grid_area_majority_by_hand() -> None:
    # 4x4 -> 2x2 cells with FG fractions 1/4, 2/4 (tie -> FG), 3/4, 0
    mask = torch.tensor([[1, 0, 1, 1],
                         [0, 0, 0, 0],
                         [1, 1, 0, 0],
                         [1, 0, 0, 0]])
    grid = mask_to_grid(mask[None], (2, 2))
    assert grid.dtype == torch.bool
    assert grid[0].tolist() == [[False, True], [True, False]]
    # 3x3 -> 1x1: 4/9 FG is a minority, 5/9 a majority
    four = torch.zeros(1, 3, 3)
    four.view(-1)[:4] = 1
    five = torch.zeros(1, 3, 3)
    five.view(-1)[:5] = 1
    assert not mask_to_grid(four, (1, 1)).item() and mask_to_grid(five, (1, 1)).item()
    with pytest.raises(ValueError, match="B,H,W"):
        mask_to_grid(mask, (2, 2))


# -- pixel_features / separability ---------------------------------------------------------------


def test_pixel_features_of_wsol_sat_and_unsupported(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    feats = pixel_features(model, x)
    assert feats.shape == (2, 512, 4, 4)
    assert torch.equal(feats, model(x).features)
    sat = build_sat(pixel_head="linear").eval()
    xs = torch.randn(1, 3, 224, 224)
    fs = pixel_features(sat, xs)
    assert fs.shape == (1, 192, 14, 14)
    with torch.no_grad():
        assert torch.allclose(fs, sat(xs).features)
    with pytest.raises(ValueError, match="UNet"):
        pixel_features(UNet("resnet18"), x)


def test_separability_rows_and_nan_for_empty_mask(model: torch.nn.Module) -> None:
    items = _items(3)
    model.train()  # separability runs in eval mode and restores the caller's mode
    df = separability(model, DataLoader(items, batch_size=2), CPU)
    assert model.training
    model.eval()
    assert list(df.columns) == ["index", "label", "j"] and len(df) == 3
    assert df["index"].tolist() == [0, 1, 2] and df["label"].tolist() == [0, 1, 0]
    assert math.isnan(df["j"][1])
    for i in (0, 2):
        feats = pixel_features(model, items[i]["image"][None])[0]
        grid = mask_to_grid(items[i]["mask"][None], (4, 4))[0]
        assert df["j"][i] == pytest.approx(separability_j(feats, grid), rel=1e-12)
        assert 0 < df["j"][i] < math.inf
    no_mask = [{k: v for k, v in it.items() if k != "mask"} for it in items]
    with pytest.raises(DataError, match="mask"):
        separability(model, DataLoader(no_mask, batch_size=2), CPU)


def test_separability_summary_ignores_nan() -> None:
    df = pd.DataFrame({"index": range(5), "label": [0, 0, 1, 1, 1],
                       "j": [0.1, np.nan, 0.2, 0.4, np.nan]})
    out = separability_summary(df)
    assert out == pytest.approx({"normal": 0.1, "cancer": 0.3, "all": 0.7 / 3})
    camelyon = pd.DataFrame({"label": [0, 0, 1], "j": [np.nan, np.nan, 0.5]})
    out = separability_summary(camelyon, ("benign", "malignant"))
    assert math.isnan(out["benign"]) and out["malignant"] == 0.5 and out["all"] == 0.5


# -- t-SNE embedding ---------------------------------------------------------------------------


def test_pixel_embedding_shapes_logits_and_determinism(model: torch.nn.Module) -> None:
    item = _items(1)[0]  # left half FG: 8 of the 16 cells of F's 4x4 grid
    emb = pixel_embedding(model, item["image"], item["mask"], perplexity=30)
    assert emb["points"].shape == (16, 2) and np.isfinite(emb["points"]).all()
    assert emb["is_fg"].dtype == bool and emb["is_fg"].sum() == 8
    assert emb["position"].tolist() == list(range(16))
    with torch.no_grad():
        logits = model(item["image"][None]).pixel_logits[0].reshape(2, -1).t().double()
    assert np.allclose(emb["pixel_logits"], logits.numpy(), atol=1e-6)
    again = pixel_embedding(model, item["image"], item["mask"], perplexity=30)
    assert np.array_equal(emb["points"], again["points"])
    # a balanced draw of 6 of the 16 cells: 3 FG and 3 BG, the same for the same seed
    small = pixel_embedding(model, item["image"], item["mask"], max_pixels=6, seed=3)
    assert small["points"].shape == (6, 2) and small["is_fg"].sum() == 3
    same = pixel_embedding(model, item["image"], item["mask"], max_pixels=6, seed=3)
    assert np.array_equal(small["position"], same["position"])
    plain = build_model("resnet18", pretrained="false", output_stride=8, head="wgap")
    assert pixel_embedding(plain, item["image"], item["mask"])["pixel_logits"] is None


# -- evaluate_split hook -------------------------------------------------------------------------


def test_evaluate_split_resampled_pxap(model: torch.nn.Module) -> None:
    items = _items(4)
    loader = DataLoader(items, batch_size=3)
    res = evaluate_split(model, loader, "cam", CPU, resamples=5, resample_seed=7)
    plain = evaluate_split(model, loader, "cam", CPU, resamples=0)
    assert plain.resampled_pxap == [] and plain.pxap == res.pxap
    assert plain.rates == res.rates
    assert json.dumps(plain.per_image) == json.dumps(res.per_image)  # NaN-tolerant
    assert len(res.resampled_pxap) == 5 and res.to_dict()["resampled_pxap"] == res.resampled_pxap
    assert len(evaluate_split(model, loader, "cam", CPU).resampled_pxap) == 29
    # the same resamples recomputed by hand from the maps of the split
    ref = ResampledPxAP(4, 5, seed=7)
    ones = ResampledPxAP(4, multiplicities=np.ones((1, 4)))
    for out in iter_maps(model, loader, "cam", CPU):
        ref.update(out["maps"], out["masks"], out["index"])
        ones.update(out["maps"], out["masks"], out["index"])
    assert np.array_equal(np.array(res.resampled_pxap), ref.compute(), equal_nan=True)
    assert ones.compute()[0] == res.pxap
    no_mask = [{k: v for k, v in it.items() if k != "mask"} for it in items]
    assert evaluate_split(model, DataLoader(no_mask, batch_size=3), "cam",
                          CPU).resampled_pxap == []
    assert isinstance(res.metric, PxAP)


# -- figures -------------------------------------------------------------------------------------


def _renders(fig: Figure) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_separability_hist_one_panel_per_baseline() -> None:
    rng = np.random.default_rng(0)
    per = {"DeepMIL": pd.Series(rng.gamma(2, 0.05, 40)),
           "DeepMIL + PixelCAM": pd.Series(rng.gamma(3, 0.05, 40)),
           "LayerCAM": pd.Series(np.append(rng.gamma(2, 0.05, 39), np.nan)),
           "LayerCAM + PixelCAM": pd.Series(rng.gamma(3, 0.05, 40))}
    fig = separability_hist(per)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["DeepMIL", "LayerCAM"]
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["LayerCAM (n=39)", "LayerCAM + PixelCAM (n=40)"]
    _renders(fig)
    assert len(separability_hist({"A": per["DeepMIL"], "B": per["LayerCAM"]}).axes) == 2


def test_tsne_grid_rows_and_columns() -> None:
    rng = np.random.default_rng(1)

    def emb(logits: bool) -> dict:
        return {"points": rng.normal(size=(20, 2)), "is_fg": rng.random(20) > 0.5,
                "pixel_logits": rng.normal(size=(20, 2)) if logits else None}

    cols = {f"image {i}": {"LayerCAM": emb(False), "LayerCAM + PixelCAM": emb(True)}
            for i in range(3)}
    fig = tsne_grid(cols)
    assert isinstance(fig, Figure) and len(fig.axes) == 9  # 3 rows x 3 images
    assert fig.axes[0].get_title().startswith("image 0")
    _renders(fig)
    cols["image 2"] = {"LayerCAM": emb(False)}
    with pytest.raises(ValueError, match="same methods"):
        tsne_grid(cols)


def test_stain_curves_one_panel_per_metric() -> None:
    rows = [{"level": lv, "method": m, "metric": k, "value": v + lv}
            for lv in range(11) for m in ("SAT", "SAT + PixelCAM") for k in ("PxAP", "CL")
            for v in (1.0, 2.0)]
    fig = stain_curves(pd.DataFrame(rows))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["PxAP", "CL"]
    assert len(fig.axes[0].get_lines()) >= 2
    _renders(fig)
    with pytest.raises(ValueError, match="value"):
        stain_curves(pd.DataFrame({"level": [0], "method": ["a"], "metric": ["PxAP"]}))
