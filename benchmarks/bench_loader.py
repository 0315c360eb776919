"""Data loading vs training: decoded, augmented samples/s with 0, 1, 2 workers vs the step rate.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_loader.py`). Writes
outputs/benchmarks/loader.json and prints a table. The loader is the kit's training input:
WSOLDataset(train=True) with stored CAMs (decode, resize, random crop and flips applied to image
and CAM alike, colour jitter) on the embedded synthetic dataset, batched by a DataLoader as in
training. The step is the PixelCAM training step (pixelcam.train.pixelcam_objective_step,
backward, SGD) of the quick profile's model (ResNet-18, output stride 8, 128x128, batch 16).
Both rates are measured in this one process; loader rates are measured alone, so with workers
they are an upper bound on a machine whose cores the step also uses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from pixelcam.config import load_config
from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.folds import Record
from pixelcam.data.synthetic import FOLD_DIR, SyntheticSpec, ensure_dataset
from pixelcam.models.model import build_model
from pixelcam.provenance import device_name, versions


def stored_cams(image_ids: list[str], size: int, seed: int) -> dict[str, torch.Tensor]:
    """Low-resolution CAMs (feature grid), as store_cams keeps them for the PixelCAM phase."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(len(image_ids), 1, 4, 4, generator=g)
    cams = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return {i: c.contiguous() for i, c in zip(image_ids, cams)}


def loader_rate(ds: WSOLDataset, batch: int, workers: int, epochs: int) -> float:
    """Samples per second over ``epochs`` full epochs, after one warm-up epoch (worker start)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up: spawns the workers, fills the page cache
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for b in loader:
            n += b["image"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/quick/01_main_tables.yaml")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--out", default="outputs/benchmarks/loader.json")
    args = parser.parse_args()

    cfg = load_config(args.params)
    spec = SyntheticSpec(n_train=cfg.synthetic_n_train, n_valcl=cfg.synthetic_n_valcl,
                         n_test=cfg.synthetic_n_test,
                         n_valpx_per_class=cfg.synthetic_n_valpx_per_class,
                         width=cfg.synthetic_width, height=cfg.synthetic_height,
                         seed=cfg.synthetic_seed)
    root = ensure_dataset(Path(cfg.cache_dir) / "data", spec)
    probe = WSOLDataset(root, root / FOLD_DIR, "train", train=True, image_size=cfg.image_size,
                        resize_size=cfg.resize_size)
    grid = max(cfg.image_size // cfg.output_stride, 1)
    cams = stored_cams([r.image_id for r in probe.records], grid, seed=0)
    ds = WSOLDataset(root, root / FOLD_DIR, "train", train=True, image_size=cfg.image_size,
                     resize_size=cfg.resize_size, cams=cams, color_jitter=cfg.color_jitter)

    # Decodes per sample over one epoch, in this process: the image is read once per item.
    decodes = 0
    read = ds._read_image

    def counting_read(record: Record) -> Image.Image:
        nonlocal decodes
        decodes += 1
        return read(record)

    ds._read_image = counting_read  # type: ignore[method-assign]
    for i in range(len(ds)):
        ds[i]
    decodes_per_sample = decodes / len(ds)
    del ds._read_image

    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    rates = {w: loader_rate(ds, cfg.batch_size, w, args.epochs) for w in workers}

    # The model's step rate: PixelCAM step of the quick profile's model on the CPU.
    from pixelcam.train import make_optimizer, pixelcam_objective_step

    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.backbone, num_classes=cfg.num_classes,
                        output_stride=cfg.output_stride, pixel_head=cfg.pixel_head).train()
    opt = make_optimizer(model, cfg)
    batch = next(iter(DataLoader(ds, batch_size=cfg.batch_size, shuffle=False)))
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        loss, _ = pixelcam_objective_step(model, batch, cfg, gen, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.step_repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    step_rate = cfg.batch_size / step_s

    rows = {f"loader, {w} worker{'s' if w != 1 else ''}": {
        "samples_per_s": round(r, 1), "x_step_rate": round(r / step_rate, 2)}
        for w, r in rates.items()}
    rows["PixelCAM training step"] = {"samples_per_s": round(step_rate, 1), "x_step_rate": 1.0,
                                      "ms_per_step": round(1000 * step_s, 1)}
    summary = []
    for w, r in rates.items():
        summary.append({
            "figure": f"Loader, {w} worker{'s' if w != 1 else ''}, {cfg.image_size}^2 with CAMs",
            "value": round(r, 1), "unit": "samples/s", "target": ">= step rate "
            f"({step_rate:.1f}/s)", "met": r >= step_rate, "ratio": round(r / step_rate, 2),
            "ratio_of": "x the step rate"})
    if 0 in rates:
        # Without workers the loading adds to the step: its share of the epoch's time.
        share = (1 / rates[0]) / (1 / rates[0] + 1 / step_rate)
        rows["loader, 0 workers"]["share_of_epoch_in_process"] = round(share, 4)
        summary.append({
            "figure": "In-process loading share of an epoch (0 workers)",
            "value": round(100 * share, 2), "unit": "%", "target": "(small)", "met": None,
            "ratio": None, "ratio_of": ""})
    summary.append({"figure": "Image decodes per sample (one epoch)",
                    "value": round(decodes_per_sample, 3), "unit": "", "target": "1 (once)",
                    "met": decodes_per_sample == 1.0, "ratio": None, "ratio_of": ""})
    result = {
        "benchmark": "data loading vs training step", "topic": "loader",
        "params": args.params, "dataset": f"synthetic {spec.digest()} ({len(ds)} train images "
        f"{spec.width}x{spec.height})", "image_size": cfg.image_size,
        "resize_size": cfg.resize_size, "cam_grid": grid, "batch": cfg.batch_size,
        "backbone": cfg.backbone, "output_stride": cfg.output_stride, "epochs": args.epochs,
        "device": device_name(device), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "versions": versions(), "results": rows, "decodes_per_sample": decodes_per_sample,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{len(ds)} synthetic train images -> {cfg.image_size}x{cfg.image_size} crops with "
          f"{grid}x{grid} CAMs, batch {cfg.batch_size}; {cfg.backbone} os{cfg.output_stride}; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(f"{'case':30s} {'samples/s':>10s} {'x step':>8s}")
    for name, row in rows.items():
        print(f"{name:30s} {row['samples_per_s']:10.1f} {row['x_step_rate']:8.2f}")
    print(f"image decodes per sample: {decodes_per_sample:.3f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
