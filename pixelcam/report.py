"""Tables with the paper's numbers beside this run's, map figures, each notebook's results.json."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from pixelcam.atomic import write_json, write_text
from pixelcam.config import Config
from pixelcam.datasets import DATASETS
from pixelcam.evaluate import resolve_device
from pixelcam.methods import METHODS, row_label
from pixelcam.provenance import provenance
from pixelcam.store import TRAIN_LOG, Run

PAPER_DIR = Path(__file__).with_name("paper")
# the registries' names, as the notebooks read them
METHOD_NAMES = {name: m.label for name, m in METHODS.items()}
DATASET_NAMES = {name: d.label for name, d in DATASETS.items()}
CLASS_NAMES = {name: dict(d.class_names) for name, d in DATASETS.items()}
METRIC_NAMES = {"pxap": "PxAP", "cl": "CL", "t": "t", "p": "p", "df": "df"}


def paper_table(name: str) -> dict[str, Any]:
    """A transcribed paper table: {caption, columns, rows: {method: {column: value}}}."""
    raw = yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text())
    rows = {m: dict(zip(raw["columns"], vals)) for m, vals in raw["rows"].items()}
    return {"caption": raw["caption"], "columns": raw["columns"], "rows": rows}


def paper_rows(table: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The paper's rows restricted to the columns `<prefix>_*`, with the prefix removed."""
    cut = f"{prefix}_"
    return {label: {k[len(cut):]: v for k, v in row.items() if k.startswith(cut)}
            for label, row in paper_table(table)["rows"].items()}


def method_label(run: Run) -> str:
    """The row name the paper's tables use for this run."""
    return row_label(run.kind, run.results["config"]["method"])


def data_label(cfg: Config) -> str:
    """What the numbers ran on, for headlines: "GlaS", or "GlaS-like (synthetic)"."""
    name = DATASET_NAMES[cfg.dataset]
    return f"{name}-like (synthetic)" if cfg.data_root == "synthetic" else name


def data_note(cfg: Config) -> str:
    """One line that says what the run's numbers stand for (the data root by its folder name:
    a shared report names no path of the machine it ran on)."""
    name = DATASET_NAMES[cfg.dataset]
    if cfg.data_root == "synthetic":
        return (f"**{name}-like synthetic data** (embedded default): the paper's {name} numbers "
                "are shown for reference only; the two are not comparable.")
    return f"**{name}** from the data root `{Path(cfg.data_root).name}`."


def _delta(run_value: float | None, paper_value: float | None) -> float | None:
    if run_value is None or paper_value is None or np.isnan(run_value):
        return None
    return round(run_value - paper_value, 1)


def _value(x: Any, digits: int) -> Any:
    if x is None or isinstance(x, str):
        return x
    x = float(x)
    return None if np.isnan(x) else round(x, digits)


def run_seed(run: Run) -> int:
    """The `seed` a run was trained with."""
    return int(run.results["config"].get("seed", 0))


def first_seed(runs: list[Run]) -> list[Run]:
    """The runs of the first seed in a seed-major list (the single-run tables and figures)."""
    return [r for r in runs if run_seed(r) == run_seed(runs[0])] if runs else []


