"""Every training of a profile as a scheduler job (submitit), then one job that renders the
reports from the run cache: how the paper profile reaches its end on a GPU cluster.

`pixelcam reports --submit slurm|local` plans the profile (pixelcam.plan: each training once, in
the order a full run trains it) and submits one job per training that is not finished:

* a PixelCAM or NEGEV training waits for its baseline's training (a SLURM `afterok` dependency;
  the local executor starts it once the baseline's run is finished). A baseline that another
  baseline's training yields (GradCAM++ and LayerCAM of one table) has no job of its own;
* a job that reaches its time limit or is pre-empted gets submitit's signal (USR2,
  `signal_delay_s` before the limit), is requeued, and the requeued job resumes the run from its
  resume state (`state.pt`, written atomically at most `state_every_s` apart): it never restarts
  from epoch 0 once a state is written, and never reads a half-written file;
* a job stopped by SIGTERM (scancel, a node drained) finishes its epoch, writes the state and
  ends failed; submitting again sends it again, and it resumes the same way;
* one last job, after all of them, executes the notebooks with `cached_only` (it trains nothing:
  a run that is not finished is an error) and renders the HTML.

Each run directory a job trains records the job in `job.json`; `pixelcam jobs status` reads
those (and the scheduler) to show each training as done / running / pending / failed / not
submitted. Submitting again sends only what is neither done nor queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import pickle_load

from pixelcam.atomic import read_back, write_json
from pixelcam.config import Config
from pixelcam.errors import ConfigError
from pixelcam.jobs import PROGRESS_FILE, ReportsJob, TrainingJob
from pixelcam.plan import PlannedTraining, notebook_configs, plan_trainings
from pixelcam.runner import check_weights, profile_notebooks, run_reports

Log = Callable[[str], None]
JOB_FILE = "job.json"  # in a run directory: the job that trains it
SUBMISSION_FILE = "submission.json"  # in outputs/<profile>/: what was submitted, and how
EXECUTORS = ("slurm", "local")
NO_LIMIT_MIN = 60 * 24 * 365 * 10  # the local executor always has a time limit: ten years
# SLURM states of a job that is still queued or running (sacct's words)
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                    "RESIZING", "SUSPENDED"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


@dataclass
class Resources:
    """What each job asks the scheduler for (the flags of `pixelcam reports --submit`)."""

    executor: str  # slurm | local
    time_min: int | None = None  # wall time of one job; a job that reaches it is requeued
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before each job (e.g. module load cuda)
    signal_delay_s: int = 120  # USR2 this long before the time limit: requeue and resume
    max_requeues: int = 10  # time-outs a job may be requeued after (submitit max_num_timeout)
    parallel: int = 0  # local: jobs at once; 0 = one per visible GPU, else one
    extra: dict[str, str] = field(default_factory=dict)  # other sbatch flags, e.g. gres

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--submit {self.executor!r} is not valid: use one of "
                              f"{', '.join(EXECUTORS)}")
        if self.gpus_per_job not in (0, 1):
            raise ConfigError(f"--gpus-per-job {self.gpus_per_job}: a training job uses one GPU "
                              "(1) or none (0); more GPUs run more jobs at once")
        if self.executor == "slurm" and self.time_min is None:
            raise ConfigError("--submit slurm needs --time, each job's wall time (e.g. "
                              "--time 24:00:00): a job that reaches it is requeued and resumes")


def parse_time(text: str) -> int:
    """SLURM's time formats -> whole minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--time {text!r} is not a time: use HH:MM:SS, D-HH:MM:SS or minutes, "
                          "e.g. 24:00:00")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds < 60:
        raise ConfigError(f"--time {text!r} is under a minute: give each job time to train")
    return -(-seconds // 60)


# --- what each training's job is doing ---

@dataclass
class JobState:
    """One training's line of `pixelcam jobs status`."""

    status: str  # done | running | pending | failed | not submitted
    job_id: str = ""
    log: str = ""
    detail: str = ""  # the epoch it runs, the error it ended with, whose training makes it


def _record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / JOB_FILE
    try:
        return read_back(path) if path.exists() else None
    except Exception:  # noqa: BLE001 - a damaged record means: not submitted
        return None


def _job(record: Mapping[str, Any]) -> submitit.Job:
    cls = submitit.SlurmJob if record["executor"] == "slurm" else submitit.LocalJob
    return cls(folder=record["folder"], job_id=str(record["job_id"]))


def _alive(pid: str) -> bool:
    """A local job's controller process still runs (the pid not taken by another program)."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"submitit" in cmdline.read_bytes()


def _error_line(job: submitit.Job) -> str:
    """The last line of the traceback a failed job pickled ("" when it did not end so)."""
    path = job.paths.result_pickle
    if not path.exists():
        return ""
    try:
        outcome, value = pickle_load(path)
    except Exception:  # noqa: BLE001 - a result being written: nothing to tell yet
        return ""
    if outcome != "error":
        return ""
    lines = [line for line in str(value).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "error"


def _epoch(run_dir: Path) -> str:
    try:
        p = json.loads((run_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return "" if p.get("epoch") is None else f"epoch {p['epoch']}/{p['epochs']}"


def _resume_note(run_dir: Path) -> str:
    return "; its resume state is kept, submit again to go on" if \
        (run_dir / "state.pt").exists() else ""


def job_state(run_dir: Path, slurm: Mapping[str, str] | None = None) -> JobState:
    """Where the training of `run_dir` stands, from its results, its job record and, for a
    SLURM job, `slurm`: the scheduler's word for each job id (slurm_states)."""
    record = _record(run_dir)
    if (run_dir / "results.json").exists():
        record = record or {}
        return JobState("done", str(record.get("job_id", "")), record.get("log", ""))
    if record is None:
        return JobState("not submitted")
    job = _job(record)
    job_id, log = str(record["job_id"]), record.get("log", "")
    error = _error_line(job)
    if error:
        return JobState("failed", job_id, log, error + _resume_note(run_dir))
    if record["executor"] == "local":
        if _alive(job_id):
            return JobState("running", job_id, log, _epoch(run_dir))
        return JobState("failed", job_id, log,
                        "its process ended without a result" + _resume_note(run_dir))
    word = ((slurm or {}).get(job_id) or "UNKNOWN").split()[0]
    if word in QUEUED:
        return JobState("pending", job_id, log, word.lower())
    if word in RUNNING:
        return JobState("running", job_id, log, _epoch(run_dir))
    return JobState("failed", job_id, log, f"SLURM: {word}" + _resume_note(run_dir))


def slurm_states(records: list[Mapping[str, Any]]) -> dict[str, str]:
    """SLURM's word (sacct's State) for each SLURM job of `records`, from one sacct call."""
    jobs = [_job(r) for r in records if r.get("executor") == "slurm"]
    if not jobs:
        return {}
    watcher = jobs[0].watcher
    for job in jobs:
        watcher.register_job(job.job_id)
    watcher.update()
    return {job.job_id: watcher.get_state(job.job_id, mode="cache") for job in jobs}


def training_states(trainings: list[PlannedTraining]) -> dict[Path, JobState]:
    """Every training's state; a run another training yields follows that training."""
    own = [t for t in trainings if not t.run.shared_with]
    slurm = slurm_states([r for t in own if (r := _record(t.run.dir)) is not None])
    states = {t.run.dir: job_state(t.run.dir, slurm) for t in own}
    for t in trainings:
        if t.run.shared_with:
            owner = states.get(t.run.shared_with, JobState("not submitted"))
            done = (t.run.dir / "results.json").exists()
            label = _label(next(o for o in trainings if o.run.dir == t.run.shared_with))
            states[t.run.dir] = JobState("done" if done else owner.status, owner.job_id,
                                         owner.log, f"trained with {label}")
    return states


def _label(t: PlannedTraining) -> str:
    cfg = t.run.config
    return f"{t.label}, {cfg.dataset}, seed {cfg.seed}"


# --- planning ---

def plan(profile: str, root: Path, only: list[str] | None, overrides: Mapping[str, Any]
         ) -> tuple[dict[str, Config], list[PlannedTraining]]:
    """Each notebook's params and every training the notebooks need (no timing)."""
    names = [nb.stem for nb in profile_notebooks(root, profile, only)]
    if not names:
        raise ConfigError(f"no notebook of profile {profile} matches --only {only}")
    with contextlib.chdir(root):  # relative cache and data paths, as a kernel reads them
        configs = notebook_configs(profile, root, names, overrides)
        return configs, plan_trainings(configs)


def _producer(run_dir: Path, by_dir: Mapping[Path, PlannedTraining]) -> Path:
    """The run whose training makes `run_dir`: itself, or the run it shares a training with."""
    t = by_dir.get(run_dir)
    while t is not None and t.run.shared_with is not None:
        run_dir = t.run.shared_with
        t = by_dir.get(run_dir)
    return run_dir


def job_order(trainings: list[PlannedTraining]) -> list[tuple[PlannedTraining, list[Path]]]:
    """The trainings that need a job of their own, each after the trainings it waits for, with
    the run directories of those trainings."""
    by_dir = {t.run.dir: t for t in trainings}
    pending = [t for t in trainings if t.run.shared_with is None and not t.run.cached]
    placed: set[Path] = set()
    out = []
    while pending:
        progressed = False
        for t in list(pending):
            waits = [p for p in dict.fromkeys(_producer(n, by_dir) for n in t.run.needs)
                     if p in by_dir and not by_dir[p].run.cached and p != t.run.dir]
            if all(p in placed for p in waits):
                out.append((t, waits))
                placed.add(t.run.dir)
                pending.remove(t)
                progressed = True
        if not progressed:  # never with the kit's run kinds: a baseline needs nothing
            raise RuntimeError("the plan's trainings wait for each other in a cycle: "
                               + ", ".join(str(t.run.dir) for t in pending))
    return out


# --- submitting ---

def jobs_folder(cfg: Config, root: Path) -> Path:
    """Where submitit keeps each job's pickles and logs: `<cache_dir>/jobs/<job id>/`."""
    return (root / cfg.cache_dir).resolve() / "jobs" / "%j"


def _executor(res: Resources, folder: Path, name: str, waits_for: list[str],
              gpus: tuple[int, ...] = ()) -> submitit.Executor:
    if res.executor == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_requeues)
        ex.update_parameters(timeout_min=res.time_min or NO_LIMIT_MIN, gpus_per_node=len(gpus),
                             visible_gpus=gpus, signal_delay_s=res.signal_delay_s)
        return ex
    if not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError("--submit slurm: this machine has no sbatch/srun: submit from a "
                          "node of the cluster (its login node), or use --submit local")
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_requeues)
    params: dict[str, Any] = {
        "job_name": name, "time": res.time_min, "nodes": 1, "ntasks_per_node": 1,
        "gpus_per_node": res.gpus_per_job or None, "cpus_per_task": res.cpus_per_job,
        "mem": f"{res.mem_gb}GB" if res.mem_gb else None, "partition": res.partition,
        "account": res.account, "qos": res.qos, "constraint": res.constraint,
        "signal_delay_s": res.signal_delay_s, "setup": list(res.setup) or None,
        "additional_parameters": dict(res.extra),
    }
    if waits_for:
        # a failed baseline cancels what waits for it instead of leaving it pending for ever
        params["dependency"] = "afterok:" + ":".join(waits_for)
        params["additional_parameters"]["kill-on-invalid-dep"] = "yes"
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _submit_training(t: PlannedTraining, res: Resources, folder: Path, root: Path,
                     waits_for: list[str], gpus: tuple[int, ...] = ()) -> submitit.Job:
    """Submit one training; its run directory records the job."""
    ex = _executor(res, folder, f"pixelcam-{t.run.dir.name}", waits_for, gpus)
    job = ex.submit(TrainingJob(t.run.kind, t.run.config, t.run.dir.resolve(), root,
                                res.cpus_per_job))
    write_json(t.run.dir / JOB_FILE, {
        "executor": res.executor, "job_id": str(job.job_id), "folder": str(folder),
        "log": str(job.paths.stdout), "notebook": t.notebook, "run": _label(t),
        "submitted": _stamp()})
    return job


