"""The kit's training loop (pixelcam.train.fit) against a bare loop doing the same work.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_loop.py [--data-root DIR]`). Writes
outputs/benchmarks/loop.json and prints a table.

Both loops train the same model from the same weights on the same config and data, for both
phases (the WSOL baseline, then PixelCAM on the baseline's CAMs), and validate every epoch on
valcl (accuracy) and valpx (PxAP) as the protocol does, keeping the B-LOC/B-CL weights. The bare
loop, written here in a few dozen lines, decodes every image once, draws the same augmentations
(crop, flips, colour jitter) per sample, calls the kit's objectives and metric, and writes
nothing. The kit runs twice: as configured (images kept in memory, resume state once a minute)
and as it ran before those two (`image_cache_mb: 0, state_every_s: 0`: every image decoded at
every read, the state written after every epoch). Its two histories must be identical: neither
setting may change a number. The three loops alternate phase by phase in one process, so a slow
spell of the machine hits all of them.

Default data: a GlaS-like synthetic set at GlaS's own size (67 train images of 775x522 PNG, the
published fold-0's count), written once into the cache; `--data-root` runs on a real data root
(e.g. a prepared GlaS). Default model: the real-cpu profile's (EfficientNet-Lite0 up to stage 3,
224 px crops of 256, batch 16), untrained weights (the time does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from pixelcam.builders import data_paths, dataset, new_model
from pixelcam.config import Config, load_config
from pixelcam.data.dataset import IMAGENET_MEAN, IMAGENET_STD, _mask_array
from pixelcam.data.folds import read_split
from pixelcam.evaluate import image_logits
from pixelcam.maps import compute_maps
from pixelcam.metrics import PxAP
from pixelcam.provenance import device_name, versions
from pixelcam.train import (
    OBJECTIVES,
    FitResult,
    PhaseSpec,
    fit,
    make_optimizer,
    make_scheduler,
    seed_everything,
)

PARTS = ("data_s", "step_s", "val_s", "state_s")
GOAL = 1.15  # the kit's loop at most this many times the bare loop's time


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BareData:
    """Every image of a split decoded, resized and kept as uint8, once."""

    def __init__(self, cfg: Config, split: str, side: int, masks: bool) -> None:
        root, fold = data_paths(cfg)
        self.records = read_split(fold, split)
        self.images, self.masks = [], []
        for r in self.records:
            image = Image.open(root / r.image_id).convert("RGB")
            self.images.append(v2.functional.pil_to_tensor(image.resize((side, side),
                                                                        Image.BILINEAR)))
            if masks and r.mask_path:
                mask = Image.fromarray(_mask_array(Image.open(root / r.mask_path))
                                       .astype(np.uint8)).resize((side, side), Image.NEAREST)
                self.masks.append(torch.from_numpy(np.asarray(mask).copy()))
            elif masks:
                self.masks.append(torch.zeros(side, side, dtype=torch.uint8))
        self.labels = torch.tensor([r.label for r in self.records])


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def bare_fit(model: torch.nn.Module, cfg: Config, phase: PhaseSpec, data: dict[str, BareData],
             device: torch.device, cams: dict[str, torch.Tensor] | None = None) -> FitResult:
    """The minimal loop: same batches of `batch_size` (last one filled), augmentations,
    objective, SGD, schedule, per-epoch validation and best-epoch selection; no files."""
    seed_everything(cfg.seed)
    model.to(device)
    opt = make_optimizer(model, cfg, phase.lr)
    sched = make_scheduler(opt, cfg)
    jitter = v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.05)
    objective = OBJECTIVES[phase.objective]
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    train, valcl, valpx = data["train"], data["valcl"], data["valpx"]
    r, s, b = cfg.resize_size, cfg.train_crop or cfg.image_size, cfg.batch_size
    train_cams = None
    if cams is not None:  # the stored low-resolution CAMs at the resized image's size
        train_cams = [torch.nn.functional.interpolate(
            cams[rec.image_id][None, None].float(), size=(r, r), mode="bilinear",
            align_corners=False, antialias=True)[0, 0] for rec in train.records]
    result, best = FitResult(), {"b-loc": -1.0, "b-cl": -1.0}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    t0 = time.perf_counter()
    for epoch in range(phase.epochs + 1):
        clock = {"epoch": epoch, "data_s": 0.0, "step_s": 0.0, "state_s": 0.0}
        row: dict[str, Any] = {"epoch": epoch}
        if epoch > 0:
            model.train()
            n = len(train.records)
            order = torch.randperm(n)
            order = torch.cat([order, order[torch.arange(-n % b) % n]]) if n % b else order
            for idx in order.view(-1, b).tolist():
                tick = time.perf_counter()
                images, crops = [], []
                for i in idx:
                    top, left = torch.randint(0, r - s + 1, (2,)).tolist()
                    flips = [d for d, f in ((-1, torch.rand(1) < 0.5), (-2, torch.rand(1) < 0.5))
                             if f]
                    img = train.images[i][:, top:top + s, left:left + s]
                    images.append(jitter(img.flip(flips) if flips else img))
                    if train_cams is not None:
                        cam = train_cams[i][top:top + s, left:left + s]
                        crops.append(cam.flip(flips) if flips else cam)
                batch = {"image": _normalise(torch.stack(images)).to(device),
                         "label": train.labels[idx].to(device)}
                if crops:
                    batch["cam"] = torch.stack(crops).to(device)
                fetched = time.perf_counter()
                loss, _ = objective(model, batch, cfg, gen, False)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _sync(device)
                clock["data_s"] += fetched - tick
                clock["step_s"] += time.perf_counter() - fetched
            sched.step()
        tick = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(valcl.records), cfg.eval_batch_size):
                x = _normalise(torch.stack(valcl.images[i:i + cfg.eval_batch_size])).to(device)
                pred = image_logits(model(x)).argmax(1).cpu()
                correct += int((pred == valcl.labels[i:i + cfg.eval_batch_size]).sum())
        metric = PxAP()
        for i in range(0, len(valpx.records), cfg.eval_batch_size):
            x = _normalise(torch.stack(valpx.images[i:i + cfg.eval_batch_size])).to(device)
            y = valpx.labels[i:i + cfg.eval_batch_size].to(device)
            maps = compute_maps(phase.map_method, model, x, y, size=tuple(x.shape[-2:]))
            metric.update(maps, torch.stack(valpx.masks[i:i + cfg.eval_batch_size]).to(device))
        row.update(valcl_accuracy=100.0 * correct / len(valcl.records), valpx_pxap=metric.compute())
        for name, key in (("b-loc", "valpx_pxap"), ("b-cl", "valcl_accuracy")):
            if row[key] >= best[name]:
                best[name], result.best[name] = row[key], epoch
                weights[name] = {k: v.detach().to("cpu", copy=True)
                                 for k, v in model.state_dict().items()}
        clock["val_s"] = time.perf_counter() - tick
        result.history.append(row)
        result.timings.append(clock)
    result.seconds = time.perf_counter() - t0
    return result


def kit_fit(model: torch.nn.Module, cfg: Config, phase: PhaseSpec, out: Path,
            device: torch.device, cams: dict[str, torch.Tensor] | None = None) -> FitResult:
    """pixelcam.train.fit as the run cache calls it, with fresh datasets (nothing preloaded)."""
    return fit(model, cfg, phase, train_ds=dataset(cfg, "train", train=True, cams=cams),
               valcl_ds=dataset(cfg, "valcl"), valpx_ds=dataset(cfg, "valpx"), out_dir=out,
               device=device, log=lambda s: None)


def train_cams(model: torch.nn.Module, cfg: Config, method: str,
               device: torch.device) -> dict[str, torch.Tensor]:
    """The baseline's CAMs of the train split, as pixelcam.pipelines.store_cams makes them."""
    ds = dataset(cfg, "train")
    model.eval()
    cams = {}
    for i in range(0, len(ds), cfg.eval_batch_size):
        items = [ds[j] for j in range(i, min(i + cfg.eval_batch_size, len(ds)))]
        x = torch.stack([it["image"] for it in items]).to(device)
        y = torch.stack([it["label"] for it in items]).to(device)
        for it, m in zip(items, compute_maps(method, model, x, y).cpu()):
            cams[ds.records[it["index"]].image_id] = m.float()
    return cams


