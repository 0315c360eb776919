"""Multi-process training: torchrun with 2 gloo processes on CPU trains the same weights as one
process on the same global batch; rank 0 alone writes; the helpers are no-ops in one process.

This file is also the torchrun worker: `python -m torch.distributed.run --nproc_per_node=N
tests/test_distributed.py <job.json>` runs `_worker` in every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelcam import distributed
from pixelcam.config import load_config
from pixelcam.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# Deterministic inputs, so ranks and the reference see the same pixels: no colour jitter, no
# random crop (resize == crop), no spatial dropout; train=False data in the fits (no flips).
TINY = {
    "synthetic_n_train": 8, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 48, "synthetic_height": 40,
    "image_size": 32, "resize_size": 32, "color_jitter": False, "spatial_dropout": 0.0,
    "backbone": "resnet18", "epochs": 2, "batch_size": 4, "eval_batch_size": 8, "lr": 0.01,
    "device": "cpu", "num_workers": 0,
}
# Float tolerance between 2 ranks and 1 process: the sums over the batch are split and
# all-reduced in another order (observed: at most ~1e-6 after these few steps).
ATOL, RTOL = 1e-5, 1e-4


def _fit(cfg_dict: dict, out_dir: Path) -> dict:
    """Train the baseline phase on deterministic data; return the final weights and history."""
    from pixelcam.builders import dataset, new_model
    from pixelcam.train import PhaseSpec, fit

    cfg = load_config(None, cfg_dict)
    model = new_model(cfg, pixel=False)
    result = fit(model, cfg, PhaseSpec("baseline", cfg.map_method, cfg.epochs),
                 train_ds=dataset(cfg, "train", train=False), valcl_ds=dataset(cfg, "valcl"),
                 valpx_ds=dataset(cfg, "valpx"), out_dir=out_dir, device=torch.device("cpu"),
                 log=lambda s: None)
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history": result.history, "best": result.best, "resumed_from": result.resumed_from}


def _worker(job_path: str) -> None:
    """One torchrun rank: the jobs of `job.json`, each rank's outcome saved for the test."""
    torch.set_num_threads(1)
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    distributed.init(torch.device("cpu"))
    rank = distributed.rank()
    report: dict = {"world": distributed.world_size(), "rank": rank}
    for name, cfg_dict, folder in job.get("fits", []):
        report[name] = _fit(cfg_dict, out / folder)
    if "runs" in job:
        from pixelcam.pipelines import get_baseline

        logs: list[str] = []
        cfg = load_config(None, job["runs"])
        first = get_baseline(cfg, log=logs.append)
        again = get_baseline(cfg, log=logs.append)
        report["runs"] = {"dir": str(first.dir), "reused": [first.reused, again.reused],
                          "history": first.results["history"], "test": first.results["test"],
                          "logs": logs}
    torch.save(report, out / f"rank{rank}.pt")
    distributed.shutdown()


