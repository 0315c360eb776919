"""Seeder time for a batch of CAMs: a per-image Python loop, the batched reference, and ours.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_seeder.py`). Writes
outputs/benchmarks/seeder.json and prints a table. The three PB seeders draw from the same law
(FG without replacement proportional to C + 1e-6, BG uniform in the lowest min_p region with a
stable order on ties); they are timed in one process on the same CAMs, on one CPU thread by
default. Two kinds of CAMs: smooth min-max normalised maps (all values distinct) and ReLU-like
maps with many exact zeros (the lowest region then ends inside a tie, the harder case).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from pixelcam.provenance import device_name, versions
from pixelcam.sampler import IGNORE_INDEX, sample_seeds_pb, sample_seeds_th
from pixelcam.timing import wall_times

EPS = 1e-6


def make_cams(b: int, size: int, ties: bool, seed: int) -> torch.Tensor:
    """Smooth CAM-like maps in [0, 1]; ``ties``: shifted and clipped at 0 before normalising."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 1, max(size // 16, 2), max(size // 16, 2), generator=g)
    cams = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    if ties:
        cams = (cams - cams.flatten(1).quantile(0.4, dim=1).view(b, 1, 1)).clamp(min=0)
    lo = cams.flatten(1).amin(1).view(b, 1, 1)
    hi = cams.flatten(1).amax(1).view(b, 1, 1)
    return ((cams - lo) / (hi - lo)).contiguous()


def per_image_loop(cams: torch.Tensor, n_fg: int, n_bg: int, min_p: float,
                   generator: torch.Generator) -> torch.Tensor:
    """The baseline: one image at a time, as a straightforward port of the official sampler."""
    b, h, w = cams.shape
    k = int(min_p * h * w)
    out = torch.full((b, h * w), IGNORE_INDEX, dtype=torch.long)
    for i in range(b):
        c = cams[i].reshape(-1)
        fg = torch.multinomial(c + EPS, n_fg, replacement=False, generator=generator)
        order = torch.argsort(c, stable=True)
        bg = order[:k][torch.randperm(k, generator=generator)[:n_bg]]
        out[i, fg] = 1
        out[i, bg] = 0
        both = fg[torch.isin(fg, bg)]
        out[i, both] = IGNORE_INDEX
    return out.view(b, h, w)


def batched_reference(cams: torch.Tensor, n_fg: int, n_bg: int, min_p: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Batched but with the textbook primitives: torch.multinomial and a stable argsort."""
    b, h, w = cams.shape
    flat = cams.reshape(b, h * w)
    k = int(min_p * h * w)
    fg = torch.multinomial(flat + EPS, n_fg, replacement=False, generator=generator)
    order = flat.argsort(dim=1, stable=True)
    keys = torch.rand(b, k, generator=generator)
    bg = order.gather(1, keys.topk(n_bg, dim=1).indices)
    fg_mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, fg, True)
    bg_mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, bg, True)
    out = torch.full((b, h * w), IGNORE_INDEX, dtype=torch.long)
    out = out.masked_fill(fg_mask & ~bg_mask, 1).masked_fill(bg_mask & ~fg_mask, 0)
    return out.view(b, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=5, help="n_fg = n_bg")
    parser.add_argument("--min-p", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--slow-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (also time ours on "
                        "cuda when present)")
    parser.add_argument("--out", default="outputs/benchmarks/seeder.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    n, p = args.n, args.min_p
    cases: dict[str, tuple[Callable[[], object], int, torch.device]] = {}
    for kind in ("smooth", "ties"):
        cams = make_cams(args.batch, args.size, ties=kind == "ties", seed=1)
        cases[f"{kind}: per-image loop"] = (
            lambda c=cams: per_image_loop(c, n, n, p, gen), args.slow_repeats, cpu)
        cases[f"{kind}: batched multinomial+argsort"] = (
            lambda c=cams: batched_reference(c, n, n, p, gen), args.slow_repeats, cpu)
        cases[f"{kind}: ours PB (official BG)"] = (
            lambda c=cams: sample_seeds_pb(c, n, n, p, generator=gen), args.repeats, cpu)
        cases[f"{kind}: ours PB (paper BG)"] = (
            lambda c=cams: sample_seeds_pb(c, n, n, p, bg_mode="paper", generator=gen),
            args.repeats, cpu)
    cams = make_cams(args.batch, args.size, ties=False, seed=1)
    cases["smooth: ours TH"] = (lambda: sample_seeds_th(cams, n, n, p, generator=gen),
                                args.slow_repeats, cpu)
    want_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if want_cuda:
        dev = torch.device("cuda")
        cams_d = cams.to(dev)
        gen_d = torch.Generator(device=dev).manual_seed(0)
        cases["smooth: ours PB on cuda"] = (
            lambda: sample_seeds_pb(cams_d, n, n, p, generator=gen_d), args.repeats, dev)

    seconds = {name: wall_times(fn, d, r) for name, (fn, r, d) in cases.items()}
    rows = {name: {"ms_median": round(1000 * statistics.median(ts), 3),
                   "ms_min": round(1000 * min(ts), 3), "repeats": len(ts)}
            for name, ts in seconds.items()}
    for kind in ("smooth", "ties"):
        loop = rows[f"{kind}: per-image loop"]["ms_median"]
        for name, row in rows.items():
            if name.startswith(kind):
                row["x_faster_than_loop"] = round(loop / row["ms_median"], 1)
    summary = []
    for kind in ("smooth", "ties"):
        row = rows[f"{kind}: ours PB (official BG)"]
        ref = rows[f"{kind}: batched multinomial+argsort"]["ms_median"]
        summary.append({
            "figure": f"Seeder PB, {args.batch}x{args.size}^2, n={n}, {kind} CAMs (1 thread)",
            "value": row["ms_median"], "unit": "ms", "target": "<= 10 ms",
            "met": row["ms_median"] <= 10, "ratio": row["x_faster_than_loop"],
            "ratio_of": f"x faster than the loop ({ref / row['ms_median']:.1f}x the batched ref)",
        })
    if want_cuda:
        row = rows["smooth: ours PB on cuda"]
        summary.append({"figure": "Seeder PB on GPU", "value": row["ms_median"], "unit": "ms",
                        "target": "<= 1 ms", "met": row["ms_median"] <= 1, "ratio": None,
                        "ratio_of": ""})
    result = {
        "benchmark": "PB seeder, one batch of CAMs", "topic": "seeder",
        "input": {"batch": args.batch, "size": args.size, "n_fg": n, "n_bg": n, "min_p": p},
        "device": device_name(cpu), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(), "versions": versions(), "results": rows,
        "issue_anchor_ms": {"per-image loop": 125},
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.batch} CAMs {args.size}x{args.size}, n_fg=n_bg={n}, min_p={p}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'case':42s} {'ms (median)':>12s} {'ms (min)':>9s} {'x loop':>8s}")
    for name, row in rows.items():
        print(f"{name:42s} {row['ms_median']:12.2f} {row['ms_min']:9.2f} "
              f"{row.get('x_faster_than_loop', float('nan')):8.1f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
