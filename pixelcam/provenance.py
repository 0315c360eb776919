"""Where a number came from: params and hash, package versions, git revision, device, times."""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pixelcam.config import Config, params_hash

PACKAGES = ("pixelcam-kit", "torch", "torchvision", "timm", "numpy", "scipy", "papermill")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code runs from (None outside a git checkout)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": bool(status) if status is not None else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(cfg: Config, device: torch.device, started: float,
               ended: float | None = None) -> dict[str, Any]:
    ended = ended if ended is not None else time.time()
    return {
        "params": cfg.to_dict(), "params_hash": params_hash(cfg), "seed": cfg.seed,
        "versions": versions(), "git": git_revision(), "device": device_name(device),
        "started": _iso(started), "ended": _iso(ended), "seconds": round(ended - started, 2),
    }
