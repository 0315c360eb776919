"""The few lines every notebook starts with: find the project, load and validate its params."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def start(name: str, profile: str, params: Mapping[str, Any]) -> tuple[Config, float]:
    """Load params/<profile>/<name>.yaml with the injected params on top; chdir to the root."""
    _inline_figures()
    root = project_root()
    os.chdir(root)  # relative paths in params (cache_dir, data_root) mean the same everywhere
    cfg = load_config(root / "params" / profile / f"{name}.yaml", dict(params))
    return cfg, time.time()
