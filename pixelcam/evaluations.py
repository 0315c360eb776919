"""A finished run's checkpoint evaluated on other data (OOD, stain shift), cached beside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from pixelcam.atomic import read_back, write_json
from pixelcam.builders import DATA_KEYS, data_key, dataset, with_data_of
from pixelcam.config import Config
from pixelcam.evaluate import eval_loader, evaluate_split, resolve_device
from pixelcam.progress import note
from pixelcam.store import Log, Run


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