def _torchrun(tmp_path: Path, nproc: int, job: dict) -> list[dict]:
    out = tmp_path / f"n{nproc}"
    out.mkdir()
    job_path = out / "job.json"
    job_path.write_text(json.dumps({**job, "out": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--standalone",
           str(Path(__file__).resolve()), str(job_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


def _assert_close_weights(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.is_floating_point():
            torch.testing.assert_close(x, y, atol=ATOL, rtol=RTOL, msg=name)
            worst = max(worst, float((x - y).abs().max()))
        else:
            assert torch.equal(x, y), name
    return worst


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process and one 1-process torchrun launch (~20 s on 2 CPU cores), plus the plain
    single-process reference of the full-batch fit."""
    tmp = tmp_path_factory.mktemp("ddp")
    cache = str(tmp / "cache")
    # 2 steps per epoch, 3 images per rank and step: 8 = 6 + 2, the last batch filled to 6 by
    # repeating its 2 images (the same global batch for 2 ranks as for 1 process)
    minibatch = {**TINY, "cache_dir": cache, "batch_size": 6}
    full = {**minibatch, "batch_size": 8, "epochs": 3}  # 1 step per epoch: order-free
    runs_cfg = {**TINY, "epochs": 1, "cache_dir": str(tmp / "runs-cache")}
    # "stopped" trains 1 epoch, "resumed" reruns the 2-epoch phase in its folder: it resumes
    fits = [["minibatch", minibatch, "minibatch"], ["full", full, "full"],
            ["stopped", {**minibatch, "epochs": 1}, "resume"], ["resumed", minibatch, "resume"]]
    two = _torchrun(tmp, 2, {"fits": fits, "runs": runs_cfg})
    one = _torchrun(tmp, 1, {"fits": [["minibatch", minibatch, "minibatch"]]})
    torch.set_num_threads(1)
    plain = _fit(full, tmp / "plain")
    return {"two": two, "one": one, "plain": plain, "tmp": tmp}


def test_two_processes_train_the_weights_of_one(launched):
    two, one = launched["two"], launched["one"]
    assert [r["world"] for r in two] == [2, 2] and one[0]["world"] == 1
    # the ranks hold the same model (DDP averages gradients, BatchNorm statistics are global)
    for name, w in two[0]["minibatch"]["weights"].items():
        assert torch.equal(w, two[1]["minibatch"]["weights"][name]), name
    # 2 ranks x 3 images == 1 process x 6 images, the filled last batch included
    worst = _assert_close_weights(two[0]["minibatch"]["weights"], one[0]["minibatch"]["weights"])
    print(f"largest weight difference, 2 ranks vs 1 process: {worst:.2e}")
    # BatchNorm running statistics match too (GlooSyncBatchNorm), and the training moved them
    key = "encoder.net.bn1.running_mean"
    assert not torch.allclose(one[0]["minibatch"]["weights"][key], torch.zeros(64))
    # losses are all-reduced: the mean over the global batch, on every rank
    for a, b in zip(two[0]["minibatch"]["history"], one[0]["minibatch"]["history"]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    assert two[0]["minibatch"]["history"] == two[1]["minibatch"]["history"]
    assert two[0]["minibatch"]["best"] == two[1]["minibatch"]["best"]


def test_two_processes_match_the_plain_single_process_run(launched):
    """Full-batch steps need no common data order: DDP equals the unchanged plain code path."""
    two, plain = launched["two"], launched["plain"]
    worst = _assert_close_weights(two[0]["full"]["weights"], plain["weights"])
    print(f"largest weight difference, 2 ranks vs the plain run: {worst:.2e}")
    for a, b in zip(two[0]["full"]["history"], plain["history"]):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_a_resumed_run_ends_with_the_weights_of_a_straight_one(launched):
    """Each rank restores its own generators from state.pt (saved by rank 0 for all ranks)."""
    for rank in launched["two"]:
        assert rank["stopped"]["resumed_from"] is None and rank["resumed"]["resumed_from"] == 1
        assert rank["resumed"]["history"] == rank["minibatch"]["history"]
        for name, w in rank["minibatch"]["weights"].items():
            assert torch.equal(w, rank["resumed"]["weights"][name]), name


def test_rank_zero_alone_writes_and_all_ranks_agree(launched):
    two, tmp = launched["two"], launched["tmp"]
    out = tmp / "n2" / "minibatch"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["b-cl.pt", "b-loc.pt"]
    state = torch.load(out / "state.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["ranks"]) == 2
    # the seeder generators are offset by rank: seed + 1 + rank
    assert not torch.equal(state["ranks"][0]["sampler_rng"], state["ranks"][1]["sampler_rng"])
    # no temporary file of another rank was left behind
    assert not [p for p in out.rglob(".*tmp*")]
    runs = [r["runs"] for r in two]
    run_dir = Path(runs[0]["dir"])
    assert runs[0]["dir"] == runs[1]["dir"] and (run_dir / "results.json").exists()
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["test"] == runs[1]["test"]
    assert runs[0]["reused"] == [False, True] and runs[1]["reused"] == [False, True]
    # the run cache logs on rank 0 only
    assert any("reusing finished run" in line for line in runs[0]["logs"])
    assert not any("reusing finished run" in line for line in runs[1]["logs"])


def test_compile_switch_trains_like_eager(tmp_path, monkeypatch):
    """compile: true runs the training step through torch.compile (inductor on CPU: ~30 s cold,
    ~2 s with a warm compile cache) and lands on the eager weights up to float tolerance."""
    from torch._dynamo.utils import counters

    calls = []
    real_compile = torch.compile

    def spy(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return real_compile(module, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch.set_num_threads(1)
    cfg = {**TINY, "epochs": 1, "synthetic_n_train": 4, "cache_dir": str(tmp_path / "cache")}
    eager = _fit(cfg, tmp_path / "eager")
    assert calls == []
    counters.clear()
    try:
        compiled = _fit({**cfg, "compile": True}, tmp_path / "compiled")
        assert calls == ["WSOLModel"] and counters["frames"]["ok"] > 0
    finally:
        torch._dynamo.reset()
    _assert_close_weights(compiled["weights"], eager["weights"])
    # checkpoints hold the plain module's keys (no "_orig_mod." prefix)
    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "b-loc.pt", weights_only=True)
    assert list(saved) == list(eager["weights"])


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.launched() and not distributed.initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_mean(t) is t
    distributed.barrier()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.agree(lambda: 7) == 7
    assert distributed.gather(3) == [3]
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert not distributed.initialized()
    assert distributed.local_batch_size(32, 1) == 32 and distributed.local_batch_size(32, 4) == 8


def test_batch_size_not_divisible_by_the_world_is_a_config_error():
    with pytest.raises(ConfigError, match=r"batch_size=10 cannot be split over 4 processes"):
        distributed.local_batch_size(10, 4)


def test_gloo_sync_batchnorm_is_a_batchnorm_in_one_process():
    """Converted modules keep the parameters, buffers and state_dict keys of BatchNorm."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    conv.load_state_dict(ref.state_dict())
    weight = conv[1].weight
    conv = distributed.sync_batchnorm(conv, torch.device("cpu"))
    assert isinstance(conv[1], distributed.GlooSyncBatchNorm) and conv[1].weight is weight
    assert list(conv.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 3, 8, 8)
    for mode in (True, False):
        ref.train(mode)
        conv.train(mode)
        torch.testing.assert_close(conv(x), ref(x), atol=0, rtol=0)
    torch.testing.assert_close(conv[1].running_var, ref[1].running_var, atol=0, rtol=0)


def test_sync_batchnorm_keeps_timm_batchnorm_activation():
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    ref = torch.nn.Sequential(BatchNormAct2d(3, act_layer=torch.nn.ReLU)).train()
    conv = distributed.sync_batchnorm(torch.nn.Sequential(BatchNormAct2d(3)), torch.device("cpu"))
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv[0].act, torch.nn.ReLU)
    x = torch.randn(2, 3, 4, 4)
    out = conv(x)
    torch.testing.assert_close(out, ref(x), atol=0, rtol=0)
    assert float(out.detach().min()) == 0.0


def test_unwrap_finds_the_model_inside_wrappers():
    inner = torch.nn.Linear(2, 2)
    assert distributed.unwrap(inner) is inner
    assert distributed.unwrap(torch.compile(inner)) is inner  # compiles lazily: nothing runs


if __name__ == "__main__":
    _worker(sys.argv[1])
