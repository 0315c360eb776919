"""Run directories keyed by a stable hash of the config: train once, reuse everywhere.

A baseline lives in `<cache_dir>/runs/baseline-<key>/`, the PixelCAM model trained on its CAMs in
`<cache_dir>/runs/pixelcam-<key>/`. A run is complete only when its `results.json` exists; an
interrupted run is resumed from its `state.pt`, and a file lock keeps two processes from training
the same run twice. One training may write several baseline runs (`shares_training`).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pixelcam import distributed
from pixelcam.atomic import link_over, read_back, save_torch, write_json, write_text
from pixelcam.config import Config, baseline_key, load_config, negev_key, pixelcam_key, unet_key
from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.synthetic import SyntheticSpec, ensure_dataset
from pixelcam.errors import DataError
from pixelcam.evaluate import eval_loader, evaluate_split, resolve_device
from pixelcam.models.cams import BASELINE_HEAD, compute_maps
from pixelcam.models.model import WSOLModel, build_model
from pixelcam.models.negev import NEGEV
from pixelcam.models.sat import build_sat
from pixelcam.models.unet import UNet
from pixelcam.progress import Tracker, file_log, note
from pixelcam.provenance import provenance
from pixelcam.train import CHECKPOINTS, FitResult, PhaseSpec, fit

Log = Callable[[str], None]
TRAIN_LOG = "train.log"  # each run's epoch log, in its run directory


def synthetic_spec(cfg: Config) -> SyntheticSpec:
    return SyntheticSpec(
        n_train=cfg.synthetic_n_train, n_valcl=cfg.synthetic_n_valcl, n_test=cfg.synthetic_n_test,
        n_valpx_per_class=cfg.synthetic_n_valpx_per_class, width=cfg.synthetic_width,
        height=cfg.synthetic_height, seed=cfg.synthetic_seed, domain=cfg.dataset,
    )


DATA_KEYS = ("dataset", "data_root", "fold_dir", "synthetic_n_train", "synthetic_n_valcl",
             "synthetic_n_test", "synthetic_n_valpx_per_class", "synthetic_width",
             "synthetic_height", "synthetic_seed")


def data_key(cfg: Config, split: str = "") -> str:
    """Names what a model is evaluated on: the data fields, the input size and the split."""
    fields = {k: getattr(cfg, k) for k in DATA_KEYS}
    blob = json.dumps({**fields, "image_size": cfg.image_size, "split": split}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def with_data_of(cfg: Config, data: Config) -> Config:
    """`cfg` (a trained model's params) reading the images of `data` (another dataset)."""
    return cfg.replace(**{k: getattr(data, k) for k in DATA_KEYS})


def data_paths(cfg: Config) -> tuple[Path, Path]:
    """(data_root, fold_dir): the embedded synthetic default is generated once into the cache."""
    if cfg.data_root == "synthetic":
        root = ensure_dataset(Path(cfg.cache_dir) / "data", synthetic_spec(cfg))
    else:
        root = Path(cfg.data_root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data root {root} does not exist: set data_root in the params file to the folder "
                "that image ids are relative to (or 'synthetic' for the embedded dataset)"
            )
    fold = Path(cfg.fold_dir).expanduser() if cfg.fold_dir else root / "folds" / "fold-0"
    if not fold.is_dir():
        raise DataError(
            f"fold directory {fold} does not exist: set fold_dir to a folder holding "
            "train/ valcl/ valpx/ test/ split files"
        )
    return root, fold


def dataset(cfg: Config, split: str, *, train: bool = False,
            cams: dict[str, torch.Tensor] | None = None, train_masks: bool = False
            ) -> WSOLDataset:
    root, fold = data_paths(cfg)
    return WSOLDataset(root, fold, split, train=train, image_size=cfg.image_size,
                       resize_size=cfg.resize_size, cams=cams, color_jitter=cfg.color_jitter,
                       train_masks=train_masks, crop_size=cfg.train_crop)


def new_model(cfg: Config, pixel: bool) -> torch.nn.Module:
    """A freshly initialised model; the init is seeded so the same params give the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.method == "sat":  # SAT is its own architecture: DeiT-Tiny with a location token
            return build_sat(cfg.num_classes, pixel_head=cfg.pixel_head if pixel else None,
                             pretrained=cfg.pretrained)
        return build_model(
            cfg.backbone, num_classes=cfg.num_classes, pretrained=cfg.pretrained,
            output_stride=cfg.output_stride, feature_stage=cfg.feature_stage,
            head=BASELINE_HEAD[cfg.method],
            support_background=cfg.support_background,
            pixel_head=cfg.pixel_head if pixel else None, spatial_dropout=cfg.spatial_dropout,
        )


def new_negev(cfg: Config, classifier: torch.nn.Module) -> NEGEV:
    """NEGEV on `classifier`; its decoder's init is seeded, not left to whatever the process
    drew before (a baseline trained in the same process, or read from the cache)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return NEGEV(classifier, freeze=True)


def model_for(kind: str, cfg: Config) -> torch.nn.Module:
    """The architecture of a run kind, freshly (and reproducibly) initialised."""
    if kind in ("baseline", "pixelcam"):
        return new_model(cfg, pixel=kind == "pixelcam")
    if kind == "negev":  # the decoder's frozen classifier is the baseline architecture
        return new_negev(cfg, new_model(cfg, pixel=False))
    if kind == "unet":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return UNet(cfg.backbone, pretrained=cfg.pretrained)
    raise ValueError(f"unknown run kind {kind!r}")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise work on one run directory across processes (a second process waits).

    Under torchrun only rank 0 takes the lock, for all its ranks: were each rank to take it,
    rank 0 would train holding it while the others, needed by every step, waited for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not distributed.is_main():
        yield
        return
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _weights(run_dir: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    return read_back(run_dir / "checkpoints" / f"{checkpoint}.pt")


def model_holding(kind: str, cfg: Config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The architecture of a run kind holding `state` (a checkpoint), on the CPU.

    It is built on the meta device and takes the checkpoint's tensors as they are, so no random
    init runs for weights that are replaced at once (timm's VGG16 spends 2 s initialising a
    4096-wide classifier the WSOL net drops), and no ImageNet file is read for them. Should the
    meta build not hold exactly the checkpoint's tensors (a buffer kept out of the state dict),
    the model is built and loaded the ordinary way, which also names any mismatch.
    """
    with torch.device("meta"):
        model = model_for(kind, cfg.replace(pretrained="false"))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    if set(tensors) == set(state) and all(t.shape == state[k].shape for k, t in tensors.items()):
        model.load_state_dict(state, assign=True)
        return model
    model = model_for(kind, cfg)
    model.load_state_dict(state)
    return model


@dataclass
class Run:
    """A finished run: where it lives and what it measured."""

    kind: str  # baseline | pixelcam
    key: str
    dir: Path
    results: dict[str, Any]
    reused: bool

    @property
    def map_method(self) -> str:
        return self.results["map_method"]

    @property
    def config(self) -> Config:
        """The params this run was trained with."""
        return load_config(None, self.results["config"], check_datasets=False)

    def load_model(self, checkpoint: str, device: torch.device | None = None) -> torch.nn.Module:
        cfg = self.config
        device = device or resolve_device(cfg.device)
        model = model_holding(self.kind, cfg, _weights(self.dir, checkpoint))
        return model.to(device).eval()

    def test(self, checkpoint: str) -> dict[str, Any]:
        return self.results["test"][checkpoint]


def _evaluate_checkpoints(run_dir: Path, cfg: Config, kind: str, map_method: str,
                          device: torch.device,
                          thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Both checkpoints on test; rates at the test oracle and at the valpx-tuned threshold.

    `thresholds` gives a checkpoint's valpx threshold as validation measured it at its epoch
    (same weights, same maps); a checkpoint without one gets a valpx pass here. When B-LOC and
    B-CL are the same epoch they are one file (train._save_best), evaluated once.
    """
    thresholds = thresholds or {}
    valpx = None
    test = eval_loader(dataset(cfg, "test"), cfg.eval_batch_size, cfg.num_workers, device)
    out: dict[str, Any] = {}
    files = {name: run_dir / "checkpoints" / f"{name}.pt" for name in CHECKPOINTS}
    for name in CHECKPOINTS:
        same = next((n for n in out if files[n].samefile(files[name])), None)
        if same is not None:
            out[name] = copy.deepcopy(out[same])
            continue
        model = model_holding(kind, cfg, _weights(run_dir, name)).to(device)
        threshold = thresholds.get(name)
        if threshold is None:
            if valpx is None:
                valpx = eval_loader(dataset(cfg, "valpx"), cfg.eval_batch_size,
                                    cfg.num_workers, device)
            threshold = evaluate_split(model, valpx, map_method, device, with_per_image=False,
                                       resamples=0).metric.best_miou_threshold()
        res = evaluate_split(model, test, map_method, device, resamples=cfg.ttest_resamples,
                             resample_seed=cfg.seed)
        entry = res.to_dict()
        entry["rates_valpx_threshold"] = res.metric.rates(threshold)
        entry["valpx_threshold"] = threshold
        out[name] = entry
    return out


def _selected_thresholds(history: list[dict[str, Any]],
                         best: dict[str, int]) -> dict[str, float]:
    """The valpx threshold that validation measured at each checkpoint's epoch, where the
    history has one (runs resumed from a state written before it was kept have none)."""
    rows = {row["epoch"]: row for row in history}
    return {name: rows[epoch]["valpx_threshold"] for name, epoch in best.items()
            if "valpx_threshold" in rows.get(epoch, {})}


def _history_of(fitted: FitResult, map_method: str | None = None) -> list[dict[str, Any]]:
    """The epoch rows of a run: without the other maps' `@` scores; for a sibling of a shared
    training (`map_method`), its own map's valpx score becomes the row's `valpx_pxap`."""
    rows = []
    for row in fitted.history:
        kept = {k: v for k, v in row.items() if "@" not in k}
        if map_method:
            kept["valpx_pxap"] = row[f"valpx_pxap@{map_method}"]
            if f"valpx_threshold@{map_method}" in row:
                kept["valpx_threshold"] = row[f"valpx_threshold@{map_method}"]
        rows.append(kept)
    return rows


def _results(kind: str, key: str, cfg: Config, map_method: str, best: dict[str, int],
             history: list[dict[str, Any]], test: dict[str, Any], fitted: FitResult,
             t_eval: float, device: torch.device, started: float,
             extra: dict[str, Any] | None) -> dict[str, Any]:
    """The results.json of a finished run (`t_eval`: when its test evaluation started)."""
    return {
        "kind": kind, "key": key, "map_method": map_method, "config": cfg.to_dict(),
        "best_epoch": best, "history": history, "test": test,
        "durations": {"train_s": fitted.seconds, "eval_s": time.perf_counter() - t_eval,
                      **fitted.time_split()},
        "resumed_from": fitted.resumed_from, **(extra or {}),
        "provenance": provenance(cfg, device, started=started),
    }


def _train_run(kind: str, key: str, run_dir: Path, cfg: Config, phase: PhaseSpec,
               model: WSOLModel, train_ds: WSOLDataset, log: Log,
               extra: dict[str, Any] | None = None,
               siblings: tuple[Config, ...] = ()) -> Run:
    from pixelcam.report import row_label  # report imports this module

    device = distributed.init(resolve_device(cfg.device))
    started = time.time()
    tracker = Tracker(f"{row_label(kind, cfg.method)}, {cfg.dataset}, seed {cfg.seed}",
                      phase.epochs)
    run_log, handle = file_log(run_dir / TRAIN_LOG, log)
    try:
        fitted = fit(model, cfg, phase, train_ds=train_ds, valcl_ds=dataset(cfg, "valcl"),
                     valpx_ds=dataset(cfg, "valpx"), out_dir=run_dir, device=device,
                     log=run_log, on_epoch=tracker.epoch)
    finally:
        handle.close()
        tracker.close()
    if not distributed.is_main():  # rank 0 evaluates and writes results.json; the others wait
        distributed.barrier()
        return Run(kind, key, run_dir, read_back(run_dir / "results.json"), reused=False)
    for sibling in siblings:
        if f"b-loc@{sibling.map_method}" in fitted.best:
            _write_sibling(run_dir, key, sibling, fitted, device, started, log)
    for leftover in (run_dir / "checkpoints").glob("b-loc@*.pt"):  # a sibling finished elsewhere
        leftover.unlink()
    own_best = {k: v for k, v in fitted.best.items() if "@" not in k}
    history = _history_of(fitted)
    t_eval = time.perf_counter()
    test = _evaluate_checkpoints(run_dir, cfg, kind, phase.map_method, device,
                                 _selected_thresholds(history, own_best))
    results = _results(kind, key, cfg, phase.map_method, own_best, history, test,
                       fitted, t_eval, device, started, extra)
    write_json(run_dir / "results.json", results)  # written last: marks the run complete
    # the resume state (weights + optimiser) is dead weight once the run is complete: ~2x the
    # model's size per run, which adds up to gigabytes over a profile
    (run_dir / "state.pt").unlink(missing_ok=True)
    distributed.barrier()
    return Run(kind, key, run_dir, results, reused=False)


def _write_sibling(run_dir: Path, key: str, cfg: Config, fitted: FitResult,
                   device: torch.device, started: float, log: Log) -> None:
    """Make the finished baseline run of `cfg` from a training it shared (see `shares_training`):
    its B-LOC by its own map, the common B-CL, its own valpx curve; then its test evaluation."""
    sib_dir = baseline_dir(cfg)
    with _locked(sib_dir):
        if (sib_dir / "results.json").exists():  # trained meanwhile by another process
            (run_dir / "checkpoints" / f"b-loc@{cfg.map_method}.pt").unlink(missing_ok=True)
            return
        log(f"[baseline] {cfg.method} shares this training; its run is {sib_dir}")
        ckpt = sib_dir / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        os.replace(run_dir / "checkpoints" / f"b-loc@{cfg.map_method}.pt", ckpt / "b-loc.pt")
        link_over(run_dir / "checkpoints" / "b-cl.pt", ckpt / "b-cl.pt")
        history = _history_of(fitted, cfg.map_method)
        best = {"b-loc": fitted.best[f"b-loc@{cfg.map_method}"], "b-cl": fitted.best["b-cl"]}
        write_json(sib_dir / "history.json", {"history": history, "best": best})
        lines = [f"[baseline] {cfg.method}: trained together with {run_dir.name} (same "
                 f"network, same steps, its log has the losses); B-LOC by {cfg.map_method}"]
        lines += [f"[baseline] epoch {r['epoch']:3d}/{cfg.epochs} valcl acc "
                  f"{r['valcl_accuracy']:.1f} valpx PxAP {r['valpx_pxap']:.1f}" for r in history]
        write_text(sib_dir / TRAIN_LOG, "\n".join(lines) + "\n")
        t_eval = time.perf_counter()
        test = _evaluate_checkpoints(sib_dir, cfg, "baseline", cfg.map_method, device,
                                     _selected_thresholds(history, best))
        write_json(sib_dir / "results.json", _results(
            "baseline", baseline_key(cfg), cfg, cfg.map_method, best, history, test, fitted,
            t_eval, device, started, {"trained_with": key}))


def _load_complete(kind: str, key: str, run_dir: Path, log: Log) -> Run | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    log(f"[{kind}] reusing finished run {run_dir}")
    return Run(kind, key, run_dir, read_back(path), reused=True)


@dataclass
class PlannedRun:
    """A training that a run would need: what `planning()` records instead of training."""

    kind: str
    key: str
    dir: Path
    config: Config
    epochs: int
    cached: bool  # a finished run of this key is in the cache: it would be reused
    shared_with: Path | None = None  # made by the training of that run (see shares_training)
    needs: tuple[Path, ...] = ()  # runs its training reads (a PixelCAM run: its baseline)

    @property
    def status(self) -> str:
        """cached (reused), shared (comes with another run's training) or to train."""
        return "cached" if self.cached else "shared" if self.shared_with else "to train"

    @property
    def trains(self) -> bool:
        return self.status == "to train"


_planned: ContextVar[dict[Path, PlannedRun] | None] = ContextVar("planned", default=None)


@contextmanager
def planning() -> Iterator[dict[Path, PlannedRun]]:
    """Inside, get_baseline/get_pixelcam/get_negev/get_unet train nothing: each records the run
    it would train or reuse (once per run directory, in first-use order, so shared runs count
    once) and returns a placeholder Run that only knows its kind, key and params."""
    token = _planned.set({})
    try:
        yield _planned.get()
    finally:
        _planned.reset(token)


def _cached(kind: str, key: str, cfg: Config, log: Log, train: Callable[[Path], Run],
            epochs: int, needs: tuple[Path, ...] = ()) -> Run:
    """Reuse the finished run `<kind>-<key>`, else train it under a lock (checked twice).

    Under torchrun rank 0 looks and every rank follows its answer, so all ranks reuse or all
    train together (each rank checking for itself could split them and hang the collectives).
    With `cached_only` a run that is not finished is an error instead of a training.
    """
    run_dir = _run_dir(kind, key, cfg)
    plan = _planned.get()
    if plan is not None:
        done = (run_dir / "results.json").exists()
        plan.setdefault(run_dir, PlannedRun(kind, key, run_dir, cfg, epochs, done, needs=needs))
        return Run(kind, key, run_dir, {"kind": kind, "key": key, "config": cfg.to_dict()},
                   reused=done)
    distributed.init(resolve_device(cfg.device))
    log = distributed.quiet_unless_main(log)

    def finished() -> bool:
        return distributed.agree(lambda: (run_dir / "results.json").exists())

    if finished() and (run := _load_complete(kind, key, run_dir, log)) is not None:
        return run
    if cfg.cached_only:
        raise DataError(
            f"{kind} run {run_dir} is not finished, and cached_only is set (the reports job of "
            "`pixelcam reports --submit` trains nothing): `pixelcam jobs status` shows which "
            "training is not done; submit again to train it, or drop cached_only")
    with _locked(run_dir):
        if finished() and (run := _load_complete(kind, key, run_dir, log)) is not None:
            return run
        return train(run_dir)


# Baselines whose training is the same (the WGAP net, image cross-entropy) and whose runs differ
# only in the map that picks B-LOC: one training serves all of them (see `get_baseline`).
SHARED_TRAINING = frozenset({"cam", "gradcampp", "layercam"})


def shares_training(cfg: Config) -> tuple[Config, ...]:
    """The other baselines of cfg's table (`table_methods`) that one training of cfg's baseline
    also yields: same network, same steps, bitwise the same weights at every epoch, so their
    B-LOC is selected by their own maps in the same training and their runs written with it."""
    if cfg.method not in SHARED_TRAINING:
        return ()
    others = [m for m in dict.fromkeys(cfg.methods) if m in SHARED_TRAINING and m != cfg.method]
    return tuple(cfg.replace(method=m) for m in others)


def _run_dir(kind: str, key: str, cfg: Config) -> Path:
    return Path(cfg.cache_dir) / "runs" / f"{kind}-{key}"


def baseline_dir(cfg: Config) -> Path:
    """Where the baseline run of cfg lives (finished or not)."""
    return _run_dir("baseline", baseline_key(cfg), cfg)


def get_baseline(cfg: Config, log: Log = note) -> Run:
    """The trained WSOL baseline for this config (trained now if no finished run exists).

    Training it also writes the runs of `shares_training(cfg)` that are not finished yet.
    """
    key = baseline_key(cfg)
    siblings = tuple(s for s in shares_training(cfg)
                     if not (baseline_dir(s) / "results.json").exists())
    own_dir = _run_dir("baseline", key, cfg)
    plan = _planned.get()
    planned_before = plan is not None and own_dir in plan

    def train(run_dir: Path) -> Run:
        arch = "DeiT-Tiny" if cfg.method == "sat" else cfg.backbone
        log(f"[baseline] training {cfg.method} on {arch} into {run_dir}")
        phase = PhaseSpec("baseline", cfg.map_method, cfg.epochs,
                          also_select=tuple(s.map_method for s in siblings))
        return _train_run("baseline", key, run_dir, cfg, phase, new_model(cfg, pixel=False),
                          dataset(cfg, "train", train=True), log, siblings=siblings)

    run = _cached("baseline", key, cfg, log, train, cfg.epochs)
    if plan is not None and not planned_before and not run.reused:
        for s in siblings:  # they come with this training: no training of their own
            sib_dir = baseline_dir(s)
            plan.setdefault(sib_dir, PlannedRun("baseline", baseline_key(s), sib_dir, s,
                                                s.epochs, False, shared_with=own_dir))
    return run


def store_cams(baseline: Run, cfg: Config, checkpoint: str, log: Log = note
               ) -> dict[str, torch.Tensor]:
    """True-class CAMs of cfg's train split at feature resolution, from non-augmented images.

    cfg's data may be another dataset's (external pseudo-labels): the file name says which.
    """
    path = baseline.dir / f"cams-{checkpoint}-{data_key(cfg, 'train')}.pt"
    if path.exists():
        return read_back(path)
    device = resolve_device(cfg.device)
    model = baseline.load_model(checkpoint, device)
    ds = dataset(with_data_of(baseline.config, cfg), "train", train=False)
    cams: dict[str, torch.Tensor] = {}
    for batch in eval_loader(ds, cfg.eval_batch_size, cfg.num_workers, device):
        x = batch["image"].to(device)
        maps = compute_maps(baseline.map_method, model, x, batch["label"].to(device))
        for i, m in zip(batch["index"].tolist(), maps.cpu()):
            cams[ds.records[i].image_id] = m.float().contiguous()
    save_torch(cams, path)
    log(f"[cams] stored {len(cams)} train CAMs ({checkpoint}) in {path}")
    return cams


def cam_baseline_config(cfg: Config) -> Config:
    """The params of the baseline whose CAMs seed PixelCAM: this dataset's, or cam_source's
    (Table 18)."""
    return cfg.for_dataset(cfg.cam_source) if cfg.cam_source else cfg


def cam_baseline(cfg: Config, log: Log = note) -> Run:
    """The baseline whose CAMs seed PixelCAM (see cam_baseline_config)."""
    return get_baseline(cam_baseline_config(cfg), log)


def get_pixelcam(cfg: Config, log: Log = note, baseline: Run | None = None) -> Run:
    """PixelCAM on top of the config's baseline: its CAMs seed it, its weights initialise it."""
    key = pixelcam_key(cfg)

    def train(run_dir: Path) -> Run:
        base = baseline if baseline is not None and not cfg.cam_source else cam_baseline(cfg, log)
        cams = store_cams(base, cfg, cfg.cam_checkpoint, log)
        model = new_model(cfg, pixel=True)
        missing, unexpected = model.load_state_dict(_weights(base.dir, cfg.init_checkpoint),
                                                    strict=False)
        if unexpected or any(not k.startswith("pixel_head.") for k in missing):
            raise RuntimeError(f"baseline checkpoint does not match: {missing} {unexpected}")
        log(f"[pixelcam] training on {cfg.cam_checkpoint} CAMs from {cfg.init_checkpoint} weights"
            f"{f' of the {cfg.cam_source} baseline' if cfg.cam_source else ''} into {run_dir}")
        phase = PhaseSpec("pixelcam", "pixelcam", cfg.total_pixelcam_epochs, lr=cfg.phase_lr)
        return _train_run("pixelcam", key, run_dir, cfg, phase, model,
                          dataset(cfg, "train", train=True, cams=cams), log,
                          {"baseline_key": base.key})

    base_dir = baseline.dir if baseline is not None and not cfg.cam_source else \
        baseline_dir(cam_baseline_config(cfg))
    return _cached("pixelcam", key, cfg, log, train, cfg.total_pixelcam_epochs, (base_dir,))


def get_unet(cfg: Config, log: Log = note) -> Run:
    """The fully supervised U-Net upper bound (Table 1's last row), trained on the train masks."""
    key = unet_key(cfg)

    def train(run_dir: Path) -> Run:
        log(f"[unet] training the fully supervised upper bound into {run_dir}")
        phase = PhaseSpec("unet", "unet", cfg.epochs)
        return _train_run("unet", key, run_dir, cfg, phase, model_for("unet", cfg),
                          dataset(cfg, "train", train=True, train_masks=True), log)

    return _cached("unet", key, cfg, log, train, cfg.epochs)


def get_negev(cfg: Config, log: Log = note, baseline: Run | None = None) -> Run:
    """NEGEV (two-step): a decoder on the frozen baseline, trained on the same seeds as PixelCAM."""
    key = negev_key(cfg)

    def train(run_dir: Path) -> Run:
        base = baseline or get_baseline(cfg, log)
        cams = store_cams(base, cfg, cfg.cam_checkpoint, log)
        classifier = new_model(cfg, pixel=False)
        classifier.load_state_dict(_weights(base.dir, cfg.init_checkpoint))
        log(f"[negev] training a decoder on the frozen {cfg.init_checkpoint} baseline into "
            f"{run_dir}")
        phase = PhaseSpec("negev", "negev", cfg.total_pixelcam_epochs)
        return _train_run("negev", key, run_dir, cfg, phase, new_negev(cfg, classifier),
                          dataset(cfg, "train", train=True, cams=cams), log,
                          {"baseline_key": base.key})

    base_dir = baseline.dir if baseline is not None else baseline_dir(cfg)
    return _cached("negev", key, cfg, log, train, cfg.total_pixelcam_epochs, (base_dir,))


def get_or_train(cfg: Config, log: Log = note) -> dict[str, Run]:
    """The baseline and its PixelCAM model, trained only where no finished run exists."""
    baseline = get_baseline(cfg, log)
    return {"baseline": baseline, "pixelcam": get_pixelcam(cfg, log, baseline)}



def config_for_method(cfg: Config, method: str) -> Config:
    """The same experiment with another baseline; SAT needs DeiT-Tiny's 224x224 crops."""
    changes: dict[str, Any] = {"method": method}
    if method == "sat" and cfg.image_size != 224:
        changes.update(image_size=224, resize_size=256)
    return cfg.replace(**changes)


def table_runs(cfg: Config, log: Log = note, seeds: Iterable[int] | None = None
               ) -> list[tuple[Config, Run]]:
    """Every run a main table shows, in the paper's row order: per baseline, the baseline, its
    NEGEV decoder (if asked) and its PixelCAM model; then the U-Net upper bound (if asked).

    With `seeds`, every row once per seed, seed-major (all rows of the first seed, then all rows
    of the next); None = cfg's own `seed`. A seed's run is `cfg.replace(seed=s)`'s cache entry,
    the very run a single-seed profile with `seed: s` trains or reuses.
    """
    rows: list[tuple[Config, Run]] = []
    for seed in [cfg.seed] if seeds is None else seeds:
        scfg = cfg if seed == cfg.seed else cfg.replace(seed=seed)
        for method in scfg.methods:
            mcfg = config_for_method(scfg, method)
            runs = get_or_train(mcfg, log)
            rows.append((mcfg, runs["baseline"]))
            if scfg.table_negev and method != "sat":  # the paper has no SAT + NEGEV row
                rows.append((mcfg, get_negev(mcfg, log, runs["baseline"])))
            rows.append((mcfg, runs["pixelcam"]))
        if scfg.table_unet:
            rows.append((scfg, get_unet(scfg, log)))
    return rows


def cached_on(run: Run, data: Config, checkpoint: str, split: str, name: str,
              compute: Callable[[torch.nn.Module, DataLoader, torch.device], Any]) -> Any:
    """`compute(model, loader, device)` for a finished run's checkpoint on `data`'s split, kept
    in the run's evaluations/ folder under `name` so a rerun reads it back (JSON-able results)."""
    cfg = with_data_of(run.config, data)
    path = run.dir / "evaluations" / f"{name}{checkpoint}-{data_key(cfg, split)}.json"
    if path.exists():
        return read_back(path)
    device = resolve_device(data.device)
    model = run.load_model(checkpoint, device)
    loader = eval_loader(dataset(cfg, split), data.eval_batch_size, data.num_workers, device)
    result = compute(model, loader, device)
    write_json(path, result)
    return result


def evaluate_on(run: Run, data: Config, checkpoint: str, split: str = "test",
                log: Log = note) -> dict[str, Any]:
    """A finished run's checkpoint on another dataset's split (OOD, stain shift), cached."""
    cfg = with_data_of(run.config, data)

    def compute(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict:
        result = evaluate_split(model, loader, run.map_method, device,
                                resamples=data.ttest_resamples,
                                resample_seed=data.seed).to_dict()
        result["data"] = {k: getattr(cfg, k) for k in DATA_KEYS}
        log(f"[eval] {run.kind} {run.dir.name} ({checkpoint}) on {cfg.dataset} {split}: "
            f"PxAP {result['pxap']:.1f}")
        return result

    return cached_on(run, data, checkpoint, split, "", compute)


def load_run(run_dir: str | Path) -> Run:
    """A finished run from its directory (for re-checking reports against stored results)."""
    run_dir = Path(run_dir)
    results = read_back(run_dir / "results.json")
    return Run(results["kind"], results["key"], run_dir, results, reused=True)
