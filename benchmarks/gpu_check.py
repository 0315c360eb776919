"""One command for a first GPU: can the paper profile run there, and how fast is it?

Run: `make gpu-check` (or `.venv/bin/python benchmarks/gpu_check.py`) on a GPU node, e.g. in an
interactive job (`srun --gres=gpu:1 --time 0:30:00 --pty make gpu-check`). About 10 minutes on
one GPU. It writes one JSON file (default outputs/gpu-check.json) with what each check measured,
and exits 1 if a check failed. The checks, in order:

1. cuda: torch sees a GPU (its name, memory, torch and CUDA versions). Without one it stops.
2. preflight: notebook 01 of the paper profile, `pixelcam reports --profile paper --preflight
   --only 01 -p device=cuda`: every row of Table 1 trained for one epoch on one image per class
   and split, at the paper's sizes (ResNet-50, batch 32, AMP). On your data roots
   (PIXELCAM_GLAS_ROOT, PIXELCAM_CAMELYON16_ROOT) and cached weights when they are there; else
   on the GlaS sample images in tests/data and synthetic CAMELYON16 slides, random init (as CI).
3. benchmarks: bench_step.py, bench_maps.py and bench_loop.py with `--device cuda`.
4. layercam: the real-cpu profile's LayerCAM baseline (seed 0, its 20 epochs) on
   PIXELCAM_GLAS_ROOT, trained on the GPU and on the CPU: test PxAP and CL of both (GPU runs are
   not bitwise those of a CPU: cuDNN kernels and AMP round otherwise). Skipped without a GlaS
   root.

`--device cpu` runs the same checks on the CPU (a dry run of the script itself: slow).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PIXELCAM = [sys.executable, "-m", "pixelcam.cli"]


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A subprocess's outcome: ok, seconds, and its last lines when it failed."""
    tick = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": round(time.perf_counter() - tick, 1),
                "error": f"no result within {timeout:.0f} s: {' '.join(cmd)}"}
    out = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - tick, 1)}
    if proc.returncode:
        out["error"] = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
    out["stdout"] = proc.stdout
    return out


def check_cuda(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
                           "available": torch.cuda.is_available()}
    if device == "cpu":
        out["ok"] = True
        out["note"] = "--device cpu: the checks run on the CPU"
        return out
    out["ok"] = out["available"]
    if not out["available"]:
        out["error"] = ("torch sees no GPU: run this on a GPU node (e.g. srun --gres=gpu:1), with "
                        "a CUDA build of torch (pip install torch --index-url "
                        "https://download.pytorch.org/whl/cu124) and the node's driver loaded")
        return out
    props = torch.cuda.get_device_properties(0)
    out.update(count=torch.cuda.device_count(), name=props.name,
               memory_gb=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}")
    return out


def _sample_roots(work: Path) -> dict[str, str]:
    """The data roots CI's preflight uses: GlaS sample images, synthetic CAMELYON16 slides."""
    glas, slides, camelyon = work / "glas", work / "camelyon16-download", work / "camelyon16"
    steps = [
        [*PIXELCAM, "data", "prepare", "glas", "--src", "tests/data/glas-sample", "--out",
         str(glas), "--split", "seeded"],
        [sys.executable, "tests/synthetic_wsi.py", str(slides)],
        [*PIXELCAM, "data", "prepare", "camelyon16", "--src", str(slides), "--out",
         str(camelyon), "--valcl-fraction", "0.5", "--valpx-per-class", "1", "--workers", "2"],
    ]
    for cmd in steps:
        res = _run(cmd, 600)
        if not res["ok"]:
            raise RuntimeError(res["error"])
    return {"PIXELCAM_GLAS_ROOT": str(glas), "PIXELCAM_CAMELYON16_ROOT": str(camelyon)}


def check_preflight(device: str, work: Path) -> dict[str, Any]:
    own = all(os.environ.get(f"PIXELCAM_{d}_ROOT") for d in ("GLAS", "CAMELYON16"))
    weights = _run([*PIXELCAM, "weights", "list", "--profile", "paper"], 120)
    cached = weights["ok"] and "cached: no" not in weights.get("stdout", "")
    env = {} if own else _sample_roots(work)
    cmd = [*PIXELCAM, "reports", "--profile", "paper", "--preflight", "--only", "01",
           "--outputs", str(work / "outputs"), "-p", f"device={device}"]
    if not cached:
        cmd += ["-p", "pretrained=false"]
    out = _run(cmd, 1200, env)
    out.pop("stdout", None)
    out.update(data="your data roots" if own else "GlaS sample + synthetic CAMELYON16 slides",
               weights="cached ImageNet weights" if cached else "random init (none cached)")
    return out