def _save_submission(out_dir: Path, payload: dict[str, Any]) -> None:
    write_json(out_dir / SUBMISSION_FILE, {**payload, "submitted": _stamp()})


def submit(profile: str, root: Path, res: Resources, *, only: list[str] | None = None,
           overrides: Mapping[str, Any] | None = None, outputs: Path | None = None,
           log: Log = print) -> int:
    """Send every training of the profile that is neither done nor queued, then the reports.

    SLURM: everything is queued at once (dependencies in the scheduler) and this returns.
    Local: the jobs run on this machine, `parallel` at a time, and this returns at the end.
    """
    overrides = dict(overrides or {})
    configs, trainings = plan(profile, root, only, overrides)
    with contextlib.chdir(root):
        check_weights({n: root / "params" / profile / f"{n}.yaml" for n in configs}, overrides,
                      profile)
    out_dir = (outputs or root / "outputs") / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = jobs_folder(next(iter(configs.values())), root)
    states = training_states(trainings)
    order = job_order(trainings)
    summary = {"profile": profile, "only": only, "overrides": overrides,
               "outputs": str(outputs) if outputs else None, "executor": res.executor}
    if res.executor == "local":
        _save_submission(out_dir, summary)
        return _run_local(profile, root, res, order, states, folder, only, overrides, outputs,
                          log)
    job_ids: dict[Path, str] = {}
    sent: set[Path] = set()
    for t, waits in order:
        state = states[t.run.dir]
        if state.status == "done":
            continue
        if state.status == "running" or (state.status == "pending"
                                         and not any(w in sent for w in waits)):
            job_ids[t.run.dir] = state.job_id
            continue
        if state.status == "pending":  # it waits for a job that failed and is sent again now
            record = _record(t.run.dir)
            if record is not None:
                _job(record).cancel(check=False)
        ids = [job_ids[w] for w in waits if w in job_ids]
        job = _submit_training(t, res, folder, root, ids)
        job_ids[t.run.dir] = str(job.job_id)
        sent.add(t.run.dir)
        log(f"submitted job {job.job_id}: {_label(t)} ({t.notebook})"
            + (f", after job{'s' if len(ids) > 1 else ''} {', '.join(ids)}" if ids else ""))
    waiting = sorted(set(job_ids.values()))
    render = _executor(res, folder, f"pixelcam-reports-{profile}", waiting)
    job = render.submit(ReportsJob(profile, root, only, overrides, outputs))
    _save_submission(out_dir, {**summary, "reports_job": {
        "executor": res.executor, "job_id": str(job.job_id), "folder": str(folder),
        "log": str(job.paths.stdout)}})
    done = sum(states[t.run.dir].status == "done" for t, _ in order)
    log(f"{len(sent)} training job{'s' if len(sent) != 1 else ''} submitted, "
        f"{len(waiting) - len(sent)} "
        f"already queued, {done} done; the reports job {job.job_id} renders {out_dir} after "
        f"them. Watch: pixelcam jobs status --profile {profile}"
        + (f" --outputs {outputs}" if outputs else ""))
    return 0


