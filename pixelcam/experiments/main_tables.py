"""Tables 1, 2 (and 9, 10): every dataset's Table 1 runs, baseline/PixelCAM pairs, t-tests."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from pixelcam.config import Config
from pixelcam.metrics import paired_ttest
from pixelcam.pipelines import table_runs
from pixelcam.progress import note
from pixelcam.report import method_label, paper_rows, run_seed
from pixelcam.store import Log, Run


def dataset_runs(cfg: Config, log: Log = note, *, all_seeds: bool = False
                 ) -> dict[str, list[Run]]:
    """Table 1's runs for every dataset the notebook covers, in the paper's row order.

    The runs of the first seed of `seeds` (`seed` when `seeds` is empty); with `all_seeds`,
    every row once per seed of `seeds`, seed-major (all rows of the first seed, then the next),
    the list `main_table`, `seed_table` and `ttest_table` aggregate over seeds.
    """
    out = {}
    for name in cfg.dataset_names:
        dcfg = cfg.for_dataset(name)
        seeds = dcfg.seed_list if all_seeds else dcfg.seed_list[:1]
        out[name] = [run for _, run in table_runs(dcfg, log, seeds)]
    return out


def seed_named_runs(runs: list[Run], prefix: str) -> dict[str, Run]:
    """results.json names of a seed-major run list: "<prefix> / <row>" for the first seed (the
    names a single-seed report uses), "<prefix> / <row> (seed <s>)" for the other seeds."""
    first = run_seed(runs[0]) if runs else 0
    return {f"{prefix} / {method_label(r)}" + ("" if run_seed(r) == first
                                                else f" (seed {run_seed(r)})"): r
            for r in runs}


def pairs(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """(baseline, PixelCAM) run pairs of the same method and seed, in row order (seed-major
    when the runs cover several seeds)."""
    runs = list(runs)
    by_key = {(method_label(r), run_seed(r)): r for r in runs}
    return [(r, by_key[(f"{method_label(r)} + PixelCAM", run_seed(r))]) for r in runs
            if r.kind == "baseline" and (f"{method_label(r)} + PixelCAM", run_seed(r)) in by_key]


def _ttest(xa: list[float], xb: list[float]) -> dict[str, Any]:
    """paired_ttest(xa, xb) on the pairs without NaN; NaN t and p below 2 pairs."""
    keep = [(u, v) for u, v in zip(xa, xb) if not (math.isnan(u) or math.isnan(v))]
    if len(keep) >= 2:
        return paired_ttest([u for u, _ in keep], [v for _, v in keep])
    return {"t": float("nan"), "p": float("nan"), "df": len(keep) - 1}


def seed_ttest(pairs_: list[tuple[Run, Run]], checkpoint: str) -> dict[str, Any]:
    """Paired t-test over seeds: each seed's PixelCAM test PxAP against its baseline's
    (`scipy.stats.ttest_rel`, PixelCAM first: t > 0 means PixelCAM is better; df = seeds - 1;
    NaN with one seed)."""
    return _ttest([p.test(checkpoint)["pxap"] for _, p in pairs_],
                  [b.test(checkpoint)["pxap"] for b, _ in pairs_])


def ttest_table(runs: list[Run], cfg: Config, table: str = "table2",
                checkpoint: str | None = None) -> pd.DataFrame:
    """Baseline vs PixelCAM localisation: the paper's t and p beside this run's three tests.

    *resampled*: pooled PxAP on the same `ttest_resamples` bootstrap resamples of the test set
    for both models (29 resamples give the paper's df = 28); *per image*: the AP of each test
    image with foreground (df = images - 1); both on the first seed's pair. *over seeds*: each
    seed's test PxAP, paired by seed (df = seeds - 1; NaN with one seed). All are two-sided
    `scipy.stats.ttest_rel`, with PixelCAM first so that t > 0 means PixelCAM is better, as in
    the paper. `runs` may hold every row once per seed (`dataset_runs(cfg, all_seeds=True)`).
    """
    checkpoint = checkpoint or cfg.select
    paper = paper_rows(table, cfg.dataset)
    by_method: dict[str, list[tuple[Run, Run]]] = {}
    for base, pix in pairs(runs):
        by_method.setdefault(method_label(base), []).append((base, pix))
    rows = []
    for label, seeded in by_method.items():
        base, pix = seeded[0]
        ref = paper.get(label, {})
        row: dict[str, Any] = {"Method": label, "t paper": ref.get("t"), "p paper": ref.get("p")}
        a, b = pix.test(checkpoint), base.test(checkpoint)
        for name, res in (("resampled", _ttest(a.get("resampled_pxap", []),
                                               b.get("resampled_pxap", []))),
                          ("per image", _ttest(a["per_image"]["ap"], b["per_image"]["ap"])),
                          ("over seeds", seed_ttest(seeded, checkpoint))):
            row[f"t {name}"] = round(res["t"], 2)
            row[f"p {name}"] = float(f"{res['p']:.2g}")
            row[f"df {name}"] = res["df"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("Method")
