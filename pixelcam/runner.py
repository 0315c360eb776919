"""Execute the notebooks of a profile with papermill, render HTML reports and an index page.

A failing notebook does not stop the batch: it is marked failed in the index with its error line,
and the batch exits non-zero at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from pixelcam import progress
from pixelcam.atomic import ensure_writable, write_text
from pixelcam.config import load_config, profiles, read_params
from pixelcam.errors import ConfigError
from pixelcam.watch import Watch

# plan, weights and preflight are imported where they are used: they bring in torch and timm,
# which `pixelcam reports --help`, the index page and a submitted reports job do not need

KERNEL = "python3"
TRAINS_TAG = "trains"  # the tag of a notebook cell that may train (pixelcam.plan lists what)


@dataclass
class NotebookResult:
    name: str
    status: str  # ok | failed | timed out | kernel died | bad params
    seconds: float
    error: str = ""
    html: str = ""
    headline: dict[str, Any] | None = None


def discover(notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """Notebooks NN_name.ipynb in order; `only` keeps those whose name starts with a prefix."""
    found = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) for o in only)]
    return found


def profile_notebooks(root: Path, profile: str, only: list[str] | None = None) -> list[Path]:
    """The notebooks a profile covers: those with a params file in `params/<profile>/`.

    A profile may cover a subset (real-cpu: the GlaS tables and cheap ablations); a missing
    profile folder is an error that lists the profiles there are.
    """
    folder = root / "params" / profile
    if not folder.is_dir():
        raise ConfigError(f"profile {profile!r} has no params folder {folder}: use one of "
                          f"{', '.join(profiles(root)) or '(none found)'}")
    return [nb for nb in discover(root / "notebooks", only)
            if (folder / f"{nb.stem}.yaml").is_file()]


def parse_shard(text: str) -> tuple[int, int]:
    """`i/N` (1 <= i <= N): this process runs notebooks i, i+N, i+2N, ... of the list."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        i, n = 0, 0
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r} is not valid: use i/N with 1 <= i <= N, e.g. 2/4 "
                          "(a SLURM array can pass $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return i, n


def shard(notebooks: list[Path], i: int, n: int) -> list[Path]:
    return notebooks[i - 1::n]


