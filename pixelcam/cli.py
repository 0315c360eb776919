"""The `pixelcam` command: run the report notebooks, or train and evaluate one config."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pixelcam import __version__
from pixelcam.config import load_config, parse_override, profiles
from pixelcam.errors import ConfigError, PixelCamError, TrainingInterrupted


def _overrides(items: list[str]) -> dict:
    return dict(parse_override(item) for item in items)


def cmd_reports(args: argparse.Namespace) -> int:
    from pixelcam.runner import parse_shard, profile_notebooks, run_reports, shard

    if args.plan:
        from pixelcam.plan import run_plan

        root = Path(args.root).resolve()
        notebooks = profile_notebooks(root, args.profile, args.only)
        if args.shard:
            notebooks = shard(notebooks, *parse_shard(args.shard))
        run_plan(args.profile, root, [nb.stem for nb in notebooks], _overrides(args.param))
        return 0

    outputs = Path(args.outputs).resolve() if args.outputs else None
    if args.submit:
        return _submit(args, outputs)
    return run_reports(args.profile, Path(args.root).resolve(), only=args.only,
                       overrides=_overrides(args.param), cell_timeout=args.cell_timeout,
                       train_timeout=args.train_timeout, outputs=outputs,
                       shard_spec=args.shard, preflight=args.preflight)


def _submit(args: argparse.Namespace, outputs: Path | None) -> int:
    from pixelcam import submit

    for flag, given in (("--preflight", args.preflight), ("--shard", args.shard),
                        ("--cell-timeout", args.cell_timeout),
                        ("--train-timeout", args.train_timeout)):
        if given:
            raise ConfigError(f"--submit runs every training as a job and takes no {flag}: "
                              + ("run the preflight in one interactive job instead (see "
                                 "docs/reproduce-the-paper.md)" if flag == "--preflight" else
                                 "the jobs replace shards" if flag == "--shard" else
                                 "each job's limit is --time"))
    extra = dict(_key_value(item, "--slurm-extra") for item in args.slurm_extra)
    resources = submit.Resources(
        executor=args.submit, time_min=submit.parse_time(args.time) if args.time else None,
        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb,
        partition=args.slurm_partition, account=args.slurm_account, qos=args.slurm_qos,
        constraint=args.slurm_constraint, setup=tuple(args.slurm_setup),
        signal_delay_s=args.signal_delay, max_requeues=args.max_requeues,
        parallel=args.parallel, extra=extra)
    return submit.submit(args.profile, Path(args.root).resolve(), resources, only=args.only,
                         overrides=_overrides(args.param), outputs=outputs)


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r} is not KEY=VALUE, e.g. {flag} gres=gpu:a100:1")
    return key.strip(), value.strip()


def cmd_jobs(args: argparse.Namespace) -> int:
    from pixelcam import submit

    counts = submit.status(args.profile, Path(args.root).resolve(),
                           Path(args.outputs).resolve() if args.outputs else None)
    return 1 if counts.get("failed") else 0


def cmd_train(args: argparse.Namespace) -> int:
    from pixelcam import distributed
    from pixelcam.evaluate import resolve_device
    from pixelcam.pipelines import get_or_train
    from pixelcam.report import main_table

    cfg = load_config(args.params, _overrides(args.param))
    # under torchrun every rank runs this command; rank 0 alone prints and writes
    distributed.init(resolve_device(cfg.device))
    try:
        runs = get_or_train(cfg, log=distributed.quiet_unless_main(print))
        if distributed.is_main():
            print(main_table([runs["baseline"], runs["pixelcam"]], cfg).to_string())
    finally:
        distributed.shutdown()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pixelcam.verify import verify

    problems, checked = verify(args.folder)
    for line in problems:
        print(line)
    print(f"{checked} numbers checked, {len(problems)} differ")
    return 1 if problems else 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from pixelcam.data.glas import format_counts
    from pixelcam.datasets import DATASETS

    manifest = DATASETS[args.dataset].prepare(args.src, args.out, **args.options(args))
    out = Path(args.out).expanduser().resolve()
    print(format_counts(manifest, manifest["encoding"]))
    first = next(iter(manifest["counts"]))
    print(f"prepared {out}: use data_root: {out}"
          + ("" if first == "fold-0" else f" and fold_dir: {out / 'folds' / first}"))
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare real datasets in the protocol's fold format")
    actions = data.add_subparsers(dest="action", required=True)
    prep = actions.add_parser("prepare", help="turn a raw download into a data root")
    kinds = prep.add_subparsers(dest="dataset", required=True)

    glas = kinds.add_parser(
        "glas", help="GlaS: the official download -> the protocol's published folds",
        description="GlaS (Warwick-QU): the official download -> a data root in the fold format. "
                    "By default the WSOL protocol's published GlaS folds fold-0 ... fold-4 "
                    "(shipped with the package, from the official code's wsol-done-right-splits) "
                    "are written under <out>/folds; fold-0 is the one the kit reads. They need "
                    "the full download (165 images). --split seeded draws the protocol split "
                    "(train/valcl/valpx/test) from what --src holds instead, e.g. a sample.")
    camelyon = kinds.add_parser(
        "camelyon16", help="CAMELYON16: WSIs + XML annotations -> 512x512 patches and masks")
    # each dataset's own options, as its preparer (pixelcam.datasets) takes them
    glas.set_defaults(options=lambda a: dict(
        split=a.split, seed=a.seed, folds=a.folds, link=not a.copy, overwrite=a.overwrite))
    camelyon.set_defaults(options=lambda a: dict(
        folds=a.folds, workers=a.workers, seed=a.seed, patch_size=a.patch_size,
        min_tissue=a.min_tissue, min_tumor=a.min_tumor, valcl_fraction=a.valcl_fraction,
        valpx_per_class=a.valpx_per_class, max_per_class=a.max_per_class,
        overwrite=a.overwrite))
    for p in (glas, camelyon):
        p.add_argument("--src", required=True, help="the unpacked download")
        p.add_argument("--out", required=True, help="the data root to create")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.set_defaults(func=cmd_data_prepare)
    glas.add_argument("--split", choices=("published", "seeded"), default="published",
                      help="published (default): the protocol's published folds (or --folds DIR); "
                           "seeded: test = testA+testB, the train images drawn into train/valcl "
                           "stratified (67/18 on the full download, >= 1 valcl image per "
                           "class), valpx = 3 per class from valcl; --seed picks the draw")
    glas.add_argument("--folds", default=None, metavar="DIR",
                      help="another published fold directory (or a folder of fold-k) to use "
                           "instead of the packaged GlaS folds")
    glas.add_argument("--seed", type=int, default=None,
                      help="seed of the --split seeded draw (default 0)")
    glas.add_argument("--copy", action="store_true",
                      help="copy the images instead of hard-linking them")
    camelyon.add_argument("--folds", default=None, metavar="DIR",
                          help="a published fold directory (or a folder of fold-k) to use as is")
    camelyon.add_argument("--seed", type=int, default=0, help="seed of the split draw")
    camelyon.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                          help="processes, one slide each at a time")
    camelyon.add_argument("--patch-size", type=int, default=512,
                          help="side of a square patch at level 0, in pixels")
    camelyon.add_argument("--min-tissue", type=float, default=0.1,
                          help="from scratch: tissue fraction a patch needs")
    camelyon.add_argument("--min-tumor", type=float, default=0.2,
                          help="from scratch: metastatic fraction a tumour patch needs")
    camelyon.add_argument("--valcl-fraction", type=float, default=0.2,
                          help="from scratch: share of the train slides' patches in valcl")
    camelyon.add_argument("--valpx-per-class", type=int, default=5,
                          help="from scratch: valcl patches per class with masks (paper: 6)")
    camelyon.add_argument("--max-per-class", type=int, default=None,
                          help="from scratch: cap the patches per class and pool")


def cmd_weights(args: argparse.Namespace) -> int:
    from pixelcam import weights

    tags = list(dict.fromkeys(args.tag)) if getattr(args, "tag", None) else (
        weights.profile_weights(args.profile, Path(args.root)))
    if not tags:
        print(f"profile {args.profile} needs no timm weights (its params do not say "
              "pretrained: timm)")
        return 0
    if args.action == "list":
        missing = [tag for tag in tags if not weights.cached_weights_file(tag)]
        for tag in tags:
            print(f"{tag:<34} cached: {'no' if tag in missing else 'yes'}")
        print(f"cache: {weights.hub_cache_dir()}")
        if missing:  # a job script can check the cache before it queues anything
            print(f"{len(missing)} missing: `pixelcam weights fetch --profile {args.profile}` on "
                  "a machine with network, into this cache")
        return 1 if missing else 0
    for tag in tags:
        status = weights.fetch_weights([tag])[tag]
        print(f"{tag:<34} {status}: {weights.cached_weights_file(tag)}")
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("weights", help="the pretrained weights a profile needs (HF cache)")
    actions = w.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch", help="download the missing ones into the Hugging Face cache (needs network)",
        description="Download the timm weights that the profile's params load with "
                    "`pretrained: timm` into the standard Hugging Face cache (HF_HUB_CACHE, "
                    "else HF_HOME/hub). Run it once on a machine with network; runs never "
                    "download and read that cache only.")
    listing = actions.add_parser(
        "list", help="the weights a profile needs, and whether cached (exit 1: some are not)")
    for p in (fetch, listing):
        p.add_argument("--profile", default="paper", help=_profile_help("paper"))
        p.add_argument("--root", default=".", help="project folder holding params/")
        p.set_defaults(func=cmd_weights)
    fetch.add_argument("--tag", action="append", default=[], metavar="ARCH.TAG",
                       help="fetch this timm tag instead of the profile's (repeatable), e.g. "
                            "resnet50.tv_in1k")


def _add_submit(rep: argparse.ArgumentParser) -> None:
    sub = rep.add_argument_group(
        "jobs (--submit)", "every training of the plan as one scheduler job (submitit), then one "
        "job that renders the reports from the run cache; a job that reaches --time is requeued "
        "and resumes. Submitting again sends only what is not done; `pixelcam jobs status` "
        "shows each training")
    sub.add_argument("--submit", choices=("slurm", "local"),
                     help="slurm: queue the jobs on a SLURM cluster and return; local: run them "
                          "on this machine, one per visible GPU (or --parallel CPU jobs) at a "
                          "time, then the reports")
    sub.add_argument("--time", metavar="HH:MM:SS",
                     help="wall time of each job (slurm: required; local: default no limit)")
    sub.add_argument("--gpus-per-job", type=int, default=1, choices=(0, 1),
                     help="1 (default) or 0 for CPU jobs")
    sub.add_argument("--cpus-per-job", type=int, default=None,
                     help="CPU cores per job (slurm --cpus-per-task; torch threads)")
    sub.add_argument("--mem-gb", type=int, default=None, help="memory per job (slurm --mem)")
    sub.add_argument("--parallel", type=int, default=0, metavar="N",
                     help="local: jobs at once (default: one per visible GPU, else 1)")
    sub.add_argument("--slurm-partition", help="slurm --partition")
    sub.add_argument("--slurm-account", help="slurm --account")
    sub.add_argument("--slurm-qos", help="slurm --qos")
    sub.add_argument("--slurm-constraint", help="slurm --constraint, e.g. a100")
    sub.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                     help="a shell line each job runs first (repeatable), e.g. "
                          "'module load cuda/12.4'")
    sub.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                     help="another sbatch option (repeatable), e.g. gres=gpu:a100:1")
    sub.add_argument("--signal-delay", type=int, default=120, metavar="SECONDS",
                     help="the requeue signal comes this long before --time (default 120)")
    sub.add_argument("--max-requeues", type=int, default=10,
                     help="time-outs after which a job is not requeued again (default 10)")


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="the jobs of `pixelcam reports --submit`")
    actions = jobs.add_subparsers(dest="action", required=True)
    st = actions.add_parser(
        "status", help="each training of the last submission: done / running / pending / "
                       "failed / not submitted, with its job and log",
        description="Each training that the last `pixelcam reports --submit` of the profile "
                    "planned, with its state, job id and log, then the reports job. Exits 1 "
                    "when a training failed: submit again to resume it.")
    st.add_argument("--profile", default="paper",
                    help="the profile that was submitted (default paper)")
    st.add_argument("--root", default=".", help="project folder holding notebooks/ and params/")
    st.add_argument("--outputs", help="the --outputs given at submission")
    st.set_defaults(func=cmd_jobs)


REPORTS_EXAMPLES = """examples:
  pixelcam reports                                   every notebook, quick profile (CPU)
  pixelcam reports --profile quick --only 01 02 -p epochs=3
  pixelcam reports --profile paper --plan            what the paper profile trains, how long
  pixelcam reports --profile paper --preflight       every notebook on one image per class
  pixelcam reports --profile paper --submit slurm --slurm-partition gpu --time 24:00:00
  pixelcam reports --profile smoke --submit local --parallel 2