def _local_slots(res: Resources) -> list[tuple[int, ...]]:
    """One slot per job that may run at once: a GPU each where there are GPUs, else CPU."""
    import torch

    gpus: list[int] = []
    if res.gpus_per_job and torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [int(x) for x in visible.split(",") if x.strip().isdigit()]
        gpus = ids if ids else list(range(torch.cuda.device_count()))
    if gpus:
        per = max(res.gpus_per_job, 1)
        slots = [tuple(gpus[i:i + per]) for i in range(0, len(gpus) - per + 1, per)]
        return slots[:res.parallel] if res.parallel else slots
    return [()] * max(res.parallel, 1)


def _run_local(profile: str, root: Path, res: Resources,
               order: list[tuple[PlannedTraining, list[Path]]], states: dict[Path, JobState],
               folder: Path, only: list[str] | None, overrides: Mapping[str, Any],
               outputs: Path | None, log: Log) -> int:
    """Run the jobs on this machine, each once the trainings it waits for are finished; then
    the reports (trains nothing). Ctrl-C stops the running trainings after their epoch, with
    their resume state written."""
    slots = _local_slots(res)
    free = list(range(len(slots)))
    todo = [(t, waits) for t, waits in order if states[t.run.dir].status != "done"]
    total = len(todo)
    running: dict[Path, tuple[PlannedTraining, submitit.Job | None, int, float]] = {}
    failed: dict[Path, str] = {}
    for t, _ in todo:  # a job of an earlier submission that still runs: wait for it
        if states[t.run.dir].status == "running":
            running[t.run.dir] = (t, None, -1, time.time())
    todo = [(t, w) for t, w in todo if t.run.dir not in running]
    where = ", ".join(f"GPU {','.join(map(str, s))}" for s in slots) if slots[0] else \
        f"{len(slots)} CPU job{'s' if len(slots) > 1 else ''} at a time"
    log(f"{total} training job{'s' if total != 1 else ''} to run here ({where}); "
        f"logs in {folder.parent}")
    finished = 0
    try:
        while todo or running:
            for run_dir, (t, job, slot, started) in list(running.items()):
                if job is None:
                    if _alive(states[run_dir].job_id):
                        continue
                elif not job.done():
                    continue
                del running[run_dir]
                if slot >= 0:
                    free.append(slot)
                finished += 1
                state = job_state(run_dir)
                if state.status == "done":
                    log(f"[{finished}/{total}] done: {_label(t)} in {time.time() - started:.0f} s")
                else:
                    failed[run_dir] = state.detail
                    log(f"[{finished}/{total}] FAILED: {_label(t)}: {state.detail} (log "
                        f"{state.log})")
            for t, waits in list(todo):
                if any(w in failed for w in waits):
                    todo.remove((t, waits))
                    failed[t.run.dir] = "not run: a training it waits for failed"
                    finished += 1
                    log(f"[{finished}/{total}] skipped: {_label(t)}: a training it waits for "
                        "failed")
                    continue
                if not free or not all((w / "results.json").exists() for w in waits):
                    continue
                slot = free.pop(0)
                job = _submit_training(t, res, folder, root, [], slots[slot])
                running[t.run.dir] = (t, job, slot, time.time())
                todo.remove((t, waits))
                log(f"started job {job.job_id}: {_label(t)} ({t.notebook})"
                    + (f" on GPU {','.join(map(str, slots[slot]))}" if slots[slot] else ""))
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(running, log)
        return 130
    if failed:
        log(f"{len(failed)} of {total} trainings did not finish: run the same command again "
            "to resume them (finished runs are kept); `pixelcam jobs status --profile "
            f"{profile}` lists them with their logs")
        return 1
    log("every training is done: the reports (from the run cache, training nothing)")
    return run_reports(profile, root, only=only, overrides={**overrides, "cached_only": True},
                       outputs=outputs, log=log)


