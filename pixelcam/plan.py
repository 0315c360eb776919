"""What a profile will train, and what that costs, before anything runs (`pixelcam reports
--plan`).

Each notebook's trainings come from the experiment functions the notebook itself calls
(NOTEBOOK_RUNS), run inside `runs.planning()`: nothing trains, and every run is recorded once by
its cache directory, so a run that several notebooks share (notebook 01's baselines, reused by
the ablations) counts once, for the first notebook that needs it: the one that trains it in a
full run. A baseline that another baseline's training yields (`runs.shares_training`: GradCAM++
and LayerCAM of one table) is listed as shared and costs nothing of its own. A test checks that
the plan of the smoke profile names exactly the runs that its notebooks train.

The cost of a training is estimated from one short timing per distinct model on the present
device (untrained weights and random inputs of the run's sizes: the time does not depend on
them): epochs x (steps per epoch x step time) + (epochs + 1) validations (valcl and valpx, each
image as one map extraction, an upper bound for valcl's plain forward) + the stored CAMs of a
second phase + the test evaluation of both checkpoints. On a CPU the step is timed at batch
CPU_BATCH and scaled to the run's batch (a CPU step grows linearly with the batch); on CUDA it is
timed at the run's batch, with AMP as in training.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelcam import experiments as ex
from pixelcam.builders import DATA_KEYS, data_paths, model_for
from pixelcam.config import Config, keys_in, load_config
from pixelcam.data.folds import read_split
from pixelcam.errors import ConfigError
from pixelcam.evaluate import resolve_device
from pixelcam.maps import compute_maps
from pixelcam.methods import METHODS, row_label
from pixelcam.pipelines import get_or_train
from pixelcam.store import PlannedRun, planning
from pixelcam.train import OBJECTIVES, make_optimizer

CPU_BATCH = 2  # images per timed step on a CPU (scaled to the run's batch)
REPEATS = 2  # timed steps per model, after one warm-up step


def _backbones(cfg: Config) -> list[str]:
    return [b.strip() for b in cfg.backbones.split(",") if b.strip()]


def _per_dataset(build: Callable[[Config], Any]) -> Callable[[Config], None]:
    def each(cfg: Config) -> None:
        for name in cfg.dataset_names:
            build(cfg.for_dataset(name))
    return each


# notebook -> the calls of its cells that ask the run cache for models (trained or reused)
NOTEBOOK_RUNS: dict[str, Callable[[Config], Any]] = {
    "00_explore": lambda cfg: get_or_train(
        ex.config_for_method(cfg.for_dataset(cfg.dataset), cfg.method)),
    "01_main_tables": lambda cfg: ex.dataset_runs(cfg, all_seeds=True),
    "02_ood": lambda cfg: ex.dataset_runs(cfg),
    "03_stain_shift": _per_dataset(
        lambda dcfg: get_or_train(ex.config_for_method(dcfg, dcfg.method))),
    "04_ablation_depth": _per_dataset(
        lambda dcfg: ex.method_variants(dcfg, dcfg.methods, ex.DEPTH_VARIANTS)),
    "05_ablation_n": _per_dataset(
        lambda dcfg: ex.variant_runs(dcfg, dcfg.method, ex.n_variants(dcfg))),
    "06_ablation_lambda": _per_dataset(
        lambda dcfg: ex.variant_runs(dcfg, dcfg.method, ex.lam_variants(dcfg))),
    "07_ablation_model_selection": _per_dataset(
        lambda dcfg: ex.method_variants(dcfg, dcfg.methods, ex.SELECTION_VARIANTS)),
    "08_ablation_sampling": _per_dataset(
        lambda dcfg: ex.method_variants(dcfg, dcfg.methods, ex.SAMPLING_VARIANTS)),
    "09_complexity": lambda cfg: None,  # untrained models, timed
    "10_backbones": lambda cfg: [ex.dataset_runs(cfg.replace(backbone=b), all_seeds=True)
                                 for b in _backbones(cfg)],
    "11_external_pseudo_labels": lambda cfg: ex.external_runs(cfg, cfg.method),
    "12_feature_tsne": lambda cfg: ex.dataset_runs(cfg),
}


@dataclass
class Timing:
    """Seconds of one training step at the run's batch, and of one image's map."""

    step_s: float
    map_s: float
    timed_batch: int


@dataclass
class PlannedTraining:
    notebook: str  # the first notebook that needs it (which trains it in a full run)
    run: PlannedRun
    sizes: dict[str, int]  # images per split
    variant: str = ""  # the PixelCAM-phase params that differ from the notebook's own
    estimate_s: float = 0.0

    @property
    def label(self) -> str:
        cfg = self.run.config
        return row_label(self.run.kind, cfg.method)

    @property
    def architecture(self) -> str:
        return _architecture(self.run.config)


def split_sizes(cfg: Config) -> dict[str, int]:
    """Images in each split of cfg's data (the synthetic set's from its spec, unwritten)."""
    if cfg.data_root == "synthetic":
        return {"train": cfg.synthetic_n_train, "valcl": cfg.synthetic_n_valcl,
                "valpx": 2 * cfg.synthetic_n_valpx_per_class, "test": cfg.synthetic_n_test}
    _, fold = data_paths(cfg)
    return {split: len(read_split(fold, split)) for split in ("train", "valcl", "valpx", "test")}


def _architecture(cfg: Config) -> str:
    return METHODS[cfg.method].architecture_of(cfg)


def _map_method(kind: str, cfg: Config) -> str:
    return cfg.map_method if kind == "baseline" else kind


def _signature(kind: str, cfg: Config) -> tuple:
    """What the step time depends on: two runs with the same signature are timed once."""
    fields = ["method", "backbone", "output_stride", "feature_stage", "image_size", "train_crop",
              "batch_size", "eval_batch_size", "support_background"]
    if kind == "pixelcam":
        fields += ["pixel_head", "low_res", "seeder"]
    elif kind == "negev":
        fields += ["seeder"]
    return (kind, *(getattr(cfg, f) for f in fields))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(kind: str, cfg: Config, device: torch.device) -> Timing:
    """One warm-up and REPEATS timed training steps, and one timed map extraction."""
    cfg = cfg.replace(pretrained=False)  # the weights do not change the time
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_for(kind, cfg).to(device)
        b = cfg.batch_size if device.type == "cuda" else min(cfg.batch_size, CPU_BATCH)
        crop = cfg.train_crop or cfg.image_size
        batch = {"image": torch.randn(b, 3, crop, crop, device=device),
                 "label": (torch.arange(b, device=device) % 2),
                 "cam": torch.rand(b, crop, crop, device=device),
                 "mask": torch.randint(0, 2, (b, crop, crop), device=device, dtype=torch.uint8)}
        opt = make_optimizer(model, cfg)
        gen = torch.Generator(device=device).manual_seed(0)
        use_amp = cfg.amp and device.type == "cuda"

        def step() -> float:
            _sync(device)
            tick = time.perf_counter()
            model.train()
            loss, _ = OBJECTIVES[kind](model, batch, cfg, gen, use_amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            return time.perf_counter() - tick

        step()
        step_s = statistics.median(step() for _ in range(REPEATS)) * cfg.batch_size / b
        e = cfg.eval_batch_size if device.type == "cuda" else min(cfg.eval_batch_size, CPU_BATCH)
        x = torch.randn(e, 3, cfg.image_size, cfg.image_size, device=device)
        y = torch.arange(e, device=device) % 2
        model.eval()
        compute_maps(_map_method(kind, cfg), model, x, y)
        _sync(device)
        tick = time.perf_counter()
        compute_maps(_map_method(kind, cfg), model, x, y)
        _sync(device)
        map_s = (time.perf_counter() - tick) / e
    return Timing(step_s, map_s, b)


def estimate_seconds(training: PlannedTraining, timing: Timing) -> float:
    """The training's wall time from its timings (see the module docstring)."""
    cfg, n = training.run.config, training.sizes
    steps = math.ceil(n["train"] / cfg.batch_size)
    validation = (n["valcl"] + n["valpx"]) * timing.map_s
    cams = n["train"] * timing.map_s if training.run.kind in ("pixelcam", "negev") else 0.0
    test = 2 * (n["test"] + n["valpx"]) * timing.map_s
    return (training.run.epochs * steps * timing.step_s + (training.run.epochs + 1) * validation
            + cams + test)


