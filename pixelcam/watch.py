"""The live progress line of `pixelcam reports`: notebook i/N, the training, its epoch, ETA.

A notebook runs in a kernel that the runner cannot see into; every training there writes its
state to the file named by PIXELCAM_PROGRESS (pixelcam.progress.Tracker). A Watch thread reads it
twice a second. On a terminal it redraws one line in place; on a pipe or in CI it prints a plain
line each time the notebook's progress crosses another STEP percent, and at each new training.
The share done is (trainings finished + this one's epochs done / its epochs) / the trainings the
notebook will run, which the plan (pixelcam.plan) counts before the notebook starts.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

STEP = 10  # percent between two plain lines


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def describe(name: str, position: str, state: dict | None, total: int | None,
             elapsed: float) -> tuple[str, float | None]:
    """(the line, the share done or None) for a progress state read from the file."""
    head = f"[{position} {name}]"
    if not state:
        return f"{head} starting, {clock(elapsed)} elapsed", None
    index, epoch, epochs = state["training"], state.get("epoch"), max(state["epochs"], 1)
    within = (0 if epoch is None else epoch) / epochs
    of = f"/{total}" if total else ""
    line = (f"{head} training {index}{of} {state['label']}: epoch "
            f"{'-' if epoch is None else epoch}/{epochs}, {clock(elapsed)} elapsed")
    if not total:
        return line, None
    share = min((index - 1 + within) / max(total, index), 1.0)
    if share > 0.01:
        line += f", ETA {clock(elapsed * (1 - share) / share)}"
    return line, share


class Watch:
    """Draw a notebook's progress from its progress file until `stop()`."""

    def __init__(self, path: Path, name: str, position: str, total: int | None,
                 stream: TextIO | None = None, tty: bool | None = None,
                 interval: float = 0.5) -> None:
        self.path, self.name, self.position, self.total = path, name, position, total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._last_step = -1
        self._last_training = 0
        self._drawn = False

    def __enter__(self) -> Watch:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")  # the runner's own line replaces the live one
            self.stream.flush()
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # not written yet (writes are atomic)
            return None

    def poll(self) -> None:
        state = self._read()
        line, share = describe(self.name, self.position, state, self.total,
                               time.monotonic() - self._started)
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r\033[K" + line[: width - 1])
            self.stream.flush()
            self._drawn = True
            return
        training = state["training"] if state else 0
        step = -1 if share is None else int(100 * share) // STEP
        if state and (training != self._last_training or step > self._last_step):
            self._last_training, self._last_step = training, max(step, self._last_step)
            self.stream.write(line + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
