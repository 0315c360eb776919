"""Fixtures that several test modules share."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from pixelcam.data.folds import Record, write_split
from pixelcam.runner import run_reports

ROOT = Path(__file__).resolve().parents[1]
# images per split of the fold-only data roots that stand in for the paper's datasets
PAPER_SIZES = {"glas": {"train": 67, "valcl": 16, "valpx": 6, "test": 80},
               "camelyon16": {"train": 40, "valcl": 10, "valpx": 4, "test": 30}}


def _fold_only_root(root: Path, sizes: dict[str, int]) -> Path:
    """A data root with fold files and no images: all a plan reads."""
    for split, n in sizes.items():
        records = [Record(f"{split}/{i}.png", i % 2, 64, 64, f"{split}/{i}_mask.png" if i % 2
                          else "") for i in range(n)]
        write_split(root / "folds" / "fold-0", split, records)
    (root / "folds" / "encoding.yaml").write_text("{normal: 0, tumour: 1}\n")
    return root


@pytest.fixture()
def paper_data(tmp_path, monkeypatch) -> Path:
    """PIXELCAM_GLAS_ROOT and PIXELCAM_CAMELYON16_ROOT set to fold-only data roots (the paper
    profile plans on them; nothing can train)."""
    for name, sizes in PAPER_SIZES.items():
        monkeypatch.setenv(f"PIXELCAM_{name.upper()}_ROOT",
                           str(_fold_only_root(tmp_path / name, sizes)))
    return tmp_path


@pytest.fixture(scope="session")
def smoke_plain(tmp_path_factory) -> SimpleNamespace:
    """The smoke profile run plainly, every notebook training in its own kernel (about 2
    minutes), once per session: the notebook tests check its reports, the jobs tests compare
    the `--submit local` path's numbers with its numbers."""
    work = tmp_path_factory.mktemp("smoke-plain")
    logs: list[str] = []
    code = run_reports("smoke", ROOT, outputs=work / "out",
                       overrides={"cache_dir": str(work / "cache")}, log=logs.append)
    return SimpleNamespace(code=code, logs=logs, out=work / "out" / "smoke",
                           cache=work / "cache")
