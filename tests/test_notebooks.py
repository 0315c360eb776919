"""The report notebooks: built from notebooks/build.py, params for every profile, and every
notebook executed top to bottom through papermill on the smoke profile."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from pixelcam.config import load_config
from pixelcam.runner import discover, run_notebook, run_reports

ROOT = Path(__file__).resolve().parents[1]
NAMES = [p.stem for p in discover(ROOT / "notebooks")]


def _build_module():
    spec = importlib.util.spec_from_file_location("build", ROOT / "notebooks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twelve_notebooks_one_per_paper_section():
    assert NAMES == [
        "01_main_tables", "02_ood", "03_stain_shift", "04_ablation_depth", "05_ablation_n",
        "06_ablation_lambda", "07_ablation_model_selection", "08_ablation_sampling",
        "09_complexity", "10_backbones", "11_external_pseudo_labels", "12_feature_tsne"]


def test_committed_notebooks_are_what_build_writes():
    built = _build_module().build()
    assert sorted(built) == NAMES
    for name, nb in built.items():
        committed = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        assert committed.strip() == nbformat.writes(nb).strip(), \
            f"{name}.ipynb differs from notebooks/build.py: run `python notebooks/build.py`"
        cells = nbformat.reads(committed, as_version=4).cells
        assert all(not c.get("outputs") for c in cells if c.cell_type == "code")
        assert cells[1].metadata.get("tags") == ["parameters"]


@pytest.mark.parametrize("profile", ["quick", "smoke", "paper"])
def test_every_notebook_has_valid_params(profile, monkeypatch, tmp_path):
    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(tmp_path / "glas"))
    monkeypatch.setenv("PIXELCAM_CAMELYON16_ROOT", str(tmp_path / "camelyon"))
    for name in NAMES:
        cfg = load_config(ROOT / "params" / profile / f"{name}.yaml")
        for dataset in cfg.dataset_names:
            dcfg = cfg.for_dataset(dataset)
            if profile == "paper":
                assert dcfg.data_root == str(tmp_path / ("glas" if dataset == "glas"
                                                         else "camelyon"))
                assert (dcfg.backbone, dcfg.image_size, dcfg.batch_size) == ("resnet50", 224, 32)
                assert dcfg.epochs == {"glas": 1000, "camelyon16": 20}[dataset]
            else:
                assert dcfg.data_root == "synthetic" and dcfg.device == "cpu"


def test_quick_notebooks_share_their_models():
    """Every quick file trains with the same settings, so notebook 02 reuses notebook 01's runs."""
    from pixelcam.config import baseline_key

    keys = set()
    for name in NAMES:
        if name in ("09_complexity", "10_backbones"):  # other backbones: nothing to share
            continue
        cfg = load_config(ROOT / "params" / "quick" / f"{name}.yaml")
        keys.add(baseline_key(cfg.for_dataset("glas").replace(method="layercam",
                                                             backbone="resnet18")))
    assert len(keys) == 1


def test_paper_profile_without_data_stops_before_the_kernel(monkeypatch, tmp_path):
    monkeypatch.delenv("PIXELCAM_GLAS_ROOT", raising=False)
    monkeypatch.delenv("PIXELCAM_CAMELYON16_ROOT", raising=False)
    result = run_notebook(ROOT / "notebooks" / "02_ood.ipynb",
                          ROOT / "params" / "paper" / "02_ood.yaml", tmp_path, "paper", ROOT,
                          log=lambda _: None)
    assert result.status == "bad params"
    assert "pixelcam data prepare glas" in result.error and "PIXELCAM_GLAS_ROOT" in result.error
    assert result.seconds < 5


# figures per notebook on the smoke profile (both datasets, one method or two)
FIGURES = {"01_main_tables": 8, "02_ood": 4, "03_stain_shift": 4, "09_complexity": 1,
           "12_feature_tsne": 6}


def test_every_notebook_runs_on_the_smoke_profile(tmp_path):
    """CI's papermill run of all twelve notebooks on tiny synthetic data (about 3 minutes)."""
    logs = []
    code = run_reports("smoke", ROOT, outputs=tmp_path / "out",
                       overrides={"cache_dir": str(tmp_path / "cache")}, log=logs.append)
    out = tmp_path / "out" / "smoke"
    failed = [line for line in logs if "failed" in line or "bad params" in line]
    assert code == 0, failed
    index = (out / "index.html").read_text()
    for name in NAMES:
        payload = json.loads((out / name / "results.json").read_text())
        assert payload["provenance"]["params"]["data_root"] == "synthetic"
        assert f'href="{name}.html"' in index
        html = (out / f"{name}.html").read_text()
        assert "from pixelcam" not in html  # code hidden
        executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        shown = [o.data for c in executed.cells if c.cell_type == "code"
                 for o in c.outputs if "data" in o]
        images = [d["image/png"] for d in shown if "image/png" in d]
        # the paper's figures, each shown once (01 adds the seeds figure of each dataset)
        assert len(images) == FIGURES.get(name, 0), name
        assert all(image.replace("\n", "")[-80:] in html for image in images)  # embedded
        as_text = [d["text/plain"] for d in shown
                   if d.get("text/plain", "").startswith("<Figure") and "image/png" not in d]
        assert not as_text, f"{name}: figures shown as text, not images: {as_text}"
        for cell in executed.cells:
            images = [o.data["image/png"] for o in cell.get("outputs", [])
                      if "image/png" in o.get("data", {})]
            assert len(images) == len(set(images)), f"{name}: a figure is shown twice"
    # `reports --plan` names exactly the runs that the notebooks trained, each once, as cached
    from pixelcam.plan import notebook_configs, plan_trainings

    planned = plan_trainings(notebook_configs("smoke", ROOT, NAMES,
                                              {"cache_dir": str(tmp_path / "cache")}))
    trained = {d.name for d in (tmp_path / "cache" / "runs").iterdir() if d.is_dir()}
    assert sorted(t.run.dir.name for t in planned) == sorted(trained)
    assert all(t.run.cached for t in planned)


REAL_CPU = sorted((ROOT / "params" / "real-cpu").glob("*.yaml"))


def test_real_cpu_profile_is_glas_offline_and_shares_its_models(monkeypatch, tmp_path):
    from pixelcam.config import baseline_key
    from pixelcam.weights import profile_weights

    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(tmp_path / "glas"))
    names = [p.stem for p in REAL_CPU]
    assert "01_main_tables" in names and set(names) <= set(NAMES)
    keys = set()
    for path in REAL_CPU:
        cfg = load_config(path)
        dcfg = cfg.for_dataset("glas")
        assert cfg.dataset_names == ["glas"] and dcfg.data_root == str(tmp_path / "glas")
        assert (dcfg.backbone, dcfg.pretrained, dcfg.device) == ("efficientnet_lite0", "package",
                                                                 "cpu")
        assert dcfg.seed_list == [0, 1, 2]
        keys.add(baseline_key(dcfg.replace(method="layercam")))
    assert len(keys) == 1  # every notebook reuses the same LayerCAM baseline
    assert profile_weights("real-cpu", ROOT) == []  # nothing to fetch: the weights are a package
    assert "sat" not in load_config(ROOT / "params" / "real-cpu" / "01_main_tables.yaml").methods
