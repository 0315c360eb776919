"""`pixelcam verify`: recompute every table of a rendered profile from the stored run directories
and report each number that differs from what the report shows."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pixelcam.atomic import read_back
from pixelcam.config import load_config
from pixelcam.errors import DataError
from pixelcam.report import main_table, rates_table, run_seed, seed_table
from pixelcam.store import load_run

TABLES: dict[str, Callable[..., pd.DataFrame]] = {"table1": main_table, "table6": rates_table,
                                                  "table1 seeds": seed_table}
# tables built from every seed's runs (`seeds`); the others show the first seed's runs only
SEEDED = frozenset({"table1", "table1 seeds"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if a is None or b is None:
        return (a is None or (isinstance(a, float) and math.isnan(a))) and \
            (b is None or (isinstance(b, float) and math.isnan(b)))
    return a == b


def verify_notebook(result_dir: Path) -> tuple[list[str], int]:
    """(differences, numbers checked) for one notebook's results.json."""
    payload = read_back(result_dir / "results.json")
    cfg = load_config(None, payload["provenance"]["params"])
    named = {label: load_run(info["dir"]) for label, info in payload.get("runs", {}).items()}
    problems: list[str] = []
    checked = 0
    html = result_dir.with_suffix(".html")
    page = html.read_text(encoding="utf-8") if html.exists() else ""
    for name, rows in payload.get("metrics", {}).items():
        # "table1" covers every run; "table1@glas" the runs labelled "glas / <row>"
        table, _, ds = name.partition("@")
        build = TABLES.get(table)
        if build is None:
            continue
        runs = [run for label, run in named.items() if not ds or label.startswith(f"{ds} / ")]
        dcfg = cfg.for_dataset(ds) if ds else cfg
        if table not in SEEDED:
            runs = [run for run in runs if run_seed(run) == dcfg.seed_list[0]]
        fresh = build(runs, dcfg)
        fresh = fresh.reset_index().to_dict(orient="records")
        if len(fresh) != len(rows):
            problems.append(f"{result_dir.name} {name}: {len(rows)} rows shown, {len(fresh)} "
                            "recomputed")
            continue
        for shown, again in zip(rows, fresh):
            label = " / ".join(str(shown[k]) for k in ("Method", "Source") if k in shown)
            for column, value in shown.items():
                checked += 1
                if not _same(value, again.get(column)):
                    problems.append(f"{result_dir.name} {name} [{label}] {column}: report shows "
                                    f"{value}, stored runs give {again.get(column)}")
                elif isinstance(value, float) and not math.isnan(value) and page and \
                        f"{value}" not in page:
                    problems.append(f"{result_dir.name} {name} [{label}] {column}: {value} is "
                                    f"not in {html.name}")
    return problems, checked


def verify(profile_dir: str | Path) -> tuple[list[str], int]:
    """Check every notebook result under outputs/<profile>."""
    profile_dir = Path(profile_dir)
    found = sorted(profile_dir.glob("*/results.json"))
    if not found:
        raise DataError(f"no */results.json under {profile_dir}: run `pixelcam reports` first or "
                        "give the folder of a profile, e.g. outputs/quick")
    problems: list[str] = []
    checked = 0
    for path in found:
        p, n = verify_notebook(path.parent)
        problems += p
        checked += n
    return problems, checked
