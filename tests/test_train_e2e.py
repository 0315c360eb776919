"""End to end on a tiny synthetic dataset: baseline -> stored CAMs -> PixelCAM -> test metrics."""

import json
import math

import pytest
import torch

from pixelcam.config import load_config
from pixelcam.evaluate import resolve_device
from pixelcam.report import main_table
from pixelcam.runs import dataset, get_baseline, get_negev, get_or_train, get_unet, new_model
from pixelcam.train import PhaseSpec, fit

TINY = {
    "synthetic_n_train": 8, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
    "image_size": 48, "resize_size": 56, "backbone": "resnet18", "epochs": 2, "batch_size": 4,
    "eval_batch_size": 8, "lr": 0.01, "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, {**TINY, "cache_dir": str(cache)})
    logs: list[str] = []
    runs = get_or_train(cfg, log=logs.append)
    return cfg, runs, logs


def test_both_phases_train_and_evaluate(trained):
    cfg, runs, logs = trained
    for kind in ("baseline", "pixelcam"):
        run = runs[kind]
        assert run.kind == kind and not run.reused
        assert (run.dir / "results.json").exists()
        assert len(run.results["history"]) == cfg.epochs + 1  # epoch 0 is a candidate
        for ckpt in ("b-loc", "b-cl"):
            test = run.test(ckpt)
            assert 0.0 <= test["pxap"] <= 100.0 and 0.0 <= test["accuracy"] <= 100.0
            assert test["n_images"] == 4
            assert set(test["rates"]) >= {"TP*", "FN*", "TN*", "FP*"}
            assert abs(test["rates"]["TP*"] + test["rates"]["FN*"] - 100) < 1e-6
            assert 0 <= run.results["best_epoch"][ckpt] <= cfg.epochs
    assert runs["baseline"].map_method == "layercam"
    assert runs["pixelcam"].map_method == "pixelcam"
    assert runs["pixelcam"].results["baseline_key"] == runs["baseline"].key
    (path,) = runs["baseline"].dir.glob("cams-b-loc-*.pt")  # named by the data it covers
    cams = torch.load(path, weights_only=True)
    assert len(cams) == 8
    # CAMs are stored at feature resolution (48 / 8 = 6) and min-max normalised
    for cam in cams.values():
        assert cam.shape == (6, 6) and float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    assert any("stored 8 train CAMs" in line for line in logs)


def test_second_call_reuses_the_runs(trained):
    cfg, runs, _ = trained
    stamp = (runs["pixelcam"].dir / "results.json").stat().st_mtime_ns
    logs: list[str] = []
    again = get_or_train(cfg, log=logs.append)
    assert again["baseline"].reused and again["pixelcam"].reused
    assert (runs["pixelcam"].dir / "results.json").stat().st_mtime_ns == stamp
    assert any("reusing finished run" in line for line in logs)
    # a PixelCAM-only change trains a new PixelCAM model on the same baseline
    other = get_or_train(cfg.replace(lam=0.5), log=logs.append)
    assert other["baseline"].reused and not other["pixelcam"].reused


def test_same_params_same_numbers(trained, tmp_path):
    cfg, runs, _ = trained
    fresh = get_baseline(cfg.replace(cache_dir=str(tmp_path)), log=lambda s: None)
    assert fresh.results["history"] == runs["baseline"].results["history"]
    assert fresh.results["test"] == runs["baseline"].results["test"]


def test_resume_gives_the_same_weights(trained, tmp_path):
    cfg, _, _ = trained
    device = resolve_device("cpu")
    kw = dict(train_ds=dataset(cfg, "train", train=True), valcl_ds=dataset(cfg, "valcl"),
              valpx_ds=dataset(cfg, "valpx"), device=device, log=lambda s: None)
    straight = new_model(cfg, pixel=False)
    fit(straight, cfg, PhaseSpec("baseline", "layercam", 2), out_dir=tmp_path / "a", **kw)
    # stop after one epoch, then rerun the two-epoch phase in the same directory: it resumes
    fit(new_model(cfg, pixel=False), cfg, PhaseSpec("baseline", "layercam", 1),
        out_dir=tmp_path / "b", **kw)
    resumed = new_model(cfg, pixel=False)
    result = fit(resumed, cfg, PhaseSpec("baseline", "layercam", 2), out_dir=tmp_path / "b", **kw)
    assert result.resumed_from == 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist_a == hist_b


@pytest.mark.parametrize("method,variant,map_name", [
    ("gradcampp", "official", "gradcampp_official"), ("gradcampp", "paper", "gradcampp"),
    ("deepmil", "official", "deepmil"), ("cam", "official", "cam"), ("sat", "official", "sat")])
def test_every_baseline_trains_with_pixelcam(method, variant, map_name, tmp_path):
    size = {"image_size": 224, "resize_size": 256} if method == "sat" else {}
    cfg = load_config(None, {**TINY, **size, "epochs": 1, "method": method,
                             "gradcampp_variant": variant, "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    assert runs["baseline"].map_method == map_name
    if method == "sat":  # the baseline trains with SAT's two extra losses, PixelCAM without
        assert {"loss_area", "loss_norm"} <= set(runs["baseline"].results["history"][1])
        assert "loss_area" not in runs["pixelcam"].results["history"][1]
    for run in runs.values():
        test = run.test("b-loc")
        assert 0.0 <= test["pxap"] <= 100.0 and test["n_images"] == 4


def test_unet_and_negev_train_and_evaluate(trained):
    cfg, runs, _ = trained
    unet = get_unet(cfg, log=lambda s: None)
    test = unet.test("b-loc")
    assert 0.0 <= test["pxap"] <= 100.0 and math.isnan(test["accuracy"])  # CL is n/a
    negev = get_negev(cfg, log=lambda s: None)
    assert negev.results["baseline_key"] == runs["baseline"].key
    # the classifier is frozen: NEGEV's accuracy is its baseline's at the init checkpoint
    assert negev.results["history"][0]["valcl_accuracy"] == negev.results["history"][-1][
        "valcl_accuracy"]
    assert 0.0 <= negev.test("b-loc")["pxap"] <= 100.0
    table = main_table([runs["baseline"], runs["pixelcam"], negev, unet], cfg)
    assert list(table.index) == ["LayerCAM", "LayerCAM + PixelCAM", "LayerCAM + NEGEV", "U-Net"]
    assert table.loc["U-Net", "PxAP paper"] == 95.8 and math.isnan(table.loc["U-Net", "CL run"])


@pytest.mark.parametrize("backbone,pretrained,size", [
    ("vgg16", "false", 48), ("inception_v3", "false", 64), ("efficientnet_lite0", "package", 48)])
def test_other_backbones_train(backbone, pretrained, size, tmp_path):
    cfg = load_config(None, {**TINY, "epochs": 1, "backbone": backbone, "pretrained": pretrained,
                             "image_size": size, "resize_size": size + 8,
                             "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    for run in runs.values():
        assert 0.0 <= run.test("b-loc")["pxap"] <= 100.0


def test_verify_finds_a_tampered_number(trained, tmp_path):
    import time

    from pixelcam.report import rates_table, write_results
    from pixelcam.verify import verify

    cfg, runs, _ = trained
    order = [runs["baseline"], runs["pixelcam"]]
    metrics = {"table1": main_table(order, cfg).reset_index().to_dict(orient="records"),
               "table6": rates_table(order, cfg).reset_index().to_dict(orient="records")}
    path = write_results(tmp_path / "01_x", cfg, time.time(), metrics=metrics, headline={},
                         runs={"a": order[0], "b": order[1]})
    problems, checked = verify(tmp_path)
    assert problems == [] and checked == 2 * 7 + 6 * 6
    payload = json.loads(path.read_text())
    payload["metrics"]["table1"][1]["PxAP run"] += 0.1
    path.write_text(json.dumps(payload))
    problems, _ = verify(tmp_path)
    assert len(problems) == 1 and "LayerCAM + PixelCAM" in problems[0] and "PxAP run" in problems[0]
