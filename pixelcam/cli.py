"""The `pixelcam` command: run the report notebooks, or train and evaluate one config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixelcam.config import load_config, parse_override
from pixelcam.errors import PixelCamError


def _overrides(items: list[str]) -> dict:
    return dict(parse_override(item) for item in items)


def cmd_reports(args: argparse.Namespace) -> int:
    from pixelcam.runner import run_reports

    return run_reports(args.profile, Path(args.root).resolve(), only=args.only,
                       overrides=_overrides(args.param), cell_timeout=args.cell_timeout,
                       outputs=Path(args.outputs).resolve() if args.outputs else None)


def cmd_train(args: argparse.Namespace) -> int:
    from pixelcam.report import main_table
    from pixelcam.runs import get_or_train

    cfg = load_config(args.params, _overrides(args.param))
    runs = get_or_train(cfg)
    print(main_table([runs["baseline"], runs["pixelcam"]], cfg).to_string())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pixelcam.verify import verify

    problems, checked = verify(args.folder)
    for line in problems:
        print(line)
    print(f"{checked} numbers checked, {len(problems)} differ")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelcam", description="PixelCAM (MIDL 2025) reproduction kit.")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reports", help="execute the notebooks of a profile and render HTML")
    rep.add_argument("--profile", default="quick", help="params/<profile>/ to use (quick | paper)")
    rep.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 03")
    rep.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params key in every notebook (repeatable)")
    rep.add_argument("--root", default=".", help="project folder holding notebooks/ and params/")
    rep.add_argument("--outputs", help="folder for the reports (default: <root>/outputs)")
    rep.add_argument("--cell-timeout", type=int, default=3600, help="seconds per notebook cell")
    rep.set_defaults(func=cmd_reports)

    tr = sub.add_parser("train", help="train (or reuse) a baseline and its PixelCAM model")
    tr.add_argument("--params", required=True, help="a params YAML file")
    tr.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    tr.set_defaults(func=cmd_train)
    ver = sub.add_parser("verify", help="recompute a profile's tables from the stored runs")
    ver.add_argument("folder", help="a profile's report folder, e.g. outputs/quick")
    ver.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PixelCamError as exc:
        print(f"pixelcam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
