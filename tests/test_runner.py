"""The batch runner: papermill execution, HTML rendering, index page, failure handling."""

import json

import nbformat
import pytest

from pixelcam.errors import ConfigError
from pixelcam.runner import discover, profile_notebooks, run_reports


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\nparams = {}\noutput_dir = "x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


GOOD = """import json, pathlib
out = pathlib.Path(output_dir); out.mkdir(parents=True, exist_ok=True)
print("epochs is", params["epochs"])
(out / "results.json").write_text(json.dumps({"headline": {"PxAP": 12.5}}))"""
BAD = "raise ValueError('synthetic failure for the test')"


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "quick").mkdir(parents=True)
    _notebook(tmp_path / "notebooks" / "01_good.ipynb", GOOD)
    _notebook(tmp_path / "notebooks" / "02_bad.ipynb", BAD)
    _notebook(tmp_path / "notebooks" / "03_params.ipynb", GOOD)
    for name in ("01_good", "02_bad"):
        (tmp_path / "params" / "quick" / f"{name}.yaml").write_text("epochs: 2\n")
    (tmp_path / "params" / "quick" / "03_params.yaml").write_text("epoch: 2\n")
    return tmp_path


def test_discover_orders_and_filters(project):
    names = [p.stem for p in discover(project / "notebooks")]
    assert names == ["01_good", "02_bad", "03_params"]
    assert [p.stem for p in discover(project / "notebooks", ["02"])] == ["02_bad"]


def test_failures_do_not_stop_the_batch(project):
    logs = []
    code = run_reports("quick", project, overrides={"epochs": 3}, log=logs.append)
    assert code == 1  # non-zero at the end because two notebooks failed
    out = project / "outputs" / "quick"
    # the good notebook ran with the override, rendered HTML without code, wrote its results
    html = (out / "01_good.html").read_text()
    assert "epochs is 3" in html and "import json, pathlib" not in html
    assert json.loads((out / "01_good" / "results.json").read_text())["headline"] == {"PxAP": 12.5}
    # the failing notebook still has its executed copy and HTML, and the index names the error
    assert (out / "02_bad.ipynb").exists() and (out / "02_bad.html").exists()
    index = (out / "index.html").read_text()
    assert "ValueError: synthetic failure for the test" in index
    assert "12.5" in index and "01_good.html" in index
    # bad params fail before a kernel starts, with the valid keys in the message
    assert "unknown key &#x27;epoch&#x27;" in index and not (out / "03_params.ipynb").exists()
    assert any("2 of 3 notebooks failed" in line for line in logs)


def test_all_good_exits_zero(project):
    assert run_reports("quick", project, only=["01"], log=lambda s: None) == 0
    assert run_reports("quick", project, only=["99"], log=lambda s: None) == 2


def test_a_dead_kernel_is_reported_as_such(project):
    _notebook(project / "notebooks" / "04_dies.ipynb", "import os\nos._exit(1)")
    (project / "params" / "quick" / "04_dies.yaml").write_text("epochs: 2\n")
    assert run_reports("quick", project, only=["04"], log=lambda s: None) == 1
    index = (project / "outputs" / "quick" / "index.html").read_text()
    assert "kernel died" in index


def test_parse_shard_and_selection():
    from pixelcam.errors import ConfigError
    from pixelcam.runner import parse_shard, shard

    assert parse_shard("2/5") == (2, 5)
    assert shard(list(range(12)), 2, 5) == [1, 6, 11]
    assert sorted(sum((shard(list(range(12)), i, 5) for i in range(1, 6)), [])) == list(range(12))
    for bad in ("0/3", "4/3", "1/0", "a/b", "3"):
        with pytest.raises(ConfigError, match="1 <= i <= N"):
            parse_shard(bad)


def test_shards_build_one_index_together(project):
    (project / "params" / "quick" / "03_params.yaml").write_text("epochs: 2\n")
    first = run_reports("quick", project, shard_spec="1/2", log=lambda _: None)
    out = project / "outputs" / "quick"
    index = (out / "index.html").read_text()
    assert first == 0 and "01_good.html" in index and "not run" in index  # 02 waits for shard 2
    assert not (out / "02_bad.html").exists()
    second = run_reports("quick", project, shard_spec="2/2", log=lambda _: None)
    index = (out / "index.html").read_text()
    assert second == 1  # 02_bad fails in shard 2
    assert "not run" not in index  # every notebook now has an outcome, whichever shard ran it
    assert "01_good.html" in index and "synthetic failure for the test" in index
    assert '<a href="01_good/results.json">results.json</a>' in index
    assert '<a href="01_good.ipynb">notebook</a>' in index


