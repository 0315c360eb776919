"""Fault tolerance: a training process killed with SIGKILL resumes to the same numbers; two
processes on one config train it once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

TINY = {
    "synthetic_n_train": 16, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
    "image_size": 48, "resize_size": 56, "backbone": "resnet18", "epochs": 4, "batch_size": 4,
    "eval_batch_size": 8, "lr": 0.01, "device": "cpu",
}
EVERY_EPOCH = {"state_every_s": 0}  # the resume state after each epoch (default: once a minute)


def _params(tmp_path: Path, name: str, **extra) -> tuple[Path, Path]:
    cache = tmp_path / f"cache-{name}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, **extra, "cache_dir": str(cache)}))
    return path, cache


def _train(params: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pixelcam.cli", "train", "--params", str(params)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _results(cache: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((cache / "runs").glob("*/results.json")):
        r = json.loads(path.read_text())
        out[r["kind"]] = {"test": r["test"], "best": r["best_epoch"], "history": r["history"]}
    return out


def _wait_for_epoch(state: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.stdout.read()
        if state.exists():
            try:
                if torch.load(state, weights_only=False)["epoch"] >= epoch:
                    return
            except (EOFError, RuntimeError):  # never: writes are atomic; tolerate anyway
                pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The numbers of an uninterrupted run, which every interrupted one must end with."""
    params, cache = _params(tmp_path_factory.mktemp("ref"), "ref")
    proc = _train(params)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return _results(cache)


def test_sigkill_mid_training_resumes_to_the_same_result(tmp_path, reference):
    # the state after every epoch, so that the kill lands between two writes mid-training
    params, cache = _params(tmp_path, "killed", **EVERY_EPOCH)
    proc = _train(params)
    (cache / "runs").mkdir(parents=True, exist_ok=True)
    state = None
    end = time.time() + 120
    while state is None and time.time() < end:
        found = list((cache / "runs").glob("baseline-*/state.pt"))
        state = found[0] if found else None
        time.sleep(0.05)
    assert state is not None
    _wait_for_epoch(state, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((cache / "runs").glob("*/results.json"))  # nothing looks finished
    rerun = _train(params)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    assert "resuming after epoch" in out
    assert _results(cache) == reference


def test_sigterm_writes_the_state_and_exits_143_then_resumes(tmp_path, reference):
    """A scheduler's SIGTERM (SLURM's pre-emption) with the state written only once a minute:
    the epoch in progress finishes, the state is written at once, the process exits 143, and
    the rerun resumes to the numbers of an uninterrupted run."""
    params, cache = _params(tmp_path, "terminated", state_every_s=3600)
    proc = _train(params)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[baseline] epoch   1/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM after epoch" in out and "run the same command again" in out
    (state,) = (cache / "runs").glob("baseline-*/state.pt")
    epoch = torch.load(state, weights_only=False)["epoch"]
    assert 1 <= epoch < TINY["epochs"], out  # written at the SIGTERM, not at the end
    assert not list((cache / "runs").glob("*/results.json"))
    rerun = _train(params)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    assert f"resuming after epoch {epoch}" in out
    assert _results(cache) == reference


def test_concurrent_processes_train_once(tmp_path):
    params, cache = _params(tmp_path, "twice")
    first, second = _train(params), _train(params)
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    trained = sum(o.count("[baseline] training") for o in outs)
    reused = sum(o.count("[baseline] reusing finished run") for o in outs)
    assert (trained, reused) == (1, 1), outs
    assert len(list((cache / "runs").glob("baseline-*"))) == 1
    assert os.path.exists(next((cache / "runs").glob("baseline-*")) / "results.json")


def test_damaged_cache_files_name_themselves(tmp_path):
    import pytest

    from pixelcam.config import load_config
    from pixelcam.errors import DataError
    from pixelcam.pipelines import get_or_train, store_cams

    cfg = load_config(None, {**TINY, "epochs": 1, "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    (cams,) = runs["baseline"].dir.glob("cams-b-loc-*.pt")  # named by the data it covers
    cams.write_bytes(cams.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{cams.name} .*delete it and rerun"):
        store_cams(runs["baseline"], cfg, "b-loc")
    (runs["pixelcam"].dir / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=r"results.json .*damaged"):
        get_or_train(cfg, log=lambda s: None)