def _stop(running: Mapping[Path, tuple[PlannedTraining, Any, int, float]], log: Log) -> None:
    """SIGTERM to every running job: its training stops after the epoch, state written."""
    jobs = [job for _, job, _, _ in running.values() if job is not None]
    log(f"stopping {len(jobs)} running training{'s' if len(jobs) != 1 else ''} after their "
        "epoch (their resume state is written; Ctrl-C again leaves them)")
    for job in jobs:
        with contextlib.suppress(Exception):
            job._process.send_signal(signal.SIGTERM)  # the controller forwards it to the task
    with contextlib.suppress(KeyboardInterrupt):
        for job in jobs:
            with contextlib.suppress(Exception):
                job._process.wait()
    log("stopped: run the same command again to resume")


# --- status ---

def read_submission(profile: str, root: Path, outputs: Path | None = None) -> dict[str, Any]:
    path = (outputs or root / "outputs") / profile / SUBMISSION_FILE
    if not path.exists():
        raise ConfigError(f"no submission of profile {profile} in {path.parent}: submit first "
                          f"(pixelcam reports --profile {profile} --submit slurm ...), or give "
                          "--outputs as you gave it then")
    return read_back(path)


def status(profile: str, root: Path, outputs: Path | None = None,
           log: Log = print) -> dict[str, int]:
    """Print each training of the last submission with its state, job and log; return the
    count of trainings per state."""
    sub = read_submission(profile, root, outputs)
    _, trainings = plan(profile, root, sub.get("only"), sub.get("overrides") or {})
    states = training_states(trainings)
    log(format_status(trainings, states))
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    render = sub.get("reports_job")
    if render:
        job = _job(render)
        error = _error_line(job)
        word = "failed: " + error if error else "done" if job.paths.result_pickle.exists() \
            else slurm_states([render]).get(str(render["job_id"]), "UNKNOWN").lower()
        log(f"reports job {render['job_id']}: {word} (log {render['log']})")
    log(f"{len(trainings)} trainings: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return counts


def format_status(trainings: list[PlannedTraining], states: Mapping[Path, JobState]) -> str:
    lines = [f"{'notebook':28s} {'run':22s} {'dataset':10s} {'backbone':15s} {'seed':>4s} "
             f"{'status':14s} {'job':>10s}  detail / log"]
    for t in trainings:
        s, cfg = states[t.run.dir], t.run.config
        detail = "; ".join(x for x in (t.variant, s.detail, s.log if s.status != "done" else "")
                           if x)
        lines.append(f"{t.notebook:28s} {t.label:22s} {cfg.dataset:10s} {t.architecture:15s} "
                     f"{cfg.seed:4d} {s.status:14s} {s.job_id or '-':>10s}  {detail}")
    return "\n".join(lines)


__all__ = ["Resources", "JobState", "parse_time", "job_state", "slurm_states",
           "training_states", "plan", "job_order", "submit", "status", "format_status",
           "read_submission"]