def render_html(executed: Path, target: Path) -> None:
    """Shareable HTML: code hidden, figures embedded as images, outputs kept."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    write_text(target, body)


def trains(cell: Mapping[str, Any]) -> bool:
    """Whether a notebook cell may train (it is tagged TRAINS_TAG)."""
    return TRAINS_TAG in cell.get("metadata", {}).get("tags", [])


class CellTimeouts:
    """The per-cell limits papermill applies: `cell_timeout` to a cell that trains nothing,
    `train_timeout` to one that trains (tagged TRAINS_TAG); None = no limit. Remembers the
    cell it was last asked about, the one that timed out when one does."""

    def __init__(self, cell_timeout: float | None, train_timeout: float | None) -> None:
        self.cell_timeout, self.train_timeout = cell_timeout, train_timeout
        self.last: Any = None

    def __call__(self, cell: Mapping[str, Any]) -> int | None:
        self.last = cell
        limit = self.train_timeout if trains(cell) else self.cell_timeout
        return None if limit is None else max(1, int(limit))

    def message(self) -> str:
        """What the user reads when a cell ran past its limit."""
        count = (self.last or {}).get("execution_count")
        where = f"cell [{count}]" if count else "a cell"
        if self.last is not None and trains(self.last):
            return (f"{where} trains and ran past --train-timeout {self.train_timeout:g} s; "
                    "the training it ran keeps its resume state (written at most "
                    "state_every_s seconds before): run the same command again to go on from "
                    "there, without --train-timeout or with a longer one")
        return (f"{where} ran past --cell-timeout {self.cell_timeout:g} s (it trains nothing: "
                "a hung evaluation or figure?); run again with a longer --cell-timeout, or "
                "without one")


def _error_line(exc: BaseException, timeouts: CellTimeouts | None = None) -> tuple[str, str]:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, CellTimeoutError) and timeouts is not None:
        return "timed out", timeouts.message()
    if isinstance(exc, PapermillExecutionError):
        return "failed", f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    if isinstance(exc, DeadKernelError):
        return "kernel died", f"the kernel died (out of memory?): {exc}".splitlines()[0]
    return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]


def run_notebook(notebook: Path, params_file: Path, out_dir: Path, profile: str, cwd: Path,
                 overrides: Mapping[str, Any] | None = None, cell_timeout: float | None = None,
                 log: Callable[[str], None] = print, position: str = "1/1",
                 trainings: int | None = None, stream: TextIO | None = None,
                 train_timeout: float | None = None) -> NotebookResult:
    """Validate the params, execute the notebook into out_dir, render its HTML.

    No cell has a time limit unless asked: `cell_timeout` limits the cells that train nothing,
    `train_timeout` those that train (CellTimeouts).

    While it runs, a live line (pixelcam.watch) shows its trainings on `stream` (stdout), with
    an ETA when `trainings` (how many it will train) is known."""
    import papermill

    name = notebook.stem
    t0 = time.perf_counter()
    result_dir = out_dir / name
    stale = result_dir / "results.json"
    if stale.exists():
        stale.unlink()  # a failed rerun must not show the previous run's numbers
    try:
        if not params_file.is_file():
            raise ConfigError(f"params file {params_file} does not exist: add it for {name}")
        params = read_params(params_file)
        params.update(overrides or {})
        load_config(None, params)  # fail here, with the valid keys, before starting a kernel
    except (ConfigError, yaml.YAMLError) as exc:
        msg = f"{params_file}: {exc}".splitlines()[0]
        log(f"[{name}] bad params: {msg}")
        result = NotebookResult(name, "bad params", time.perf_counter() - t0, error=msg)
        write_status(out_dir, result)
        return result

    executed = out_dir / f"{name}.ipynb"
    status, error = "ok", ""
    log(f"[{position} {name}] running with {params_file}"
        + (f": {trainings} training{'s' if trainings != 1 else ''} to run" if trainings else ""))
    progress_file = out_dir / f".{name}.progress.json"
    previous = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = str(progress_file)  # the kernel inherits it
    timeouts = CellTimeouts(cell_timeout, train_timeout)
    try:
        with Watch(progress_file, name, position, trainings, stream=stream):
            papermill.execute_notebook(
                str(notebook), str(executed), kernel_name=KERNEL, cwd=str(cwd),
                progress_bar=False, timeout_func=timeouts, log_output=False,
                # the kernel's "running over TCP without encryption" notice is for servers
                # reachable by others; a local batch kernel only says errors
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
                parameters={"params": params, "profile": profile,
                            "output_dir": str(result_dir)},
            )
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the batch goes on
        status, error = _error_line(exc, timeouts)
        log(f"[{name}] {status}: {error}")
    finally:
        if previous is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = previous
    html_path = out_dir / f"{name}.html"
    if executed.exists():
        render_html(executed, html_path)
    headline = None
    if status == "ok" and stale.exists():
        headline = json.loads(stale.read_text()).get("headline")
    result = NotebookResult(name, status, time.perf_counter() - t0, error,
                            html_path.name if html_path.exists() else "", headline)
    write_status(out_dir, result)
    return result


def write_status(out_dir: Path, result: NotebookResult) -> None:
    """Each notebook's outcome beside its report, so shards build one index together."""
    write_text(out_dir / f"{result.name}.status.json",
               json.dumps(dataclasses.asdict(result), indent=1, default=str))