def per_epoch(result: FitResult) -> dict[str, float]:
    """Mean seconds per trained epoch of each part (epoch 0, validation only, left out)."""
    trained = [t for t in result.timings if t["epoch"] > 0]
    out = {p: sum(t.get(p, 0.0) for t in trained) / max(len(trained), 1) for p in PARTS}
    out["total_s"] = sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/real-cpu/01_main_tables.yaml")
    parser.add_argument("--data-root", default="synthetic",
                        help="a prepared data root; default: GlaS-sized synthetic images")
    parser.add_argument("--epochs", type=int, default=3, help="per phase")
    parser.add_argument("--method", default="layercam")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--out", default="outputs/benchmarks/loop.json")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    with TemporaryDirectory() as tmp:
        cache = os.environ.get("PIXELCAM_BENCH_CACHE", ".cache/pixelcam")
        cfg = load_config(args.params, {
            "data_root": args.data_root, "method": args.method, "epochs": args.epochs,
            "pixelcam_epochs": args.epochs, "pretrained": False, "device": str(device),
            "cache_dir": cache, "synthetic_n_train": 67, "synthetic_n_valcl": 12,
            "synthetic_n_valpx_per_class": 3, "synthetic_width": 775,
            "synthetic_height": 522})
        before = cfg.replace(image_cache_mb=0, state_every_s=0.0)
        data_paths(cfg)  # writes the synthetic set once, outside every timing
        wall: dict[str, dict[str, float]] = {"baseline": {}, "pixelcam": {}}

        def timed(phase: str, name: str, run: Any) -> FitResult:
            """`run()` timed from outside: the kit's preload and the bare decode count."""
            _sync(device)
            tick = time.perf_counter()
            res = run()
            _sync(device)
            wall[phase][name] = wall[phase].get(name, 0.0) + time.perf_counter() - tick
            return res

        data: dict[str, BareData] = {}

        def decode() -> None:  # once, for both phases of the bare loop: counted in phase 1's
            for split in ("train", "valcl", "valpx"):
                side = cfg.resize_size if split == "train" else cfg.image_size
                data[split] = BareData(cfg, split, side, masks=split == "valpx")

        results: dict[str, dict[str, FitResult]] = {}
        base_phase = PhaseSpec("baseline", cfg.map_method, cfg.epochs)
        results["baseline"] = {
            "kit before": timed("baseline", "kit before", lambda: kit_fit(
                new_model(cfg, False), before, base_phase, Path(tmp, "b0"), device)),
        }
        timed("baseline", "bare", decode)
        results["baseline"]["bare"] = timed("baseline", "bare", lambda: bare_fit(
            new_model(cfg, False), cfg, base_phase, data, device))
        results["baseline"]["kit"] = timed("baseline", "kit", lambda: kit_fit(
            new_model(cfg, False), cfg, base_phase, Path(tmp, "b1"), device))
        trained = new_model(cfg, False)
        trained.load_state_dict(torch.load(Path(tmp, "b1", "checkpoints", "b-loc.pt")))
        cams = train_cams(trained.to(device), cfg, cfg.map_method, device)
        init = torch.load(Path(tmp, "b1", "checkpoints", "b-cl.pt"))

        def pixelcam_model() -> torch.nn.Module:
            model = new_model(cfg, True)
            model.load_state_dict(init, strict=False)
            return model

        pix_phase = PhaseSpec("pixelcam", "pixelcam", cfg.total_pixelcam_epochs,
                              lr=cfg.phase_lr)
        results["pixelcam"] = {
            "kit before": timed("pixelcam", "kit before", lambda: kit_fit(
                pixelcam_model(), before, pix_phase, Path(tmp, "p0"), device, cams)),
            "bare": timed("pixelcam", "bare", lambda: bare_fit(
                pixelcam_model(), cfg, pix_phase, data, device, cams)),
            "kit": timed("pixelcam", "kit", lambda: kit_fit(
                pixelcam_model(), cfg, pix_phase, Path(tmp, "p1"), device, cams)),
        }

    rows, summary, same = {}, [], True
    for phase, loops in results.items():
        same &= loops["kit before"].history == loops["kit"].history
        for name, res in loops.items():
            split = per_epoch(res)
            rows[f"{phase} / {name}"] = {**{k: round(v, 4) for k, v in split.items()},
                                         "wall_s": round(wall[phase][name], 2),
                                         "x_bare": round(wall[phase][name]
                                                         / wall[phase]["bare"], 3)}
    for name in ("kit before", "kit"):
        total = sum(wall[p][name] for p in wall)
        ratio = total / sum(wall[p]["bare"] for p in wall)
        label = ("images decoded at every read, state after every epoch" if name == "kit before"
                 else "as configured: images in memory, state once a minute")
        summary.append({
            "figure": f"training loop, both phases, kit {label} ({device.type})",
            "value": round(total, 2), "unit": "s",
            "target": f"<= {GOAL}x the bare loop" if name == "kit" else "-",
            "met": ratio <= GOAL if name == "kit" else None, "ratio": round(ratio, 3),
            "ratio_of": "x the bare loop (wall, both phases)"})
    result = {
        "benchmark": "training loop: pixelcam.train.fit vs a bare loop", "topic": "loop",
        "data": args.data_root, "backbone": cfg.backbone, "image_size": cfg.image_size,
        "batch": cfg.batch_size, "epochs_per_phase": args.epochs, "method": args.method,
        "histories_identical_before_after": same, "device": device_name(device),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "versions": versions(), "results": rows, "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{cfg.backbone} {cfg.image_size} px, batch {cfg.batch_size}, {args.epochs} epochs per "
          f"phase, data {args.data_root}, {device_name(device)}; seconds per trained epoch")
    print(f"{'loop':24s} {'data':>7s} {'step':>7s} {'valid.':>7s} {'state':>7s} {'epoch':>7s} "
          f"{'wall':>8s} {'x bare':>7s}")
    for name, row in rows.items():
        print(f"{name:24s} " + " ".join(f"{row[p]:7.3f}" for p in (*PARTS, "total_s"))
              + f" {row['wall_s']:8.2f} {row['x_bare']:7.3f}")
    for row in summary:
        print(f"{row['figure']}: {row['value']} s, {row['ratio']}x the bare loop"
              + (f" (target {row['target']})" if row["met"] is not None else ""))
    print(f"kit histories before/after identical: {same}")
    print(f"written {out}")
    if not same:
        raise SystemExit("the image cache or the state cadence changed the numbers")


if __name__ == "__main__":
    main()
