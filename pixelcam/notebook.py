"""The few lines every notebook starts with: find the project, load and validate its params."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixelcam import progress
from pixelcam.config import Config, load_config
from pixelcam.errors import ConfigError


def project_root(start: Path | None = None) -> Path:
    """The folder holding params/ (JupyterLab starts in notebooks/, batch runs at the root)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    raise ConfigError(f"no project folder (with params/ and notebooks/) above {here}: "
                      "start JupyterLab inside the pixelcam-kit checkout")


FIGURE_QUALITY = 80  # JPEG quality of the figures in notebooks and reports
FIGURE_DPI = 72  # pixels per inch of figure (the widest, 21 in, becomes 1,500 px)


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: Any = None, line: str | None = None) -> None:
    progress.note(f"{category.__name__}: {message} ({Path(filename).name}:{lineno})")


def _inline_figures() -> None:
    """In a kernel, show every matplotlib Figure as an image, also the pyplot-free ones that
    pixelcam.figures builds (the inline formatter is otherwise set up by importing pyplot)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "run_line_magic"):
        shell.run_line_magic("matplotlib", "inline")
        # JPEG at screen resolution: maps over tissue compress ~8x better than as PNG, and a
        # quick-profile report stays well under 3 MB
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("jpeg", dpi=FIGURE_DPI, pil_kwargs={"quality": FIGURE_QUALITY})


def start(name: str, profile: str, params: Mapping[str, Any],
          output_dir: str | Path | None = None) -> tuple[Config, float]:
    """Load params/<profile>/<name>.yaml with the injected params on top; chdir to the root.

    With `output_dir`, the kit's messages (which runs are trained or reused, every epoch line)
    go to `<output_dir>/logs/notebook.log` instead of the report; each run's epoch log is also
    in its run directory, and the report's run table links a copy of it."""
    _inline_figures()
    root = project_root()
    os.chdir(root)  # relative paths in params (cache_dir, data_root) mean the same everywhere
    if output_dir is not None:
        progress.log_to(Path(output_dir) / "logs" / "notebook.log")
        warnings.showwarning = _warning_to_log  # library warnings are for the log, too
    cfg = load_config(root / "params" / profile / f"{name}.yaml", dict(params))
    return cfg, time.time()