def notebook_configs(profile: str, root: Path, notebooks: Iterable[str],
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Config]:
    """Each notebook's params as its kernel loads them (the file, then the overrides)."""
    return {name: load_config(root / "params" / profile / f"{name}.yaml", overrides)
            for name in notebooks}


def plan_trainings(configs: Mapping[str, Config]) -> list[PlannedTraining]:
    """Every training the notebooks need, once each, in the order a full run trains them."""
    out: list[PlannedTraining] = []
    seen: set[Path] = set()
    sizes: dict[tuple, dict[str, int]] = {}  # per data: reading a CAMELYON16 fold takes a while
    for name, cfg in configs.items():
        if name not in NOTEBOOK_RUNS:
            raise ConfigError(f"notebook {name} has no entry in pixelcam.plan.NOTEBOOK_RUNS: "
                              "add the calls with which it asks the run cache for models")
        with planning() as planned:
            NOTEBOOK_RUNS[name](cfg)
        for run_dir, run in planned.items():
            if run_dir not in seen:
                seen.add(run_dir)
                data = tuple(getattr(run.config, k) for k in DATA_KEYS)
                if data not in sizes:
                    sizes[data] = split_sizes(run.config)
                out.append(PlannedTraining(name, run, sizes[data], _variant(run, cfg)))
    return out


