"""The preflight: subset folds of the real data roots and the few params it changes."""

from pathlib import Path

import pytest

from pixelcam import preflight
from pixelcam.config import load_config
from pixelcam.data.folds import SPLITS, read_split
from pixelcam.data.synthetic import SyntheticSpec, write_dataset

PAPER = Path(__file__).resolve().parents[1] / "params" / "paper"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two data roots in the fold format, standing for prepared GlaS and CAMELYON16."""
    base = tmp_path_factory.mktemp("roots")
    out = {}
    for name in ("glas", "camelyon16"):
        spec = SyntheticSpec(n_train=10, n_valcl=8, n_test=6, n_valpx_per_class=3, width=48,
                             height=40, domain=name)
        out[name] = write_dataset(base / name, spec)
    return out


def test_subset_fold_keeps_the_first_images_of_each_class(roots, tmp_path):
    fold = roots["glas"] / "folds" / "fold-0"
    new, written = preflight.subset_fold(fold, tmp_path / "sub", per_class=2)
    assert new == tmp_path / "sub" / "fold-0"
    assert {s: [r.image_id for r in rs] for s, rs in written.items()} == {
        s: [r.image_id for r in read_split(new, s)] for s in SPLITS}
    for split in SPLITS:
        full = read_split(fold, split)
        cut = read_split(new, split)
        for label in {r.label for r in full}:
            first = [r for r in full if r.label == label][:2]
            assert [r for r in cut if r.label == label] == first or split == "valcl"
        assert [r.image_id for r in cut] == [r.image_id for r in full if r in cut]  # fold order
    valcl = {r.image_id for r in read_split(new, "valcl")}
    assert {r.image_id for r in read_split(new, "valpx")} <= valcl  # valpx stays inside valcl
    assert len(valcl) == 4


def test_paper_overrides_change_only_images_epochs_device_batches(roots, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(roots["glas"]))
    monkeypatch.setenv("PIXELCAM_CAMELYON16_ROOT", str(roots["camelyon16"]))
    files = {p.stem: p for p in sorted(PAPER.glob("[!_]*.yaml"))}
    extra = preflight.prepare(files, {"device": "cpu"}, tmp_path / "work")
    changed = {k.split(".")[-1] for k in extra}
    assert changed == {"epochs", "pixelcam_epochs", "cache_dir", "fold_dir", "data_root",
                       "batch_size", "eval_batch_size", "num_workers", "stain_levels",
                       "tsne_images", "tsne_pixels", "timing_repeats", "resume_state"}
    assert extra["resume_state"] is False  # its cache is emptied at each start: never resumed
    cfg = load_config(files["01_main_tables"], {"device": "cpu", **extra})
    for name in ("glas", "camelyon16"):
        d = cfg.for_dataset(name)
        few = 2 * preflight.PER_CLASS  # both classes
        assert (d.epochs, d.total_pixelcam_epochs, d.batch_size) == (1, 1, few)
        assert d.data_root == str(roots[name].resolve())
        assert Path(d.fold_dir).parent == tmp_path / "work" / "folds" / name
        assert len(read_split(d.fold_dir, "train")) == few
        # everything else is the paper's: the backbone, the input size, the seeding, lambda
        paper = load_config(files["01_main_tables"]).for_dataset(name)
        for key in ("backbone", "image_size", "output_stride", "lr", "n_fg", "lam", "low_res",
                    "pixel_loss_rows", "pretrained"):
            assert getattr(d, key) == getattr(paper, key)
    assert Path(cfg.cache_dir) == tmp_path / "work" / "cache"
    # on a GPU the batch sizes stay the paper's: their memory is part of what is checked
    gpu = preflight.prepare(files, {"device": "cuda"}, tmp_path / "work")
    assert "batch_size" not in gpu and "glas.batch_size" not in gpu


def test_preflight_starts_from_an_empty_folder(roots, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(roots["glas"]))
    monkeypatch.setenv("PIXELCAM_CAMELYON16_ROOT", str(roots["camelyon16"]))
    stale = tmp_path / "work" / "cache" / "runs" / "baseline-x" / "results.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    preflight.prepare({"01": PAPER / "01_main_tables.yaml"}, {"device": "cpu"}, tmp_path / "work")
    assert not stale.exists()


def test_stain_levels_fit_the_smallest_train_subset(roots, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(roots["glas"]))
    monkeypatch.setenv("PIXELCAM_CAMELYON16_ROOT", str(roots["camelyon16"]))
    extra = preflight.prepare({"03": PAPER / "03_stain_shift.yaml"}, {"device": "cpu"},
                              tmp_path / "work", per_class=1)
    assert extra["stain_levels"] == 2  # one train image per class: two stain fits at most


def test_runs_leave_the_disk_once_no_later_notebook_uses_them(roots, tmp_path, monkeypatch):
    from pixelcam.plan import notebook_configs, plan_trainings
    from pixelcam.runner import _runs_needed_later

    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(roots["glas"]))
    monkeypatch.setenv("PIXELCAM_CAMELYON16_ROOT", str(roots["camelyon16"]))
    names = ["01_main_tables", "07_ablation_model_selection", "06_ablation_lambda"]
    extra = preflight.prepare({n: PAPER / f"{n}.yaml" for n in names}, {"device": "cpu"},
                              tmp_path / "work")
    root = PAPER.parents[1]
    later = _runs_needed_later("paper", root, names, extra)
    uses = [{t.run.dir for t in plan_trainings(notebook_configs("paper", root, [n], extra))}
            for n in names]
    assert later == [uses[1] | uses[2], uses[2], set()]
    assert uses[0] & later[0] and uses[0] - later[0]  # 01 shares some runs, not all of them


def test_pruning_deletes_weights_outside_keep_and_counts_shared_files_once(tmp_path):
    runs = tmp_path / "cache" / "runs"
    for run in ("baseline-a", "pixelcam-b"):
        ckpt = runs / run / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / "b-loc.pt").write_bytes(b"x" * 1000)
        (ckpt / "b-cl.pt").hardlink_to(ckpt / "b-loc.pt")
        (runs / run / "results.json").write_text("{}")
    (runs / "pixelcam-b" / "state.pt").write_bytes(b"s" * 10)
    freed = preflight.prune_checkpoints(tmp_path / "cache", keep={runs / "baseline-a"})
    assert freed == 1010
    assert sorted(p.name for p in (runs / "pixelcam-b").rglob("*")) == ["checkpoints",
                                                                         "results.json"]
    assert len(list((runs / "baseline-a" / "checkpoints").iterdir())) == 2
    assert preflight.prune_checkpoints(tmp_path / "cache") == 1000


def test_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path):
    """`make gpu-check` on a machine without CUDA stops at its first check, exits 1 and still
    writes its JSON, with the fix in the error (the GPU checks themselves need a GPU)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--out",
                           str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["cuda"]["available"] is False and report["ok"] is False
    assert "srun --gres=gpu:1" in report["cuda"]["error"]
    assert not {"preflight", "benchmarks", "layercam"} & set(report)
    assert "failed: cuda" in proc.stdout
