"""The trainings behind every table: baseline, PixelCAM, NEGEV and the U-Net, through the store.

Each `get_*` returns the finished run of its config, training it first when the store has none
(pixelcam.store). One training of a WGAP baseline also writes the runs of the other baselines
of its table that share it (`shares_training`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pixelcam import distributed
from pixelcam.atomic import link_over, read_back, save_torch, write_json, write_text
from pixelcam.builders import (
    data_key,
    dataset,
    model_for,
    model_holding,
    new_model,
    new_negev,
    with_data_of,
)
from pixelcam.config import Config, baseline_key, negev_key, pixelcam_key, unet_key
from pixelcam.data.dataset import WSOLDataset
from pixelcam.evaluate import eval_loader, evaluate_split, resolve_device
from pixelcam.maps import compute_maps
from pixelcam.methods import METHODS, row_label
from pixelcam.models.model import WSOLModel
from pixelcam.progress import Tracker, file_log, note
from pixelcam.provenance import provenance
from pixelcam.store import (
    TRAIN_LOG,
    Log,
    PlannedRun,
    Run,
    cached,
    checkpoint_weights,
    current_plan,
    locked,
    run_dir_of,
)
from pixelcam.train import CHECKPOINTS, FitResult, PhaseSpec, fit


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
        model = model_holding(kind, cfg, checkpoint_weights(run_dir, name)).to(device)
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
    with locked(sib_dir):
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



def shares_training(cfg: Config) -> tuple[Config, ...]:
    """The other baselines of cfg's table (`table_methods`) that one training of cfg's baseline
    also yields: same network, same steps, bitwise the same weights at every epoch, so their
    B-LOC is selected by their own maps in the same training and their runs written with it."""
    if not METHODS[cfg.method].shares_wgap_training:
        return ()
    others = [m for m in dict.fromkeys(cfg.methods)
              if METHODS[m].shares_wgap_training and m != cfg.method]
    return tuple(cfg.replace(method=m) for m in others)



def baseline_dir(cfg: Config) -> Path:
    """Where the baseline run of cfg lives (finished or not)."""
    return run_dir_of("baseline", baseline_key(cfg), cfg)


def get_baseline(cfg: Config, log: Log = note) -> Run:
    """The trained WSOL baseline for this config (trained now if no finished run exists).

    Training it also writes the runs of `shares_training(cfg)` that are not finished yet.
    """
    key = baseline_key(cfg)
    siblings = tuple(s for s in shares_training(cfg)
                     if not (baseline_dir(s) / "results.json").exists())
    own_dir = run_dir_of("baseline", key, cfg)
    plan = current_plan()
    planned_before = plan is not None and own_dir in plan

    def train(run_dir: Path) -> Run:
        arch = METHODS[cfg.method].architecture_of(cfg)
        log(f"[baseline] training {cfg.method} on {arch} into {run_dir}")
        phase = PhaseSpec("baseline", cfg.map_method, cfg.epochs,
                          also_select=tuple(s.map_method for s in siblings))
        return _train_run("baseline", key, run_dir, cfg, phase, new_model(cfg, pixel=False),
                          dataset(cfg, "train", train=True), log, siblings=siblings)

    run = cached("baseline", key, cfg, log, train, cfg.epochs)
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
        missing, unexpected = model.load_state_dict(
            checkpoint_weights(base.dir, cfg.init_checkpoint), strict=False)
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
    return cached("pixelcam", key, cfg, log, train, cfg.total_pixelcam_epochs, (base_dir,))


def get_unet(cfg: Config, log: Log = note) -> Run:
    """The fully supervised U-Net upper bound (Table 1's last row), trained on the train masks."""
    key = unet_key(cfg)

    def train(run_dir: Path) -> Run:
        log(f"[unet] training the fully supervised upper bound into {run_dir}")
        phase = PhaseSpec("unet", "unet", cfg.epochs)
        return _train_run("unet", key, run_dir, cfg, phase, model_for("unet", cfg),
                          dataset(cfg, "train", train=True, train_masks=True), log)

    return cached("unet", key, cfg, log, train, cfg.epochs)


def get_negev(cfg: Config, log: Log = note, baseline: Run | None = None) -> Run:
    """NEGEV (two-step): a decoder on the frozen baseline, trained on the same seeds as PixelCAM."""
    key = negev_key(cfg)

    def train(run_dir: Path) -> Run:
        base = baseline or get_baseline(cfg, log)
        cams = store_cams(base, cfg, cfg.cam_checkpoint, log)
        classifier = new_model(cfg, pixel=False)
        classifier.load_state_dict(checkpoint_weights(base.dir, cfg.init_checkpoint))
        log(f"[negev] training a decoder on the frozen {cfg.init_checkpoint} baseline into "
            f"{run_dir}")
        phase = PhaseSpec("negev", "negev", cfg.total_pixelcam_epochs)
        return _train_run("negev", key, run_dir, cfg, phase, new_negev(cfg, classifier),
                          dataset(cfg, "train", train=True, cams=cams), log,
                          {"baseline_key": base.key})

    base_dir = baseline.dir if baseline is not None else baseline_dir(cfg)
    return cached("negev", key, cfg, log, train, cfg.total_pixelcam_epochs, (base_dir,))


def get_or_train(cfg: Config, log: Log = note) -> dict[str, Run]:
    """The baseline and its PixelCAM model, trained only where no finished run exists."""
    baseline = get_baseline(cfg, log)
    return {"baseline": baseline, "pixelcam": get_pixelcam(cfg, log, baseline)}



def config_for_method(cfg: Config, method: str) -> Config:
    """The same experiment with another baseline, at its fixed input size if it has one."""
    changes: dict[str, Any] = {"method": method}
    fixed = METHODS[method]
    if fixed.input_size and cfg.image_size != fixed.input_size:
        changes.update(image_size=fixed.input_size, resize_size=fixed.resize_size)
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
            if scfg.table_negev and METHODS[method].negev_row:
                rows.append((mcfg, get_negev(mcfg, log, runs["baseline"])))
            rows.append((mcfg, runs["pixelcam"]))
        if scfg.table_unet:
            rows.append((scfg, get_unet(scfg, log)))
    return rows


