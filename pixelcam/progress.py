"""Where the kit's messages and training progress go: a terminal, a log file, a live line.

Messages (`note`, the default `log` of the run cache and the experiments) go to stdout, except in
a report notebook, where `pixelcam.notebook.start` sends them to a log file beside the report:
a shared report shows tables and figures, not thousands of epoch lines.

Progress (`Tracker`, one per training): `pixelcam reports` sets PIXELCAM_PROGRESS to a file for
each notebook's kernel; every training writes its label and epoch there after each epoch, and
the runner draws its live line from it. In an interactive kernel (JupyterLab) without that
variable, each training shows a tqdm widget bar instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pixelcam.atomic import write_json

ENV = "PIXELCAM_PROGRESS"
_sink: Callable[[str], None] | None = None  # None: stdout
_sink_handle: TextIO | None = None  # the file behind _sink
_trainings = 0  # trainings started in this process


def note(message: str) -> None:
    """Tell the user: stdout, or the log file a report notebook set (`log_to`)."""
    if _sink is None:
        print(message, flush=True)
    else:
        _sink(message)


def log_to(path: str | Path | None) -> None:
    """Send `note` to the end of this file (None: back to stdout); closes the previous one, so
    rerunning a notebook's start cell keeps one file open."""
    global _sink, _sink_handle
    if _sink_handle is not None:
        _sink_handle.close()
    _sink = _sink_handle = None
    if path is not None:
        _sink, _sink_handle = file_log(Path(path), also=lambda message: None)


def file_log(path: Path, also: Callable[[str], None]) -> tuple[Callable[[str], None], TextIO]:
    """A log that appends each line to `path` and passes it on to `also`; close the handle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the caller

    def log(message: str) -> None:
        handle.write(message + "\n")
        handle.flush()
        also(message)

    return log, handle


def _interactive_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Tracker:
    """One training's epochs, reported to the runner's file or to a widget bar."""

    def __init__(self, label: str, epochs: int) -> None:
        global _trainings
        _trainings += 1
        self.index, self.label, self.epochs = _trainings, label, epochs
        self.path = os.environ.get(ENV) or None
        self.bar: Any = None
        if self.path is None and _interactive_kernel():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc=label, unit="epoch")
        self.epoch(None)

    def epoch(self, epoch: int | None, epochs: int | None = None) -> None:
        """After epoch `epoch` (None: before the first)."""
        if self.path is not None:
            try:
                write_json(Path(self.path), {"training": self.index, "label": self.label,
                                             "epoch": epoch, "epochs": epochs or self.epochs,
                                             "time": time.time()})
            except OSError:  # progress is a courtesy: never stop a training for it
                self.path = None
        if self.bar is not None and epoch is not None:
            self.bar.n = epoch
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