exit status: 0 every notebook ok; 1 a notebook failed or a runtime error; 2 a usage error
"""


def _profile_help(default: str) -> str:
    found = profiles(Path.cwd())
    return (f"params/<profile>/ to use: {', '.join(found)} (default {default})" if found
            else f"a folder of <root>/params/ (default {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelcam",
        description="PixelCAM (MIDL 2025) reproduction kit: run the paper's notebooks as "
                    "reports, prepare data, fetch weights, train one config.",
        epilog="`pixelcam <command> --help` describes a command. Docs: docs/index.md")
    parser.add_argument("--version", action="version",
                        version=f"pixelcam-kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    rep = sub.add_parser(
        "reports", help="execute the notebooks of a profile and render HTML",
        description="Execute the notebooks of a profile with papermill into "
                    "<outputs>/<profile>/: one HTML report per notebook and an index page. "
                    "Runs already in the run cache are reused. With --submit, every training "
                    "is a scheduler job instead, then the reports are rendered from the cache.",
        epilog=REPORTS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("--profile", default="quick", help=_profile_help("quick"))
    rep.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 03")
    rep.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params key in every notebook (repeatable)")
    rep.add_argument("--root", default=".", help="project folder holding notebooks/ and params/")
    rep.add_argument("--outputs", help="folder for the reports (default: <root>/outputs)")
    rep.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                     help="stop a notebook cell that trains nothing after this long (a hung "
                          "evaluation); default: no limit")
    rep.add_argument("--train-timeout", type=float, default=None, metavar="SECONDS",
                     help="stop a notebook cell that trains after this long; default: no limit. "
                          "The training keeps its resume state: the same command goes on")
    rep.add_argument("--shard", metavar="I/N",
                     help="run notebooks I, I+N, I+2N, ... only (1 <= I <= N), e.g. one per GPU "
                          "or SLURM array task; the run cache and its locks are shared")
    rep.add_argument("--plan", action="store_true",
                     help="run nothing: list every training the notebooks need (shared runs "
                          "once), what the cache holds, and the time to train the rest, timed "
                          "on this device")
    rep.add_argument("--preflight", action="store_true",
                     help="every notebook of the profile on a few images per split, 1 epoch per "
                          "phase, into outputs/<profile>-preflight: minutes that tell whether "
                          "the full run will reach its end")
    _add_submit(rep)
    rep.set_defaults(func=cmd_reports)

    tr = sub.add_parser(
        "train", help="train (or reuse) a baseline and its PixelCAM model",
        description="Train the baseline of one params file and PixelCAM on its CAMs (or reuse "
                    "them from the run cache), then print their Table 1 rows. Under torchrun, "
                    "one process per GPU trains one run.")
    tr.add_argument("--params", required=True, help="a params YAML file")
    tr.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key (repeatable)")
    tr.set_defaults(func=cmd_train)
    ver = sub.add_parser(
        "verify", help="recompute a profile's tables from the stored runs",
        description="Recompute the main tables of rendered reports from the stored run "
                    "directories; list each number that differs (exit 1 if any).")
    ver.add_argument("folder", help="a profile's report folder, e.g. outputs/quick")
    ver.set_defaults(func=cmd_verify)

    _add_data(sub)
    _add_weights(sub)
    _add_jobs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok; 1 a failed run or a runtime error (data, weights, disk); 2 a usage
    error (an option or a params value); 143 a training stopped by SIGTERM (it resumes)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as exc:  # a scheduler's SIGTERM: the rerun resumes
        print(f"pixelcam: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except ConfigError as exc:
        print(f"pixelcam: error: {exc}", file=sys.stderr)
        return 2
    except PixelCamError as exc:
        print(f"pixelcam: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
