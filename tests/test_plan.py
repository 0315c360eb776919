"""`pixelcam reports --plan`: every training a profile needs, once, with its cost, run nothing."""

import math
from pathlib import Path

import pytest
from conftest import PAPER_SIZES

from pixelcam.cli import main
from pixelcam.plan import (
    NOTEBOOK_RUNS,
    PlannedTraining,
    Timing,
    estimate_seconds,
    notebook_configs,
    plan_trainings,
)
from pixelcam.runner import discover

ROOT = Path(__file__).resolve().parents[1]
NAMES = [p.stem for p in discover(ROOT / "notebooks")]
SIZES = PAPER_SIZES


def test_every_notebook_has_a_plan():
    assert sorted(NOTEBOOK_RUNS) == sorted(NAMES)


def test_paper_plan_lists_each_training_once_for_the_notebook_that_runs_it(paper_data):
    configs = notebook_configs("paper", ROOT, NAMES, {"cache_dir": str(paper_data / "cache")})
    plan = plan_trainings(configs)
    dirs = [t.run.dir for t in plan]
    assert len(dirs) == len(set(dirs))  # shared runs once
    assert not any(t.run.cached for t in plan)
    # GradCAM++ and LayerCAM of the main table share one training: one trains, the other comes
    # with it
    for dataset_name in configs["01_main_tables"].dataset_names:
        cam_family = [t.run for t in plan if t.notebook in ("00_explore", "01_main_tables")
                      and t.run.kind == "baseline" and t.run.config.seed == 0
                      and t.run.config.dataset == dataset_name
                      and t.run.config.method in ("gradcampp", "layercam")]
        assert sorted(r.status for r in cam_family) == ["shared", "to train"]
        trained_one = next(r for r in cam_family if r.trains)
        assert next(r for r in cam_family if not r.trains).shared_with == trained_one.dir
    # notebook 00 runs first and trains the profile's own pair, one of notebook 01's rows
    explore = [t for t in plan if t.notebook == "00_explore" and t.run.trains]
    assert [t.run.kind for t in explore] == ["baseline", "pixelcam"]
    first = [t for t in plan if t.notebook in ("00_explore", "01_main_tables")]
    main_cfg = configs["01_main_tables"]
    methods = main_cfg.methods
    negev = sum(m != "sat" for m in methods) if main_cfg.table_negev else 0
    per_dataset = 2 * len(methods) + negev + int(main_cfg.table_unet)
    assert len(first) == per_dataset * len(main_cfg.dataset_names) * len(main_cfg.seed_list)
    # notebook 02 and 12 reuse notebook 01's models: they train nothing of their own
    assert not [t for t in plan if t.notebook in ("02_ood", "12_feature_tsne", "09_complexity")]
    glas = next(t for t in first if t.run.config.dataset == "glas")
    assert glas.sizes == SIZES["glas"] and glas.run.epochs == main_cfg.for_dataset("glas").epochs
    # the n sweep: one PixelCAM run per value that notebook 01 has not trained already
    sweep = [t for t in plan if t.notebook == "05_ablation_n"]
    assert sweep and all(t.run.kind == "pixelcam" and t.variant.startswith("n_bg=")
                         for t in sweep)


def test_estimate_adds_steps_validation_cams_and_test():
    from pixelcam.config import load_config
    from pixelcam.store import PlannedRun

    cfg = load_config(None, {"batch_size": 32})
    run = PlannedRun("pixelcam", "k", Path("x"), cfg, 10, False)
    t = PlannedTraining("01", run, SIZES["glas"])
    timing = Timing(step_s=2.0, map_s=0.1, timed_batch=2)
    steps = math.ceil(67 / 32)
    expected = 10 * steps * 2.0 + 11 * (16 + 6) * 0.1 + 67 * 0.1 + 2 * (80 + 6) * 0.1
    assert estimate_seconds(t, timing) == pytest.approx(expected)


def test_plan_command_prints_the_trainings_the_total_and_the_shares(tmp_path, capsys):
    code = main(["reports", "--profile", "smoke", "--plan", "--only", "05", "06",
                 "-p", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "05_ablation_n" in out and "06_ablation_lambda" in out
    assert ("smoke profile: 4 runs (0 in the cache, 0 shared with another run's training, "
            "4 to train)") in out, out
    assert "timed on a CPU" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