def test_missing_weights_stop_the_paper_profile_before_any_kernel(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from pixelcam.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # offline, nothing cached
    monkeypatch.delenv("PIXELCAM_GLAS_ROOT", raising=False)
    root = Path(__file__).resolve().parents[1]
    code = main(["reports", "--profile", "paper", "--only", "01", "--root", str(root),
                 "--outputs", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1  # a runtime error (not a usage error): the weights are not there
    assert len(err.splitlines()) == 1
    assert "resnet50.tv_in1k" in err and "deit_tiny_patch16_224.fb_in1k" in err
    assert "pixelcam weights fetch --profile paper" in err
    assert not list((tmp_path / "out").rglob("*.ipynb"))  # no kernel started


def test_a_profile_runs_the_notebooks_it_has_params_for(project):
    # a subset profile (as real-cpu): 03 has no params file there, so it is not part of it
    (project / "params" / "subset").mkdir()
    (project / "params" / "subset" / "01_good.yaml").write_text("epochs: 2\n")
    logs = []
    assert run_reports("subset", project, log=logs.append) == 0
    out = project / "outputs" / "subset"
    assert (out / "01_good.html").exists() and not (out / "02_bad.ipynb").exists()
    assert "02_bad" not in (out / "index.html").read_text()
    assert [p.stem for p in profile_notebooks(project, "subset")] == ["01_good"]


def test_an_unknown_profile_names_the_ones_there_are(project):
    with pytest.raises(ConfigError, match=r"profile 'nope' has no params folder .*: use one of "
                                          r"quick"):
        run_reports("nope", project)


TINY = {"synthetic_n_train": 16, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
        "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
        "image_size": 48, "resize_size": 56, "backbone": "resnet18", "batch_size": 4,
        "eval_batch_size": 8, "lr": 0.01, "device": "cpu", "state_every_s": 0}
IMPORTS = "from pixelcam.config import load_config\nfrom pixelcam.pipelines import get_baseline"
TRAIN = "run = get_baseline(load_config(None, params))\nprint(run.results['best_epoch'])"


def _cells(path, *cells):
    """A notebook of (source, tags) code cells after its parameters cell."""
    _notebook(path, "")
    nb = nbformat.read(path, as_version=4)
    nb.cells = nb.cells[:1]
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, path)


def _durations(executed):
    nb = nbformat.read(executed, as_version=4)
    return [(c.metadata.get("tags", []), c.metadata["papermill"]["duration"])
            for c in nb.cells if c.cell_type == "code" and "papermill" in c.metadata]


def test_a_cell_that_trains_has_no_time_limit_and_the_others_do(tmp_path):
    import yaml

    (tmp_path / "params" / "quick").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    _cells(tmp_path / "notebooks" / "01_train.ipynb", (IMPORTS + "\n" + TRAIN, ["trains"]))
    _cells(tmp_path / "notebooks" / "02_sleep.ipynb", ("import time\ntime.sleep(5)", []))
    (tmp_path / "params" / "quick" / "01_train.yaml").write_text(
        yaml.safe_dump({**TINY, "epochs": 3, "cache_dir": str(tmp_path / "cache")}))
    (tmp_path / "params" / "quick" / "02_sleep.yaml").write_text("{}\n")
    logs = []
    assert run_reports("quick", tmp_path, cell_timeout=2, log=logs.append) == 1
    out = tmp_path / "outputs" / "quick"
    train = json.loads((out / "01_train.status.json").read_text())
    assert train["status"] == "ok", logs
    (tags, seconds), = [d for d in _durations(out / "01_train.ipynb") if "trains" in d[0]]
    assert seconds > 2  # longer than the limit, which it does not have
    sleep = json.loads((out / "02_sleep.status.json").read_text())
    assert sleep["status"] == "timed out"
    assert "ran past --cell-timeout 2 s (it trains nothing" in sleep["error"]


def test_a_training_cell_past_train_timeout_keeps_its_resume_state(tmp_path):
    import torch
    import yaml

    (tmp_path / "params" / "quick").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    # the first cell (no limit) imports and writes the data; the tagged cell trains 40 epochs,
    # far more than its 5 s allow
    prepare = (IMPORTS + "\nfrom pixelcam.builders import data_paths\n"
               "data_paths(load_config(None, params))")
    _cells(tmp_path / "notebooks" / "01_train.ipynb", (prepare, []), (TRAIN, ["trains"]))
    epochs = 40
    (tmp_path / "params" / "quick" / "01_train.yaml").write_text(
        yaml.safe_dump({**TINY, "epochs": epochs, "cache_dir": str(tmp_path / "cache")}))
    logs = []
    assert run_reports("quick", tmp_path, train_timeout=5, log=logs.append) == 1
    status = json.loads((tmp_path / "outputs" / "quick" / "01_train.status.json").read_text())
    assert status["status"] == "timed out"
    assert "trains and ran past --train-timeout 5 s" in status["error"]
    assert "keeps its resume state" in status["error"]
    assert "run the same command again" in status["error"]
    (state,) = (tmp_path / "cache" / "runs").glob("baseline-*/state.pt")
    epoch = torch.load(state, weights_only=False)["epoch"]
    assert 0 <= epoch < epochs  # the state of an epoch it finished (at least the first check)
    assert run_reports("quick", tmp_path, log=logs.append) == 0  # no limit: it goes on
    log = (state.parent / "train.log").read_text()
    assert f"resuming after epoch {epoch}" in log
    assert f"epoch {epochs:3d}/{epochs}" in log