def check_benchmarks(device: str, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    for name in ("step", "maps", "loop"):
        path = work / f"{name}.json"
        res = _run([sys.executable, f"benchmarks/bench_{name}.py", "--device", device,
                    "--out", str(path)], 900)
        res.pop("stdout", None)
        if res["ok"] and path.exists():
            res["result"] = json.loads(path.read_text())
        out[name] = res
        out["ok"] = out["ok"] and res["ok"]
    return out


def _train_layercam(device: str, cache: str) -> None:
    """In a process of its own: the real-cpu LayerCAM baseline of seed 0 on `device`."""
    from pixelcam.config import load_config
    from pixelcam.pipelines import get_baseline

    cfg = load_config(ROOT / "params" / "real-cpu" / "01_main_tables.yaml",
                      {"seeds": "", "device": device, "cache_dir": cache,
                       "table_methods": "layercam", "method": "layercam"})
    run = get_baseline(cfg.for_dataset("glas"), log=lambda _: None)
    test = run.test("b-loc")
    print(json.dumps({"pxap": test["pxap"], "cl": test["accuracy"], "best_epoch": run.results[
        "best_epoch"], "train_s": run.results["durations"]["train_s"]}))


def check_layercam(device: str, work: Path) -> dict[str, Any]:
    if not os.environ.get("PIXELCAM_GLAS_ROOT"):
        return {"ok": True, "skipped": "PIXELCAM_GLAS_ROOT is not set (a prepared GlaS)"}
    out: dict[str, Any] = {"ok": True}
    for where in dict.fromkeys((device, "cpu")):
        res = _run([sys.executable, __file__, "--train-layercam", where, "--cache",
                    str(work / f"layercam-{where}")], 1800)
        if res["ok"]:
            res["result"] = json.loads(res["stdout"].strip().splitlines()[-1])
        res.pop("stdout", None)
        out[where] = res
        out["ok"] = out["ok"] and res["ok"]
    if out["ok"] and device != "cpu":
        gpu, cpu = out[device]["result"], out["cpu"]["result"]
        out["pxap_gpu_minus_cpu"] = round(gpu["pxap"] - cpu["pxap"], 2)
        out["cl_gpu_minus_cpu"] = round(gpu["cl"] - cpu["cl"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu")
    parser.add_argument("--out", default="outputs/gpu-check.json")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("preflight", "benchmarks", "layercam"),
                        help="leave a check out (repeatable)")
    parser.add_argument("--train-layercam", metavar="DEVICE", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_layercam:
        _train_layercam(args.train_layercam, args.cache)
        return 0

    from pixelcam.atomic import write_json
    from pixelcam.provenance import git_revision, versions

    report: dict[str, Any] = {"device": args.device, "versions": versions(),
                              "git": git_revision(ROOT), "started": time.strftime("%FT%T%z")}
    tick = time.perf_counter()
    report["cuda"] = check_cuda(args.device)
    checks = {"preflight": check_preflight, "benchmarks": check_benchmarks,
              "layercam": check_layercam}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, check in checks.items():
            if not report["cuda"]["ok"]:
                break
            if name in args.skip:
                report[name] = {"ok": True, "skipped": "--skip"}
                continue
            print(f"gpu-check: {name} ...", flush=True)
            try:
                report[name] = check(args.device, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a failed check is reported, others go on
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"gpu-check: {name} {'ok' if report[name]['ok'] else 'FAILED'}", flush=True)
    report["seconds"] = round(time.perf_counter() - tick, 1)
    failed = [k for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False]
    report["ok"] = not failed
    write_json(ROOT / args.out, report)
    print(f"gpu-check: {'all ok' if not failed else 'failed: ' + ', '.join(failed)} in "
          f"{report['seconds']:.0f} s; {args.out}")
    for name in failed:
        print(f"  {name}: {report[name].get('error', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
