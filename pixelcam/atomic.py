"""Writes that never leave a half-written file: write beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pixelcam.errors import DataError, OutputError


@contextmanager
def _aside(path: Path) -> Iterator[Path]:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc}; free disk space or choose a writable "
            "folder (nothing was left half-written)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with _aside(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=float))


def save_torch(obj: Any, path: str | Path) -> None:
    import torch

    path = Path(path)
    with _aside(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch reports a full disk as "unexpected pos A vs B"
            raise OSError(f"torch.save failed ({str(exc).strip()}) with "
                          f"{_free_mb(path.parent):,} MB free on that disk") from None


def link_over(source: str | Path, path: str | Path) -> None:
    """Make `path` the same file as `source` (a hard link; a copy where links are refused), so
    that two names for identical weights take the disk space of one."""
    with _aside(Path(path)) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _free_mb(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free // 2**20
    except OSError:
        return -1


def ensure_writable(folder: str | Path) -> Path:
    """Fail before hours of work if the results could not be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to {folder}: {exc.strerror or exc}; choose a writable output folder"
        ) from None
    return folder


def read_back(path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu") -> Any:
    """Load a file the kit wrote (.pt or .json); a damaged one is a DataError naming the fix."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        import torch

        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same: damaged file
        raise DataError(
            f"cannot read {path} ({type(exc).__name__}): the file is damaged; delete it and "
            "rerun, it will be made again"
        ) from None