def _variant(run: PlannedRun, notebook_cfg: Config) -> str:
    """e.g. "n_fg=1 n_bg=1" for one value of notebook 05's sweep; "" for a baseline."""
    if run.kind not in ("pixelcam", "negev"):
        return ""
    own = notebook_cfg.for_dataset(run.config.dataset)
    return " ".join(f"{k}={getattr(run.config, k)}" for k in sorted(keys_in("pixelcam"))
                    if getattr(run.config, k) != getattr(own, k))


def estimate(trainings: list[PlannedTraining], device: torch.device,
             log: Callable[[str], None] = print) -> dict[tuple, Timing]:
    """Time each distinct model the trainings to do need; fill in their estimates."""
    timings: dict[tuple, Timing] = {}
    for t in trainings:
        if not t.run.trains:
            continue
        sig = _signature(t.run.kind, t.run.config)
        if sig not in timings:
            cfg = t.run.config
            log(f"timing {t.label} ({_architecture(cfg)}, {cfg.image_size} px, batch "
                f"{cfg.batch_size}, {cfg.dataset}) on {device.type}")
            timings[sig] = time_model(t.run.kind, t.run.config, device)
        t.estimate_s = estimate_seconds(t, timings[sig])
    return timings


def _hours(seconds: float) -> str:
    if seconds >= 360:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_plan(trainings: list[PlannedTraining], notebooks: list[str], device: torch.device,
                profile: str) -> str:
    """The table, the total and each notebook's share, as `--plan` prints them."""
    lines = [f"{'notebook':28s} {'run':22s} {'dataset':10s} {'backbone':15s} {'seed':>4s} "
             f"{'epochs':>6s} {'img/ep':>6s} {'status':>8s} {'estimate':>10s}  variant"]
    for t in trainings:
        cfg = t.run.config
        lines.append(f"{t.notebook:28s} {t.label:22s} {cfg.dataset:10s} "
                     f"{_architecture(cfg):15s} "
                     f"{cfg.seed:4d} {t.run.epochs:6d} {t.sizes['train']:6d} "
                     f"{t.run.status:>8s} "
                     f"{_hours(t.estimate_s) if t.run.trains else '-':>10s}  {t.variant}")
    todo = [t for t in trainings if t.run.trains]
    shared = sum(t.run.status == "shared" for t in trainings)
    total = sum(t.estimate_s for t in todo)
    where = (f"GPU ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else device.type.upper())
    cached = len(trainings) - len(todo) - shared
    lines += ["", f"{profile} profile: {len(trainings)} runs ({cached} in the cache, {shared} "
              f"shared with another run's training, {len(todo)} to train): about "
              f"{_hours(total)} on this {where}"]
    if device.type != "cuda":
        lines.append("  timed on a CPU: run `--plan` on the GPU node for GPU-hours")
    lines.append("share of each notebook (the trainings it runs first; plan --shard with it):")
    for name in notebooks:
        mine = [t for t in todo if t.notebook == name]
        seconds = sum(t.estimate_s for t in mine)
        share = 100 * seconds / total if total else 0.0
        lines.append(f"  {name:28s} {len(mine):4d} to train  {_hours(seconds):>10s}  "
                     f"{share:5.1f}%")
    return "\n".join(lines)


def run_plan(profile: str, root: Path, notebooks: list[str],
             overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print,
             timing: bool = True) -> list[PlannedTraining]:
    """Print the plan of `notebooks` (names) of a profile; return its trainings."""
    with contextlib.chdir(root):  # relative cache and data paths mean what they mean to a run
        configs = notebook_configs(profile, root, notebooks, overrides)
        trainings = plan_trainings(configs)
        device = resolve_device(next(iter(configs.values())).device if configs else "cpu")
        if timing:
            estimate(trainings, device, log)
    log(format_plan(trainings, notebooks, device, profile))
    return trainings
