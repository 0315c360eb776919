"""The paper's experiments as functions: pairing, t-tests, tables beside the paper, Table 11."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pixelcam import experiments as ex
from pixelcam.config import load_config
from pixelcam.runs import Run


def _run(kind, method, resampled, per_image):
    test = {"pxap": float(np.mean(resampled)) if len(resampled) else 0.0, "accuracy": 100.0,
            "resampled_pxap": list(resampled), "per_image": {"ap": list(per_image)}}
    return Run(kind, "k", Path("."), {"config": {"method": method}, "test": {"b-loc": test}},
               reused=True)


def test_pairs_and_paired_ttest_against_scipy():
    rng = np.random.default_rng(0)
    base_r, pix_r = rng.normal(70, 1, 29), rng.normal(75, 1, 29)
    base_i, pix_i = rng.uniform(0, 100, 10), rng.uniform(0, 100, 10)
    base_i[3] = pix_i[7] = float("nan")  # images without foreground drop out of the pairs
    runs = [_run("baseline", "layercam", base_r, base_i), _run("negev", "layercam", [], []),
            _run("pixelcam", "layercam", pix_r, pix_i)]
    assert [(b.kind, p.kind) for b, p in ex.pairs(runs)] == [("baseline", "pixelcam")]
    cfg = load_config(None, {})
    table = ex.ttest_table(runs, cfg)
    row = table.loc["LayerCAM"]
    expected = stats.ttest_rel(pix_r, base_r)
    assert row["df resampled"] == 28 and row["t resampled"] == round(expected.statistic, 2)
    assert row["t resampled"] > 0  # PixelCAM better: positive t, as in the paper
    keep = ~(np.isnan(base_i) | np.isnan(pix_i))
    per_image = stats.ttest_rel(pix_i[keep], base_i[keep])
    assert row["df per image"] == 7 and row["t per image"] == round(per_image.statistic, 2)
    assert (row["t paper"], row["p paper"]) == (12.7, 4.0e-13)  # Table 2, LayerCAM, GlaS


def test_comparison_puts_the_paper_beside_the_run():
    table = ex.comparison([("LayerCAM", {"pxap": 80.04, "cl": 100.0}),
                           ("Not in the paper", {"pxap": 50.0, "cl": float("nan")})],
                          "table1", "camelyon16")
    assert table.loc["LayerCAM"].to_dict() == {
        "PxAP paper": 33.2, "PxAP run": 80.0, "PxAP diff": 46.8,
        "CL paper": 84.8, "CL run": 100.0, "CL diff": 15.2}
    other = table.loc["Not in the paper"]
    assert pd.isna(other["PxAP paper"]) and pd.isna(other["CL run"])  # shown empty, not 0


def test_parse_values_and_other_dataset():
    assert ex.parse_values("1, 5,10,", int) == [1, 5, 10]
    assert ex.parse_values("1,0.5,0.001", float) == [1.0, 0.5, 0.001]
    assert ex.other_dataset("glas") == "camelyon16" and ex.other_dataset("camelyon16") == "glas"


def test_complexity_table_counts_the_papers_parameters():
    cfg = load_config(None, {"backbone": "resnet50", "image_size": 224, "device": "cpu",
                             "table_methods": "layercam", "table_negev": True})
    table = ex.complexity_table(cfg, repeats=1)
    assert list(table.index) == ["LayerCAM", "LayerCAM + NEGEV", "LayerCAM + PixelCAM"]
    assert (table["params run"] == table["params paper"]).all()  # Table 11, exactly
    assert table.loc["LayerCAM + PixelCAM", "params run"] == 23_518_277
    assert (table["time run (ms)"] > 0).all()


@pytest.mark.parametrize("name", ["glas", "camelyon16"])
def test_stain_level_table(name):
    manifest = {"levels": [{"level": k, "target_image_id": f"img{k}.png", "distance": 0.1 * k,
                            "n_images": 4, "n_fallback": k - 1} for k in (1, 2)]}
    table = ex.stain_level_table(manifest)
    assert list(table.index) == [1, 2] and list(table["fallbacks"]) == [0, 1]
    assert list(table["target image"]) == ["img1.png", "img2.png"]
