"""The report notebooks: edited as notebooks, committed without outputs, sharing their
conventions (parameters cell, start cell, results cell); params for every profile; every notebook
executed top to bottom through papermill on the smoke profile."""

import ast
import json
import re
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from pixelcam.config import load_config
from pixelcam.runner import discover, run_notebook, trains

ROOT = Path(__file__).resolve().parents[1]
NAMES = [p.stem for p in discover(ROOT / "notebooks")]


REPORTS = [n for n in NAMES if n != "00_explore"]


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _calls(source: str) -> dict[str, ast.Call]:
    """Function calls of a cell by name (`start(...)`, `display(...)`), first of each."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            out.setdefault(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""),
                           node)
    return out


def test_twelve_notebooks_one_per_paper_section_and_one_to_explore():
    assert NAMES == [
        "00_explore",
        "01_main_tables", "02_ood", "03_stain_shift", "04_ablation_depth", "05_ablation_n",
        "06_ablation_lambda", "07_ablation_model_selection", "08_ablation_sampling",
        "09_complexity", "10_backbones", "11_external_pseudo_labels", "12_feature_tsne"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_hold_no_outputs(name):
    """Notebooks are the source: saved from JupyterLab, they must be cleared of outputs
    (`make clean-notebooks`, or Edit > Clear Outputs of All Cells, before committing)."""
    from pixelcam.nbclean import outputs_of

    assert outputs_of(_read(name)) == [], f"{name}.ipynb: run `make clean-notebooks`"


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_share_the_parameters_and_start_cells(name):
    """papermill injects `profile`, `params` and `output_dir` after the cell tagged
    "parameters"; the next code cell loads the profile's params with `start`."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one code cell tagged 'parameters'"
    assigned = {t.id for node in ast.parse(code[tagged[0]].source).body
                if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert {"profile", "params", "output_dir"} <= assigned, name
    start = _calls(code[tagged[0] + 1].source).get("start")
    assert start is not None, f"{name}: the cell after the parameters calls start(...)"
    assert isinstance(start.args[0], ast.Constant) and start.args[0].value == name
    assert [a.id for a in start.args[1:]] == ["profile", "params", "output_dir"], name


@pytest.mark.parametrize("name", REPORTS)
def test_reports_end_with_results_runs_and_provenance(name):
    cells = _read(name).cells
    assert cells[-2].cell_type == "markdown" and "Results and provenance" in cells[-2].source
    calls = _calls(cells[-1].source)
    assert {"write_results", "run_table", "provenance_markdown"} <= set(calls), name
    # headlines name what they measure, with a unit
    for cell in cells:
        for line in cell.source.splitlines():
            if line.lstrip().startswith("headline[") or line.startswith("headline = {f"):
                assert "(%)" in line or "(ms)" in line, f"{name}: a headline without its unit"


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
FIGURES = {"00_explore": 1, "01_main_tables": 8, "02_ood": 4, "03_stain_shift": 4,
           "09_complexity": 1, "12_feature_tsne": 6}


def test_every_notebook_runs_on_the_smoke_profile(smoke_plain):
    """CI's papermill run of all twelve notebooks on tiny synthetic data (about 2 minutes)."""
    out, cache = smoke_plain.out, smoke_plain.cache
    failed = [line for line in smoke_plain.logs if "failed" in line or "bad params" in line]
    assert smoke_plain.code == 0, failed
    index = (out / "index.html").read_text()
    for name in NAMES:
        payload = json.loads((out / name / "results.json").read_text())
        assert payload["provenance"]["params"]["data_root"] == "synthetic"
        assert f'href="{name}.html"' in index
        html = (out / f"{name}.html").read_text()
        assert "from pixelcam" not in html  # code hidden
        # logs, warnings and paths of this machine stay out of a shared report
        assert not re.search(r"\] epoch +\d+/\d+", html), f"{name}: epoch log lines in the report"
        assert "Warning:" not in html and "WARNING" not in html, f"{name}: a warning in the report"
        for path in (str(cache.parent), str(ROOT), ".cache/"):
            assert path not in html, f"{name}: the report names the path {path}"
        assert len(html) < 3_000_000, f"{name}: {len(html)} bytes"
        if name in REPORTS or name == "00_explore":
            assert "Runs used (" in html or "trains no model" in html, name
        executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        shown = [o.data for c in executed.cells if c.cell_type == "code"
                 for o in c.outputs if "data" in o]
        # figures are JPEG (pixelcam.notebook: a few MB per report), never PNG
        assert not [d for d in shown if "image/png" in d], f"{name}: a PNG figure"
        images = [d["image/jpeg"] for d in shown if "image/jpeg" in d]
        # the paper's figures, each shown once (01 adds the seeds figure of each dataset)
        assert len(images) == FIGURES.get(name, 0), name
        assert all(image.replace("\n", "")[-80:] in html for image in images)  # embedded
        as_text = [d["text/plain"] for d in shown
                   if d.get("text/plain", "").startswith("<Figure") and "image/jpeg" not in d]
        assert not as_text, f"{name}: figures shown as text, not images: {as_text}"
        for cell in executed.cells:
            images = [o.data["image/jpeg"] for o in cell.get("outputs", [])
                      if "image/jpeg" in o.get("data", {})]
            assert len(images) == len(set(images)), f"{name}: a figure is shown twice"
    # `reports --plan` names exactly the runs that the notebooks trained, each once, as cached
    from pixelcam.plan import notebook_configs, plan_trainings

    planned = plan_trainings(notebook_configs("smoke", ROOT, NAMES, {"cache_dir": str(cache)}))
    trained = {d.name for d in (cache / "runs").iterdir() if d.is_dir()}
    assert sorted(t.run.dir.name for t in planned) == sorted(trained)
    assert all(t.run.cached for t in planned)


def _cell_times(executed: nbformat.NotebookNode) -> list[tuple[datetime, datetime, bool]]:
    """(start, end, tagged `trains`) of each code cell papermill ran."""
    out = []
    for cell in executed.cells:
        meta = cell.metadata.get("papermill", {})
        if cell.cell_type == "code" and meta.get("start_time"):
            out.append((datetime.fromisoformat(meta["start_time"]),
                        datetime.fromisoformat(meta["end_time"]), trains(cell)))
    return out


def test_every_training_of_the_smoke_run_happened_in_a_cell_tagged_trains(smoke_plain):
    """The runner lifts the time limit of a cell tagged `trains` (and only of those): every run
    the notebooks trained started inside such a cell, and every notebook that trains has one."""
    cells = {name: _cell_times(nbformat.read(smoke_plain.out / f"{name}.ipynb", as_version=4))
             for name in NAMES}
    runs = sorted((smoke_plain.cache / "runs").glob("*/results.json"))
    assert runs
    for path in runs:
        started = datetime.fromisoformat(json.loads(path.read_text())["provenance"]["started"])
        where = [(name, tagged) for name, times in cells.items()
                 for start, end, tagged in times if start <= started <= end]
        assert len(where) == 1, (path.parent.name, where)
        assert where[0][1], f"{path.parent.name} trained in an untagged cell of {where[0][0]}"
    for name in NAMES:
        tagged = [c for c in _read(name).cells if trains(c)]
        assert bool(tagged) == (name != "09_complexity"), name


REAL_CPU = sorted((ROOT / "params" / "real-cpu").glob("[!_]*.yaml"))


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


SHOWS_A_TABLE = re.compile(r"display\([^)]*(table\d*|summary|pivot_table|_table\()", re.S)


@pytest.mark.parametrize("name", NAMES)
def test_every_table_says_what_its_columns_mean(name):
    """The markdown cell above each cell that shows a table says what its columns mean."""
    cells = _read(name).cells
    shown = 0
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not SHOWS_A_TABLE.search(cell.source):
            continue
        shown += 1
        above = next(c for c in reversed(cells[:i]) if c.cell_type == "markdown")
        assert "**Columns**" in above.source, f"{name}, cell {i}: no **Columns** above it"
    assert shown or name == "12_feature_tsne", name
    assert "official-code" + "-notes" not in json.dumps([c.source for c in cells])


@pytest.mark.parametrize("name", NAMES)
def test_the_parameters_cell_shows_an_override_and_what_retrains(name):
    params = next(c for c in _read(name).cells if "parameters" in c.metadata.get("tags", []))
    assert 'params = {"epochs": 3}' in params.source and "retrain" in params.source