def by_row(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by their table row, in row order; each row's runs in seed order.

    Two runs of one row must differ by seed (a row trained once per seed of `seeds`)."""
    rows: dict[str, list[Run]] = {}
    for run in runs:
        rows.setdefault(method_label(run), []).append(run)
    for label, group in rows.items():
        seeds = [run_seed(r) for r in group]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"row {label!r} has two runs of one seed ({seeds}): give each row "
                             "once per seed")
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1) of the non-NaN values; NaN where undefined
    (no value; the std of a single value)."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    mean = float(x.mean()) if x.size else float("nan")
    std = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return mean, std


def format_mean_std(values: list[float], digits: int = 1) -> str | None:
    """Per-seed values as "mean ± std" (std with ddof=1; "n/a" for one value); None if none."""
    mean, std = mean_std(values)
    if np.isnan(mean):
        return None
    return f"{mean:.{digits}f} ± {'n/a' if np.isnan(std) else f'{std:.{digits}f}'}"


def seed_note(cfg: Config) -> str:
    """What the "run" column of a multi-seed table holds ("" with one seed)."""
    seeds = cfg.seed_list
    if len(seeds) < 2:
        return ""
    return (f"\n\n**run** = mean ± standard deviation over {len(seeds)} seeds "
            f"({', '.join(map(str, seeds))}; sample standard deviation, ddof = 1); "
            "**diff** = the mean minus the paper's single run.")


def scores(test: dict[str, Any]) -> dict[str, float]:
    """A test-result dict (results.json) as the paper's PxAP and CL columns."""
    return {"pxap": test["pxap"], "cl": test["accuracy"]}


def comparison(entries: list[tuple[str, dict[str, Any]]], table: str, prefix: str,
               metrics: tuple[str, ...] = ("pxap", "cl"), digits: int = 1,
               paper_label: dict[str, str] | None = None) -> pd.DataFrame:
    """Paper | this run | difference for each metric, one row per (label, values) entry.

    `prefix` picks the paper's columns (e.g. "glas", or "glas_external" in Table 18);
    `paper_label` maps a row label to a different row of the paper's table. A value that is a
    list holds one number per seed: "run" shows "mean ± std" (std with ddof=1), "diff" is the
    mean's difference to the paper.
    """
    paper = paper_rows(table, prefix)
    rows = []
    for label, values in entries:
        ref = paper.get((paper_label or {}).get(label, label), {})
        row: dict[str, Any] = {"Method": label}
        for m in metrics:
            name = METRIC_NAMES.get(m, m)
            value = values.get(m)
            if isinstance(value, (list, tuple)):  # one value per seed
                shown: Any = format_mean_std(list(value), digits)
                run_value = _value(mean_std(list(value))[0], digits)
            else:
                shown = run_value = _value(value, digits)
            row[f"{name} paper"] = ref.get(m)
            row[f"{name} run"] = shown
            row[f"{name} diff"] = _delta(run_value, ref.get(m))
        rows.append(row)
    return pd.DataFrame(rows).set_index("Method")


def main_table(runs: list[Run], cfg: Config, checkpoint: str | None = None,
               table: str = "table1") -> pd.DataFrame:
    """Table 1 rows for these runs: PxAP and CL, paper | this run | difference.

    With several runs of a row (one per seed of `seeds`, as `dataset_runs(cfg, all_seeds=True)`
    gives them), "run" is "mean ± std" over the seeds (std with ddof=1) and "diff" is the mean
    minus the paper's number; with one run per row the table is the single-run table.
    """
    checkpoint = checkpoint or cfg.select
    if len({run_seed(r) for r in runs}) <= 1:  # one seed: the single-run table
        entries = [(method_label(run), scores(run.test(checkpoint))) for run in runs]
        return comparison(entries, table, cfg.dataset)
    rows = by_row(runs)
    entries = [(label, {m: [scores(r.test(checkpoint))[m] for r in group]
                        for m in ("pxap", "cl")})
               for label, group in rows.items()]
    return comparison(entries, table, cfg.dataset)


def seed_table(runs: list[Run], cfg: Config, checkpoint: str | None = None,
               digits: int = 1) -> pd.DataFrame:
    """Every seed's PxAP and CL per row (rows x seeds), then their mean and std (ddof=1).

    Columns "PxAP seed <s>" per seed, "PxAP mean", "PxAP std", then the same for CL; a number
    that is undefined (CL of the U-Net, the std of one seed) is empty.
    """
    checkpoint = checkpoint or cfg.select
    rows = by_row(runs)
    seeds = list(dict.fromkeys(run_seed(r) for r in runs))
    out = []
    for label, group in rows.items():
        row: dict[str, Any] = {"Method": label}
        per_seed = {run_seed(r): scores(r.test(checkpoint)) for r in group}
        for m in ("pxap", "cl"):
            name = METRIC_NAMES[m]
            values = [per_seed[s][m] for s in seeds if s in per_seed]
            for s in seeds:
                row[f"{name} seed {s}"] = _value(per_seed[s][m], digits) if s in per_seed \
                    else None
            mean, std = mean_std(values)
            row[f"{name} mean"] = _value(mean, digits)
            row[f"{name} std"] = _value(std, digits)
        out.append(row)
    return pd.DataFrame(out).set_index("Method")


def rates_table(runs: list[Run], cfg: Config, checkpoint: str | None = None) -> pd.DataFrame:
    """Table 6 rows: TP*/FN*/TN*/FP* at the test-oracle threshold (as the paper) and at valpx's."""
    paper = paper_rows("table6", cfg.dataset)
    rows = []
    for run in runs:
        label, test = method_label(run), run.test(checkpoint or cfg.select)
        ref = paper.get(label, {})
        for source, rates in (("paper", None), ("run, test-oracle threshold", test["rates"]),
                              ("run, valpx threshold", test["rates_valpx_threshold"])):
            row: dict[str, Any] = {"Method": label, "Source": source}
            for short in ("TP", "FN", "TN", "FP"):
                value = ref.get(short.lower()) if rates is None else rates[f"{short}*"]
                row[f"{short}*"] = None if value is None else round(float(value), 1)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["Method", "Source"])


