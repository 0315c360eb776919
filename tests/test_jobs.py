"""`pixelcam reports --submit`: every training a scheduler job (submitit), each waiting for its
baseline; a job requeued at its time limit or stopped by SIGTERM resumes to the numbers of an
uninterrupted run; the reports come from the run cache, with the numbers of a plain run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pixelcam.cli import main
from pixelcam.errors import ConfigError
from pixelcam.plan import notebook_configs, plan_trainings
from pixelcam.runner import discover
from pixelcam.submit import Resources, job_order, parse_time, submit

ROOT = Path(__file__).resolve().parents[1]
NAMES = [p.stem for p in discover(ROOT / "notebooks")]
TINY = {
    "synthetic_n_train": 16, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
    "image_size": 48, "resize_size": 56, "backbone": "resnet18", "epochs": 2,
    "pixelcam_epochs": 2, "batch_size": 4, "eval_batch_size": 8, "lr": 0.01, "device": "cpu",
    "figure_images": 1,
}


def _project(tmp_path: Path, **params) -> Path:
    """A project with notebook 00 (one baseline, its PixelCAM model) and a `tiny` profile."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "params" / "tiny").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "00_explore.ipynb", root / "notebooks")
    (root / "params" / "tiny" / "00_explore.yaml").write_text(
        yaml.safe_dump({**TINY, "cache_dir": str(tmp_path / "cache"), **params}))
    return root


def _results(cache: Path) -> dict[str, dict]:
    """Each run's numbers: its history, its best epochs and its test evaluation."""
    out = {}
    for path in sorted((cache / "runs").glob("*/results.json")):
        r = json.loads(path.read_text())
        out[path.parent.name] = {k: r[k] for k in ("history", "best_epoch", "test")}
    return out


def _cli(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pixelcam.cli", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_time_limits_in_slurms_formats():
    assert [parse_time(t) for t in ("90", "30:00", "24:00:00", "1-12", "2-00:30:00",
                                    "0:01:30")] == [90, 30, 1440, 2160, 2910, 2]
    for bad in ("1h", "", "0:00:30", "24:00:00:00"):
        with pytest.raises(ConfigError, match="--time"):
            parse_time(bad)


def test_resources_name_what_is_missing():
    with pytest.raises(ConfigError, match="--submit slurm needs --time"):
        Resources("slurm")
    with pytest.raises(ConfigError, match="--gpus-per-job 2"):
        Resources("local", gpus_per_job=2)
    with pytest.raises(ConfigError, match="use one of slurm, local"):
        Resources("pbs")


def test_every_job_waits_for_the_training_that_makes_its_baseline(paper_data):
    trainings = plan_trainings(notebook_configs("paper", ROOT, NAMES,
                                                {"cache_dir": str(paper_data / "cache")}))
    order = job_order(trainings)
    by_dir = {t.run.dir: t for t in trainings}
    jobs = [t.run.dir for t, _ in order]
    # one job per training: the runs another training yields have none
    assert sorted(jobs) == sorted(t.run.dir for t in trainings if t.run.trains)
    assert len(jobs) < len(trainings)
    for position, (t, waits) in enumerate(order):
        assert all(jobs.index(w) < position for w in waits)  # queued after what it waits for
        if t.run.kind in ("baseline", "unet"):
            assert waits == []
            continue
        (baseline,) = t.run.needs
        owner = by_dir[baseline].run.shared_with or baseline
        assert waits == [owner], t.label
    # GradCAM++ + PixelCAM waits for the LayerCAM training that yields the GradCAM++ baseline
    main = [(t, w) for t, w in order if t.notebook in ("00_explore", "01_main_tables")
            and t.run.config.dataset == "glas" and t.run.config.seed == 0]
    ((_, waits),) = [(t, w) for t, w in main if t.label == "GradCAM++ + PixelCAM"]
    assert by_dir[waits[0]].label == "LayerCAM"
    # Table 18: PixelCAM on GlaS from the CAMELYON16 baseline's CAMs waits for that baseline
    external = [(t, w) for t, w in order if t.notebook == "11_external_pseudo_labels"
                and t.run.config.cam_source]
    assert external
    for t, (wait,) in external:
        assert by_dir[wait].run.config.dataset == t.run.config.cam_source != t.run.config.dataset


FAKE_SLURM = {
    # sbatch keeps each script and answers as SLURM does; sacct reads the states the test sets
    "sbatch": 'n=$(( $(cat "$FAKE/count" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE/count"\n'
              'cp "$1" "$FAKE/job-$n.sh"\necho "Submitted batch job $n"\n',
    "sacct": 'echo "JobID|State|NodeList"\ncat "$FAKE/states" 2>/dev/null || true\n',
    "scancel": 'echo "$@" >> "$FAKE/scancel.log"\n',
    "srun": 'exit 1\n',  # never called: submitit looks for it
}


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch) -> Path:
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        path = fake / "bin" / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    monkeypatch.setenv("FAKE", str(fake))
    monkeypatch.setenv("PATH", f"{fake / 'bin'}:{os.environ['PATH']}")
    return fake


