"""Preflight: a profile's exact params and code path on a few real images, 1 epoch per phase.

A multi-day GPU run that dies in its last notebook (a missing weight, a data root, a shape only
the real images have) costs days. The preflight runs every notebook of the profile on the user's
own data roots and weights, changing only:

* the images: each split of each dataset keeps its first `per_class` images of every class (a
  subset fold written beside the cache, read by the same loader; the data root is untouched);
* the epochs: 1 per phase (both datasets' blocks too);
* notebook 03's stain levels: at most one per train image of the subset (each level is fitted on
  its own image of the other dataset); notebook 12's t-SNE panels: 1 image per class, 100 pixels
  each (CPU-bound t-SNE took 6 of a 16-minute CPU preflight); notebook 09's timings: 1 timed
  pass per row after the 2 warm-up passes, instead of 10;
* the device, when asked (`-p device=cpu`), and on a CPU the batch sizes, which are capped at
  the subset's size so that a laptop does not push 32 full-size images through ResNet-50 per step
  (a GPU keeps the profile's batch sizes: their memory is part of what a preflight checks), and
  the loader processes (none: starting them costs more than loading a few images).

Its runs live in their own cache folder, emptied first, so each preflight trains every run afresh
and never reads a run of another profile. Since no preflight reuses them, a run's weights are
deleted as soon as no notebook still to run asks for it: the paper profile's 88 one-epoch runs
otherwise keep 16 GB of checkpoints on disk. Results and logs stay for the reports.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from pixelcam.atomic import write_text
from pixelcam.builders import data_paths
from pixelcam.config import Config, load_config
from pixelcam.data.folds import (
    ENCODING_FILE,
    SPLITS,
    Record,
    find_encoding,
    read_split,
    write_split,
)
from pixelcam.errors import DataError
from pixelcam.evaluate import resolve_device

PER_CLASS = 1  # images of each class kept per split
TSNE_PIXELS = 100  # pixels per image in notebook 12's t-SNE panels


def _first_per_class(records: list[Record], per_class: int,
                     prefer: list[Record] = ()) -> list[Record]:
    """The first `per_class` records of each label, taking `prefer` (valpx inside valcl) first."""
    position = {r.image_id: i for i, r in enumerate(records)}
    preferred = {r.image_id for r in prefer if r.image_id in position}
    # a stable sort puts the preferred records first; linear in the split (CAMELYON: thousands)
    ordered = sorted(records, key=lambda r: r.image_id not in preferred)
    kept: dict[int, int] = {}
    out = []
    for r in ordered:
        if kept.get(r.label, 0) < per_class:
            kept[r.label] = kept.get(r.label, 0) + 1
            out.append(r)
    return sorted(out, key=lambda r: position[r.image_id])  # keep the fold's own order


def subset_fold(fold_dir: Path, out_dir: Path,
                per_class: int = PER_CLASS) -> tuple[Path, dict[str, list[Record]]]:
    """Write `out_dir/fold-0`: every split of `fold_dir` cut to `per_class` images per class.

    valpx stays a subset of valcl, as in the protocol. Returns the new fold directory and the
    records written per split.
    """
    encoding = find_encoding(fold_dir)
    splits = {s: read_split(fold_dir, s, encoding) for s in SPLITS}
    valpx = _first_per_class(splits["valpx"], per_class)
    cut = {
        "train": _first_per_class(splits["train"], per_class),
        "valcl": _first_per_class(splits["valcl"], per_class, prefer=valpx),
        "valpx": valpx,
        "test": _first_per_class(splits["test"], per_class),
    }
    target = out_dir / "fold-0"
    write_text(out_dir / ENCODING_FILE, yaml.safe_dump(encoding, sort_keys=True))
    for split, records in cut.items():
        write_split(target, split, records)
    return target, cut


def overrides(profile_cfgs: Mapping[str, Config], overrides_in: Mapping[str, Any],
              work_dir: Path, per_class: int = PER_CLASS) -> dict[str, Any]:
    """The params a preflight adds on top of the user's `-p` overrides, for every notebook.

    `profile_cfgs` are the notebooks' loaded configs (the user's overrides applied); the subset
    folds of every dataset they cover are written under `work_dir/folds/<dataset>/`.
    """
    covered: dict[str, Config] = {}
    for cfg in profile_cfgs.values():
        for name in cfg.dataset_names + ([cfg.cam_source] if cfg.cam_source else []):
            covered.setdefault(name, cfg.for_dataset(name))
    extra: dict[str, Any] = {"epochs": 1, "pixelcam_epochs": 1, "tsne_images": 1,
                             "tsne_pixels": TSNE_PIXELS, "timing_repeats": 1,
                             "cache_dir": str(work_dir / "cache"),
                             # its cache is emptied at each start: a resume state is never read
                             "resume_state": False}
    # notebook 03 fits each stain level on its own image of the other dataset's train split
    levels = max(cfg.stain_levels for cfg in profile_cfgs.values())
    for name, cfg in covered.items():
        root, fold = data_paths(cfg)
        subset, records = subset_fold(fold, work_dir / "folds" / name, per_class)
        levels = min(levels, len(records["train"]))
        extra[f"{name}.data_root"] = str(root.resolve())
        extra[f"{name}.fold_dir"] = str(subset)
        for key in ("epochs", "pixelcam_epochs"):  # a block's epochs (camelyon16: 20) too
            extra[f"{name}.{key}"] = 1
    extra["stain_levels"] = levels
    first = next(iter(profile_cfgs.values()))
    if first.dataset in covered:
        extra["fold_dir"] = extra[f"{first.dataset}.fold_dir"]
    device = overrides_in.get("device", first.device)
    if resolve_device(str(device)).type == "cpu":
        extra["batch_size"] = min(first.batch_size, 2 * per_class)
        extra["eval_batch_size"] = min(first.eval_batch_size, 2 * per_class)
        extra["num_workers"] = 0  # loader processes cost more to start than a few images
        for name in covered:
            extra[f"{name}.batch_size"] = extra["batch_size"]
    return extra


def prepare(params_files: Mapping[str, Path], overrides_in: Mapping[str, Any],
            work_dir: Path, per_class: int = PER_CLASS) -> dict[str, Any]:
    """Empty the preflight's folder, load every notebook's params, write the subset folds."""
    if work_dir.exists():
        shutil.rmtree(work_dir)  # every preflight trains every run afresh
    work_dir.mkdir(parents=True)
    cfgs = {}
    for name, path in params_files.items():
        cfgs[name] = load_config(path, dict(overrides_in))
    if not cfgs:
        raise DataError("no notebook to preflight: check --only")
    return overrides(cfgs, overrides_in, work_dir, per_class)


def prune_checkpoints(cache_dir: Path, keep: Collection[Path] = ()) -> int:
    """Delete the weights (checkpoints, resume state) of every run in `cache_dir` outside `keep`;
    return the bytes freed (a file with two names counted once)."""
    keep = {Path(k).resolve() for k in keep}
    freed, seen = 0, set()
    for run_dir in sorted((Path(cache_dir) / "runs").glob("*")):
        if run_dir.resolve() in keep:
            continue
        for path in [*(run_dir / "checkpoints").glob("*.pt"), run_dir / "state.pt"]:
            try:
                stat = path.stat()
                path.unlink()
            except FileNotFoundError:
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                freed += stat.st_size
    return freed


__all__ = ["PER_CLASS", "TSNE_PIXELS", "subset_fold", "overrides", "prepare", "prune_checkpoints"]