def read_statuses(out_dir: Path, names: list[str]) -> list[NotebookResult]:
    """The last outcome of each notebook (from any shard); "not run" where there is none."""
    results = []
    for name in names:
        path = out_dir / f"{name}.status.json"
        try:
            results.append(NotebookResult(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            results.append(NotebookResult(name, "not run", 0.0))
    return results


def _fmt_headline(headline: Mapping[str, Any] | None) -> str:
    if not headline:
        return ""
    parts = []
    for key, value in headline.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        parts.append(f"{html.escape(str(key))}: <b>{html.escape(text)}</b>")
    return "<br>".join(parts)


def write_index(out_dir: Path, results: list[NotebookResult], profile: str) -> Path:
    """The landing page of a profile: one row per notebook with status, time and headline."""
    rows = []
    for r in results:
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.name)}</a>' if r.html else \
            html.escape(r.name)
        files = []
        for label, rel in (("notebook", f"{r.name}.ipynb"),
                           ("results.json", f"{r.name}/results.json")):
            if (out_dir / rel).exists():
                files.append(f'<a href="{html.escape(rel)}">{label}</a>')
        css = "ok" if r.status == "ok" else "bad"
        err = f'<div class="err">{html.escape(r.error)}</div>' if r.error else ""
        rows.append(
            f"<tr><td>{link}</td><td class='{css}'>{html.escape(r.status)}{err}</td>"
            f"<td>{r.seconds:.0f} s</td><td>{_fmt_headline(r.headline)}</td>"
            f"<td>{' · '.join(files)}</td></tr>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pixelcam-kit reports: {html.escape(profile)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .4em .8em; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #cf222e; }} .err {{ font-size: .85em; color: #555; }}
</style></head><body>
<h1>PixelCAM reproduction: {html.escape(profile)} profile</h1>
<p>Generated {stamp}. Each report shows the paper's numbers beside this run's.</p>
<p>Total notebook time: {sum(r.seconds for r in results) / 60:.1f} min.</p>
<table><tr><th>Report</th><th>Status</th><th>Duration</th><th>Headline</th><th>Files</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = out_dir / "index.html"
    write_text(path, page)
    return path


def run_reports(profile: str, root: Path, only: list[str] | None = None,
                overrides: Mapping[str, Any] | None = None, outputs: Path | None = None,
                cell_timeout: float | None = None, log: Callable[[str], None] = print,
                shard_spec: str | None = None, preflight: bool = False,
                train_timeout: float | None = None) -> int:
    """Run the notebooks of a profile (or of one shard); return 0 only if all succeeded.

    The index lists every notebook of the profile with its last outcome, whichever shard ran it.
    With `preflight`, every notebook runs on a few images per split for 1 epoch per phase, into
    `outputs/<profile>-preflight` (pixelcam.preflight).
    """
    everything = profile_notebooks(root, profile, only)
    if not everything:
        log(f"no notebook matches {only} in {root / 'notebooks'} with params in "
            f"{root / 'params' / profile}")
        return 2
    notebooks = shard(everything, *parse_shard(shard_spec)) if shard_spec else everything
    label = profile + ("-preflight" if preflight else "")
    out_dir = ensure_writable((outputs or root / "outputs") / label)
    overrides = dict(overrides or {})
    params_files = {nb.stem: root / "params" / profile / f"{nb.stem}.yaml" for nb in notebooks}
    check_weights(params_files, overrides, profile)
    if preflight:
        overrides.update(_preflight_overrides(params_files, overrides, root, label, log))
    if shard_spec:
        log(f"shard {shard_spec}: {', '.join(nb.stem for nb in notebooks) or 'no notebook'}")
    needed_later = (_runs_needed_later(profile, root, [nb.stem for nb in notebooks], overrides)
                    if preflight else None)
    freed = 0
    t0 = time.perf_counter()
    results = []
    for i, nb in enumerate(notebooks, 1):
        position = f"{i}/{len(notebooks)}"
        results.append(run_notebook(nb, params_files[nb.stem], out_dir, profile, cwd=root,
                                    overrides=overrides, cell_timeout=cell_timeout, log=log,
                                    position=position, train_timeout=train_timeout,
                                    trainings=_trainings_to_run(profile, root, nb.stem,
                                                                overrides)))
        log(f"[{position} {nb.stem}] {results[-1].status} in {results[-1].seconds:.0f} s")
        if preflight and (i == len(notebooks) or needed_later is not None):
            from pixelcam.preflight import prune_checkpoints

            keep = needed_later[i - 1] if needed_later is not None else set()
            freed += prune_checkpoints(Path(overrides["cache_dir"]), keep)
    index = write_index(out_dir, read_statuses(out_dir, [nb.stem for nb in everything]),
                        label)
    failed = [r for r in results if r.status != "ok"]
    log(f"report: {index}")
    if failed:
        log(f"{len(failed)} of {len(results)} notebooks failed: "
            + ", ".join(f"{r.name} ({r.error})" for r in failed))
    if preflight:
        verdict = (f"{len(failed)} failed: fix them before the full run" if failed
                   else f"the {profile} profile runs end to end on this data")
        log(f"preflight: {len(results) - len(failed)}/{len(results)} notebooks ok in "
            f"{(time.perf_counter() - t0) / 60:.1f} min; {verdict} ({freed / 2**30:.1f} GB of "
            "its checkpoints deleted as each run's last notebook finished)")
    return 1 if failed else 0


def _planned(profile: str, root: Path, name: str, overrides: Mapping[str, Any]) -> list | None:
    """The plan's trainings of one notebook, as of now (earlier notebooks' runs count as
    cached); None when its params cannot be planned (the notebook then reports why)."""
    from pixelcam.plan import notebook_configs, plan_trainings

    try:
        with contextlib.chdir(root):
            return plan_trainings(notebook_configs(profile, root, [name], overrides))
    except Exception:  # noqa: BLE001 - callers lose only a courtesy (an ETA, an early delete)
        return None


def _trainings_to_run(profile: str, root: Path, name: str,
                      overrides: Mapping[str, Any]) -> int | None:
    """How many runs the notebook will train; None when it cannot be planned."""
    planned = _planned(profile, root, name, overrides)
    return None if planned is None else sum(t.run.trains for t in planned)


def _runs_needed_later(profile: str, root: Path, names: list[str],
                       overrides: Mapping[str, Any]) -> list[set[Path]] | None:
    """For each notebook, the run folders that the notebooks after it use; None when one
    cannot be planned (every checkpoint then stays until the last notebook)."""
    uses = []
    for name in names:
        planned = _planned(profile, root, name, overrides)
        if planned is None:
            return None
        with contextlib.chdir(root):  # a relative cache_dir means the kernels' folder
            uses.append({t.run.dir.resolve() for t in planned})
    return [set().union(*uses[i + 1:]) for i in range(len(names))]


def check_weights(params_files: Mapping[str, Path], overrides: Mapping[str, Any],
                  profile: str) -> None:
    """Stop before any kernel starts when a pretrained weight the notebooks need is not cached.

    A params file that does not load is skipped here: its notebook reports it as bad params.
    """
    from pixelcam.weights import NO_DATA, check_profile_weights

    configs = []
    for path in params_files.values():
        try:
            configs.append(load_config(path, {**overrides, **NO_DATA}))
        except (ConfigError, yaml.YAMLError):
            continue
    check_profile_weights(configs, profile)


def _preflight_overrides(params_files: Mapping[str, Path], overrides: Mapping[str, Any],
                         root: Path, label: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Subset folds and 1-epoch settings, in `<root>/.cache/<profile>-preflight` (emptied first)."""
    from pixelcam import preflight

    work = (root / ".cache" / label).resolve()  # the kernels run in root: one absolute path
    try:
        extra = preflight.prepare(params_files, overrides, work)
    except yaml.YAMLError as exc:
        raise ConfigError(f"params of the preflight are not valid YAML: {exc}") from None
    n = preflight.PER_CLASS
    log(f"preflight: {n} image{'s' if n > 1 else ''} per class and split, 1 epoch per phase, "
        f"fresh runs in {work}")
    return extra