def _sbatch(fake: Path, job_id: int) -> str:
    return (fake / f"job-{job_id}.sh").read_text()


def test_slurm_queues_each_training_after_its_baseline_then_the_reports(tmp_path, fake_slurm,
                                                                         capsys):
    from pixelcam.submit import JOB_FILE

    root = _project(tmp_path)
    args = ["reports", "--profile", "tiny", "--root", str(root), "--submit", "slurm",
            "--time", "12:00:00", "--slurm-partition", "gpu", "--cpus-per-job", "8",
            "--mem-gb", "32", "--slurm-setup", "module load cuda/12.4",
            "--slurm-extra", "gres=gpu:a100:1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "submitted job 101: LayerCAM, glas, seed 0" in out
    assert "submitted job 102: LayerCAM + PixelCAM, glas, seed 0 (00_explore), after job 101" \
        in out
    baseline, pixelcam, reports = (_sbatch(fake_slurm, i) for i in (101, 102, 103))
    for script in (baseline, pixelcam, reports):
        assert "#SBATCH --time=720" in script and "#SBATCH --partition=gpu" in script
        assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --cpus-per-task=8" in script
        assert "#SBATCH --mem=32GB" in script and "#SBATCH --gres=gpu:a100:1" in script
        assert "#SBATCH --signal=USR2@120" in script  # requeue 2 minutes before the limit
        assert "module load cuda/12.4" in script
    assert "dependency" not in baseline
    assert "#SBATCH --dependency=afterok:101" in pixelcam
    assert "#SBATCH --kill-on-invalid-dep=yes" in pixelcam
    assert "#SBATCH --dependency=afterok:101:102" in reports
    runs = sorted((tmp_path / "cache" / "runs").glob("*/" + JOB_FILE))
    assert [json.loads(p.read_text())["job_id"] for p in runs] == ["101", "102"]

    # status: one sacct call; the baseline runs, its PixelCAM job waits
    (fake_slurm / "states").write_text("101|RUNNING|node1\n102|PENDING|\n103|PENDING|\n")
    status = ["jobs", "status", "--profile", "tiny", "--root", str(root)]
    assert main(status) == 0
    out = capsys.readouterr().out
    assert "running" in out and "pending" in out and "2 trainings: 1 pending, 1 running" in out
    assert "reports job 103: pending" in out

    # the baseline fails (out of memory): status says so and exits 1; submitting again sends it
    # anew, cancels the PixelCAM job that waits for the failed one and queues it after the new
    (fake_slurm / "states").write_text("101|OUT_OF_MEMORY|node1\n102|PENDING|\n103|PENDING|\n")
    assert main(status) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "SLURM: OUT_OF_MEMORY" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "submitted job 104: LayerCAM, glas, seed 0" in out
    assert "submitted job 105: LayerCAM + PixelCAM, glas, seed 0 (00_explore), after job 104" \
        in out
    assert "102" in (fake_slurm / "scancel.log").read_text()
    assert "#SBATCH --dependency=afterok:104:105" in _sbatch(fake_slurm, 106)

    # a training that is running is not sent twice: only the reports job is queued again
    (fake_slurm / "states").write_text("104|RUNNING|node1\n105|PENDING|\n")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 training jobs submitted, 2 already queued, 0 done" in out
    assert "#SBATCH --dependency=afterok:104:105" in _sbatch(fake_slurm, 107)


def test_smoke_profile_as_local_jobs_gives_the_numbers_of_a_plain_run(smoke_plain, tmp_path):
    """The trainings of two smoke notebooks as jobs (two at a time), then their reports from
    the run cache: every run and every report number equal the plain run's. Notebook 01 has
    every kind of job (baselines, a shared WGAP training, PixelCAM, NEGEV and SAT on their
    baseline's job, the U-Net); 05 adds PixelCAM variants on a baseline of 01's."""
    from pixelcam.verify import verify

    assert smoke_plain.code == 0
    only = ["01", "05"]
    names = [n for n in NAMES if n[:2] in only]
    logs: list[str] = []
    code = submit("smoke", ROOT, Resources("local", gpus_per_job=0, parallel=2), only=only,
                  overrides={"cache_dir": str(tmp_path / "cache")}, outputs=tmp_path / "out",
                  log=logs.append)
    assert code == 0, "\n".join(logs)
    assert sum(line.startswith("started job") for line in logs) == \
        sum(t.run.trains for t in plan_trainings(notebook_configs("smoke", ROOT, names, {
            "cache_dir": str(tmp_path / "fresh")})))
    jobs_runs, plain_runs = _results(tmp_path / "cache"), _results(smoke_plain.cache)
    assert len(jobs_runs) >= 10 and jobs_runs == {k: plain_runs[k] for k in jobs_runs}
    out = tmp_path / "out" / "smoke"
    problems, checked = verify(out)
    assert problems == [] and checked > 50
    for name in names:
        jobs = json.loads((out / name / "results.json").read_text())["metrics"]
        plain = json.loads((smoke_plain.out / name / "results.json").read_text())["metrics"]
        assert jobs == plain, name
    # the reports trained nothing: every run they show was finished by a job
    for name in names:
        runs = json.loads((out / name / "results.json").read_text())["runs"]
        assert all(info["reused"] for info in runs.values()), name


def _progress(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["epoch"] or 0
    except (OSError, ValueError, KeyError):
        return -1


def _wait(what, timeout: float = 120.0, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = what()
        if value:
            return value
        assert proc is None or proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s in vain")


def _task_of(controller: int) -> int:
    """The training process that submitit's local controller started."""
    children = Path(f"/proc/{controller}/task/{controller}/children")
    return int(_wait(lambda: children.read_text().split())[0])


def test_a_job_requeued_at_its_time_limit_then_terminated_resumes_to_the_same_numbers(tmp_path,
                                                                                      capsys):
    """The time-limit signal (USR2, sent by SLURM or by the local executor before --time) makes
    submitit requeue the job, which resumes; a SIGTERM stops it after its epoch, failed, with its
    state written; submitting again resumes it. The numbers equal an uninterrupted run's."""
    epochs = 16  # the SIGTERM lands by epoch 9: the requeue at 3-5, then two more epochs
    root = _project(tmp_path, epochs=epochs, state_every_s=0)
    # the same baseline and PixelCAM run trained straight through, in a process of its own (the
    # test process may run torch with another thread count, which changes CPU numbers)
    ref = _cli(root, "train", "--params", "params/tiny/00_explore.yaml", "-p",
               f"cache_dir={tmp_path / 'reference'}")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    reference = _results(tmp_path / "reference")
    assert len(reference) == 2

    args = ["reports", "--profile", "tiny", "--submit", "local", "--outputs", str(tmp_path / "o")]
    proc = _cli(root, *args)
    runs = tmp_path / "cache" / "runs"
    baseline = _wait(lambda: next(runs.glob("baseline-*"), None), proc=proc)
    _wait(lambda: _progress(baseline) >= 3, proc=proc)
    controller = int(json.loads((baseline / "job.json").read_text())["job_id"])
    os.kill(_task_of(controller), signal.SIGUSR2)  # the time limit is near
    log = baseline / "train.log"
    resumed = _wait(lambda: [line for line in log.read_text().splitlines()
                             if "resuming after epoch" in line], proc=proc)
    first = int(resumed[0].split()[-1])
    assert 3 <= first < epochs
    _wait(lambda: _progress(baseline) >= first + 2, proc=proc)
    os.kill(controller, signal.SIGTERM)  # scancel: the controller passes it to the training
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert "FAILED: LayerCAM, glas, seed 0: pixelcam.errors.TrainingInterrupted" in out
    assert "skipped: LayerCAM + PixelCAM" in out and "run the same command again" in out
    assert not (baseline / "results.json").exists()

    assert main(["jobs", "status", "--profile", "tiny", "--root", str(root), "--outputs",
                 str(tmp_path / "o")]) == 1
    listing = capsys.readouterr().out
    assert "stopped by SIGTERM after epoch" in listing and "its resume state is kept" in listing
    assert "2 trainings: 1 failed, 1 not submitted" in listing

    again = _cli(root, *args)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    resumes = [int(line.split()[-1]) for line in log.read_text().splitlines()
               if "resuming after epoch" in line]
    assert len(resumes) == 2 and first < resumes[1] < epochs  # never from epoch 0
    assert _results(tmp_path / "cache") == reference
    assert json.loads((tmp_path / "o" / "tiny" / "00_explore.status.json").read_text())[
        "status"] == "ok"
