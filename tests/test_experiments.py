"""The paper's experiments as functions: pairing, t-tests, tables beside the paper, Table 11."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pixelcam import experiments as ex
from pixelcam.config import load_config
from pixelcam.report import main_table
from pixelcam.store import Run


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


# --- seeds: every row once per seed ---------------------------------------------------------

def _seeded(kind, method, seed, pxap, cl=100.0):
    bump = 1.0 if kind == "pixelcam" else 0.0  # paired samples whose differences vary
    test = {"pxap": pxap, "accuracy": cl, "resampled_pxap": [pxap - 1, pxap, pxap + 2 + bump],
            "per_image": {"ap": [pxap - 5, pxap + bump, pxap + 1]}}
    return Run(kind, f"{kind}-{seed}", Path("."), {"config": {"method": method, "seed": seed},
                                                   "test": {"b-loc": test}}, reused=True)


# (baseline, PixelCAM) PxAP of LayerCAM for seeds 0, 1, 2
BASE, PIX = [60.0, 64.0, 59.0], [70.0, 71.5, 66.0]


def _three_seeds():
    """Seed-major, as dataset_runs(cfg, all_seeds=True) gives them; U-Net has no CL."""
    return [run for seed in range(3) for run in (
        _seeded("baseline", "layercam", seed, BASE[seed]),
        _seeded("pixelcam", "layercam", seed, PIX[seed], cl=90.0 + seed),
        _seeded("unet", "layercam", seed, 90.0 + seed, cl=float("nan")))]


def test_mean_std_formatting():
    from pixelcam.report import format_mean_std, mean_std

    assert format_mean_std([70.0, 71.5, 66.0]) == "69.2 ± 2.8"  # std with ddof=1
    mean, std = mean_std([70.0, 71.5, 66.0])
    assert mean == pytest.approx(np.mean(PIX)) and std == pytest.approx(np.std(PIX, ddof=1))
    assert format_mean_std([1.25, 1.35], digits=2) == "1.30 ± 0.07"
    assert format_mean_std([80.0]) == "80.0 ± n/a"  # one seed: no standard deviation
    assert format_mean_std([float("nan")] * 2) is None  # CL of the U-Net: n/a, shown empty
    assert format_mean_std([50.0, float("nan"), 52.0]) == "51.0 ± 1.4"


def test_main_table_shows_mean_and_std_over_seeds():
    cfg = load_config(None, {"seeds": "0,1,2"})
    table = main_table(_three_seeds(), cfg)
    assert list(table.index) == ["LayerCAM", "LayerCAM + PixelCAM", "U-Net"]
    assert list(table.columns) == ["PxAP paper", "PxAP run", "PxAP diff", "CL paper", "CL run",
                                   "CL diff"]
    row = table.loc["LayerCAM + PixelCAM"]
    assert row["PxAP run"] == "69.2 ± 2.8" and row["CL run"] == "91.0 ± 1.0"
    assert row["PxAP diff"] == round(69.2 - row["PxAP paper"], 1)  # the mean against the paper
    assert pd.isna(table.loc["U-Net", "CL run"]) and pd.isna(table.loc["U-Net", "CL diff"])
    print("\n" + table.to_string())


def test_one_seed_tables_are_the_single_run_tables():
    cfg = load_config(None, {})
    runs = [r for r in _three_seeds() if ex.run_seed(r) == 1]
    expected = ex.comparison([(ex.method_label(r), ex.scores(r.test("b-loc"))) for r in runs],
                             "table1", "glas")
    pd.testing.assert_frame_equal(main_table(runs, cfg), expected)
    assert main_table(runs, cfg).loc["LayerCAM", "PxAP run"] == 64.0  # a number, as before
    assert [r.key for r in ex.first_seed(_three_seeds())] == ["baseline-0", "pixelcam-0",
                                                              "unet-0"]


def test_seed_table_has_every_seeds_number():
    cfg = load_config(None, {"seeds": "0,1,2"})
    table = ex.seed_table(_three_seeds(), cfg)
    assert list(table.columns) == [
        "PxAP seed 0", "PxAP seed 1", "PxAP seed 2", "PxAP mean", "PxAP std",
        "CL seed 0", "CL seed 1", "CL seed 2", "CL mean", "CL std"]
    assert table.loc["LayerCAM"].iloc[:5].tolist() == [60.0, 64.0, 59.0, 61.0, 2.6]
    assert pd.isna(table.loc["U-Net", "CL mean"]) and pd.isna(table.loc["U-Net", "CL std"])
    print("\n" + table.to_string())


def test_ttest_over_seeds_against_scipy():
    cfg = load_config(None, {"seeds": "0,1,2"})
    runs = _three_seeds()
    assert [(ex.run_seed(b), ex.run_seed(p)) for b, p in ex.pairs(runs)] == [(0, 0), (1, 1),
                                                                            (2, 2)]
    table = ex.ttest_table(runs, cfg)
    assert list(table.index) == ["LayerCAM"]
    row = table.loc["LayerCAM"]
    expected = stats.ttest_rel(PIX, BASE)  # PixelCAM first: t > 0 means PixelCAM is better
    assert row["t over seeds"] == round(expected.statistic, 2) > 0
    assert row["p over seeds"] == float(f"{expected.pvalue:.2g}") and row["df over seeds"] == 2
    # the resampled and per-image tests are those of the first seed's pair
    first = ex.ttest_table(runs[:3], cfg.replace(seeds=""))
    for column in ("t resampled", "df resampled", "t per image", "df per image"):
        assert row[column] == first.loc["LayerCAM", column]
    # one seed: no test over seeds
    assert np.isnan(first.loc["LayerCAM", "t over seeds"]) and \
        first.loc["LayerCAM", "df over seeds"] == 0
    print("\n" + table.to_string())


def test_seed_named_runs_keep_the_single_seed_names():
    names = ex.seed_named_runs(_three_seeds(), "glas")
    assert list(names)[:3] == ["glas / LayerCAM", "glas / LayerCAM + PixelCAM", "glas / U-Net"]
    assert "glas / LayerCAM (seed 2)" in names and len(names) == 9


def test_two_seeds_train_every_row_twice_seed_0_is_the_single_run(tmp_path):
    tiny = {"synthetic_n_train": 8, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
            "synthetic_n_valpx_per_class": 1, "synthetic_width": 48, "synthetic_height": 40,
            "image_size": 32, "resize_size": 40, "backbone": "resnet18", "pretrained": "false",
            "epochs": 1, "batch_size": 4, "eval_batch_size": 8, "device": "cpu",
            "table_methods": "layercam", "ttest_resamples": 3, "cache_dir": str(tmp_path)}
    single = ex.dataset_runs(load_config(None, tiny), log=lambda s: None)["glas"]
    cfg = load_config(None, {**tiny, "seeds": "0,1"})
    logs: list[str] = []
    runs = ex.dataset_runs(cfg, log=logs.append, all_seeds=True)["glas"]
    assert [(r.kind, ex.run_seed(r)) for r in runs] == [
        ("baseline", 0), ("pixelcam", 0), ("baseline", 1), ("pixelcam", 1)]
    assert [r.dir for r in runs[:2]] == [r.dir for r in single]  # seed 0: the same cache entry
    assert runs[0].reused and runs[1].reused and not runs[2].reused and not runs[3].reused
    assert sum("training" in line for line in logs) == 2  # only seed 1's two runs
    # without all_seeds: the first seed's rows (what the other tables and notebooks use)
    assert [r.dir for r in ex.dataset_runs(cfg, log=lambda s: None)["glas"]] == [
        r.dir for r in single]
    table = main_table(runs, cfg)
    assert " ± " in table.loc["LayerCAM", "PxAP run"]
    assert ex.ttest_table(runs, cfg).loc["LayerCAM", "df over seeds"] == 1


def test_verify_recomputes_the_multi_seed_tables(tmp_path):
    import json
    import time

    from pixelcam.report import rates_table, write_results
    from pixelcam.store import load_run
    from pixelcam.verify import verify

    rates = {"TP*": 50.0, "FN*": 50.0, "TN*": 90.0, "FP*": 10.0}
    runs = []
    for run in _three_seeds():  # stored run directories, as the run cache holds them
        run.results["test"]["b-loc"].update(rates=rates, rates_valpx_threshold=rates)
        run.dir = tmp_path / "runs" / run.key
        run.dir.mkdir(parents=True)
        (run.dir / "results.json").write_text(json.dumps(
            {"kind": run.kind, "key": run.key, **run.results}))
        runs.append(load_run(run.dir))
    cfg = load_config(None, {"seeds": "0,1,2", "cache_dir": str(tmp_path)})
    metrics = {"table1@glas": main_table(runs, cfg), "table1 seeds@glas": ex.seed_table(runs, cfg),
               "table6@glas": rates_table(ex.first_seed(runs), cfg)}
    metrics = {k: v.reset_index().to_dict(orient="records") for k, v in metrics.items()}
    path = write_results(tmp_path / "out" / "01_x", cfg, time.time(), metrics=metrics,
                         headline={}, runs=ex.seed_named_runs(runs, "glas"))
    problems, checked = verify(tmp_path / "out")
    assert problems == [] and checked == 3 * 7 + 3 * 11 + 3 * 3 * 6  # table6: the first seed
    payload = json.loads(path.read_text())
    payload["metrics"]["table1 seeds@glas"][1]["PxAP seed 2"] += 0.1
    payload["metrics"]["table1@glas"][0]["PxAP run"] = "61.0 ± 2.5"
    path.write_text(json.dumps(payload))
    problems, _ = verify(tmp_path / "out")
    assert len(problems) == 2 and "PxAP seed 2" in problems[1] and "61.0 ± 2.5" in problems[0]