def pick_images(labels: list[int], per_class: int) -> list[int]:
    """The first `per_class` images of each class: a fixed, reproducible sample for figures."""
    chosen: list[int] = []
    for cls in sorted(set(labels)):
        chosen += [i for i, y in enumerate(labels) if y == cls][:per_class]
    return chosen


def write_results(output_dir: str | Path, cfg: Config, started: float, *,
                  metrics: dict[str, Any], headline: dict[str, Any],
                  runs: dict[str, Run] | None = None) -> Path:
    """A notebook's results.json: its metrics, the headline for the index, and provenance."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": metrics, "headline": headline,
        "runs": {name: {"dir": str(r.dir), "key": r.key, "reused": r.reused,
                        "durations": r.results.get("durations")}
                 for name, r in (runs or {}).items()},
        "provenance": provenance(cfg, resolve_device(cfg.device), started=started,
                                 ended=time.time()),
    }
    path = out / "results.json"
    write_json(path, payload)
    return path


def provenance_markdown(results_path: str | Path) -> str:
    """The provenance block of a notebook's results.json and the runs it used, as Markdown."""
    import json

    payload = json.loads(Path(results_path).read_text())
    return "\n".join(f"- **{k}**: {v}" for k, v in payload["provenance"].items()
                     if k != "params")


def run_table(runs: dict[str, Run] | None, output_dir: str | Path) -> Any:
    """The runs a report used: status, epochs, B-LOC/B-CL epochs, time, and a link to each
    run's epoch log, copied beside the report (`<output_dir>/logs/`) and linked relative to
    the report's HTML, which sits next to `output_dir`."""
    from IPython.display import HTML, Markdown

    if not runs:
        return Markdown("This notebook trains no model.")
    out = Path(output_dir)
    rows = []
    for name, run in runs.items():
        res = run.results
        log = run.dir / TRAIN_LOG
        link = "-"
        if log.exists():
            target = out / "logs" / f"{run.dir.name}.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, log.read_text())
            href = f"{out.name}/logs/{target.name}"
            link = f'<a href="{html.escape(href)}">log</a>'
        best = res.get("best_epoch", {})
        durations = res.get("durations") or {}
        seconds = durations.get("eval_s", 0.0)
        status = "reused" if run.reused else "trained"
        if res.get("trained_with"):  # its training is another run's (runs.shares_training)
            status = "shared with " + next(
                (other for other, r in runs.items() if r.kind == "baseline"
                 and r.key == res["trained_with"]), f"baseline-{res['trained_with']}")
        else:
            seconds += durations.get("train_s", 0.0)
        wall = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
        rows.append({"run": html.escape(name), "status": html.escape(status),
                     "epochs": max(len(res.get("history", [])) - 1, 0),
                     "B-LOC epoch": best.get("b-loc", "-"), "B-CL epoch": best.get("b-cl", "-"),
                     "wall time": wall,
                     "epoch log": link})
    table = pd.DataFrame(rows).to_html(index=False, escape=False, border=0)
    return HTML(f"<details><summary>Runs used ({len(rows)}): status, epochs, selected epochs, "
                f"time, logs</summary>{table}</details>")


def history_plot(runs: list[Run]) -> plt.Figure:
    """valcl accuracy and valpx PxAP per epoch: the asynchronous convergence behind B-LOC/B-CL."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for run in runs:
        hist = run.results["history"]
        epochs = [h["epoch"] for h in hist]
        label = method_label(run)
        axes[0].plot(epochs, [h["valpx_pxap"] for h in hist], label=label)
        axes[1].plot(epochs, [h["valcl_accuracy"] for h in hist], label=label)
        for ax, key in ((axes[0], "b-loc"), (axes[1], "b-cl")):
            ax.axvline(run.results["best_epoch"][key], ls=":", color=ax.lines[-1].get_color())
    axes[0].set(title="valpx PxAP (B-LOC at the dotted line)", xlabel="epoch", ylabel="PxAP")
    axes[1].set(title="valcl accuracy (B-CL at the dotted line)", xlabel="epoch", ylabel="CL %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # shown once, where the caller displays it, not again at the end of the cell
    return fig
