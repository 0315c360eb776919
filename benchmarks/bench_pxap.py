"""PxAP evaluator throughput (M pixels/s) next to sklearn, np.histogram and a plain sum.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_pxap.py`). Writes
outputs/benchmarks/pxap.json and prints a table. Every timing comes from this one process, on one
CPU thread by default (issue 6's anchors), on the same 80x224x224 maps, so the ratios compare
like with like. The agreement with sklearn is measured on the same maps: sklearn on the maps
quantised to the 1000 thresholds (what a histogram evaluator can be exact to) and on the raw maps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixelcam.metrics import PxAP
from pixelcam.provenance import device_name, versions
from pixelcam.timing import wall_times


def make_maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob-shaped GT masks and noisy maps in [0,1] that roughly follow them (PxAP ~ 60-80)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, max(size // 16, 2), max(size // 16, 2), generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    masks = smooth > 0.55
    maps = 0.3 + 0.3 * smooth + 0.15 * masks.float() + 0.25 * torch.randn(masks.shape, generator=g)
    return maps.clamp(0, 1), masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--thresholds", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sklearn-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda if present)")
    parser.add_argument("--out", default="outputs/benchmarks/pxap.json")
    args = parser.parse_args()

    from sklearn.metrics import average_precision_score

    torch.set_num_threads(args.threads)
    maps, masks = make_maps(args.images, args.size, seed=0)
    pixels = maps.numel()
    n = args.thresholds
    y = masks.reshape(-1).numpy()
    scores = maps.reshape(-1).numpy()
    quantised = np.floor(scores.astype(np.float64) * n) / n
    edges = PxAP(n).edges
    cpu = torch.device("cpu")

    def ours_cpu() -> None:
        m = PxAP(n)
        m.update(maps, masks)

    cases: dict[str, Callable[[], object]] = {
        "sklearn average_precision_score": lambda: average_precision_score(y, scores),
        "np.histogram (one pass)": lambda: np.histogram(scores, bins=edges),
        "plain sum (torch)": lambda: maps.sum(),
        "ours: PxAP.update": ours_cpu,
    }
    seconds = {}
    for name, fn in cases.items():
        reps = args.sklearn_repeats if name.startswith("sklearn") else args.repeats
        seconds[name] = wall_times(fn, cpu, reps, warmup=0 if name.startswith("sklearn") else 2)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        maps_d, masks_d = maps.to(device), masks.to(device)

        def ours_device() -> None:
            m = PxAP(n)
            m.update(maps_d, masks_d)

        seconds[f"ours: PxAP.update on {device}"] = wall_times(ours_device, device, args.repeats, 3)

    # Agreement: ours (histogram) vs sklearn on quantised and on raw scores.
    m = PxAP(n)
    m.update(maps, masks)
    ours = m.compute()
    ap_quantised = 100 * float(average_precision_score(y, quantised))
    ap_raw = 100 * float(average_precision_score(y, scores))

    rows = {}
    for name, ts in seconds.items():
        med = statistics.median(ts)
        rows[name] = {"ms_median": round(1000 * med, 3), "ms_min": round(1000 * min(ts), 3),
                      "mpx_per_s": round(pixels / med / 1e6, 1), "repeats": len(ts)}
    sk = rows["sklearn average_precision_score"]["mpx_per_s"]
    for row in rows.values():
        row["x_sklearn"] = round(row["mpx_per_s"] / sk, 1)
    ours_row = rows["ours: PxAP.update"]
    gap = abs(ours - ap_quantised)
    summary = [
        {"figure": "PxAP update, ours (1 thread)", "value": ours_row["mpx_per_s"],
         "unit": "M px/s", "target": ">= 250 M px/s", "met": ours_row["mpx_per_s"] >= 250,
         "ratio": ours_row["x_sklearn"], "ratio_of": "x sklearn"},
        {"figure": "PxAP update, speed-up over sklearn", "value": ours_row["x_sklearn"],
         "unit": "x", "target": ">= 100x", "met": ours_row["x_sklearn"] >= 100,
         "ratio": round(ours_row["mpx_per_s"] / rows["np.histogram (one pass)"]["mpx_per_s"], 2),
         "ratio_of": "x np.histogram"},
        {"figure": "PxAP |ours - sklearn(quantised)|", "value": round(gap, 5), "unit": "points",
         "target": "<= 0.05", "met": gap <= 0.05, "ratio": None, "ratio_of": ""},
    ]
    for name, row in rows.items():
        if name.startswith("ours: PxAP.update on cuda"):
            summary.append({"figure": f"PxAP update on {device_name(device)}",
                            "value": row["mpx_per_s"], "unit": "M px/s", "target": "(GPU)",
                            "met": None, "ratio": row["x_sklearn"], "ratio_of": "x sklearn"})
    result = {
        "benchmark": "PxAP evaluator throughput", "topic": "pxap",
        "input": {"images": args.images, "size": args.size, "pixels": pixels,
                  "thresholds": n, "dtype": str(maps.dtype), "mask": "bool"},
        "device": device_name(cpu), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(), "versions": versions(), "results": rows,
        "agreement": {"ours": round(ours, 5), "sklearn_quantised": round(ap_quantised, 5),
                      "sklearn_raw": round(ap_raw, 5), "abs_diff_quantised": round(gap, 6),
                      "abs_diff_raw": round(abs(ours - ap_raw), 6)},
        "issue_anchors_mpx_per_s": {"sklearn": 2.5, "np.histogram": 65, "plain sum": 4500},
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.images}x{args.size}x{args.size} = {pixels / 1e6:.2f} M pixels, "
          f"{torch.get_num_threads()} thread(s), {n} thresholds")
    print(f"{'case':38s} {'ms (median)':>12s} {'M px/s':>10s} {'x sklearn':>10s}")
    for name, row in rows.items():
        print(f"{name:38s} {row['ms_median']:12.2f} {row['mpx_per_s']:10.1f} "
              f"{row['x_sklearn']:10.1f}")
    print(f"PxAP ours {ours:.4f}  sklearn quantised {ap_quantised:.4f} (|diff| {gap:.5f})  "
          f"sklearn raw {ap_raw:.4f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
