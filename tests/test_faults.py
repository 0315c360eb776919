"""Fault tolerance: a training process killed with SIGKILL resumes to the same numbers; two
processes on one config train it once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

TINY = {
    "synthetic_n_train": 16, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
    "image_size": 48, "resize_size": 56, "backbone": "resnet18", "epochs": 4, "batch_size": 4,
    "eval_batch_size": 8, "lr": 0.01, "device": "cpu",
}


def _params(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cache = tmp_path / f"cache-{name}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "cache_dir": str(cache)}))
    return path, cache


def _train(params: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pixelcam.cli", "train", "--params", str(params)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def test_sigkill_mid_training_resumes_to_the_same_result(tmp_path):
    ref_params, ref_cache = _params(tmp_path, "ref")
    assert _train(ref_params).wait(timeout=300) == 0
    params, cache = _params(tmp_path, "killed")
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
    assert _results(cache) == _results(ref_cache)


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
    from pixelcam.runs import get_or_train, store_cams

    cfg = load_config(None, {**TINY, "epochs": 1, "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    (cams,) = runs["baseline"].dir.glob("cams-b-loc-*.pt")  # named by the data it covers
    cams.write_bytes(cams.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{cams.name} .*delete it and rerun"):
        store_cams(runs["baseline"], cfg, "b-loc")
    (runs["pixelcam"].dir / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=r"results.json .*damaged"):
        get_or_train(cfg, log=lambda s: None)
