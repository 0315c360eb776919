"""The command line follows conventions: --version, help on every command and option, the
profiles named from params/, and exit status 0 ok / 1 runtime error / 2 usage error."""

import argparse
from pathlib import Path

import pytest

from pixelcam import __version__
from pixelcam.cli import build_parser, main
from pixelcam.config import profiles

ROOT = Path(__file__).resolve().parents[1]


def _parsers(parser: argparse.ArgumentParser, path: str = "pixelcam"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelcam-kit {__version__}"


def test_every_command_and_option_has_help():
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{path} {choice.dest}: no help"
                continue
            assert action.help, f"{path} {'/'.join(action.option_strings) or action.dest}"
    reports = dict(_parsers(build_parser()))["pixelcam reports"]
    assert "examples:" in reports.epilog and "--submit slurm" in reports.epilog


def test_profiles_come_from_params():
    assert profiles(ROOT) == sorted(p.name for p in (ROOT / "params").iterdir()
                                    if p.is_dir() and any(p.glob("[!_]*.yaml")))
    assert {"quick", "smoke", "paper", "real-cpu"} <= set(profiles(ROOT))


def test_exit_status_usage_2_runtime_1(tmp_path, capsys, monkeypatch):
    # a usage error: an unknown profile names the ones there are
    assert main(["reports", "--profile", "nope", "--root", str(ROOT)]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in profiles(ROOT))
    assert main(["weights", "list", "--profile", "nope", "--root", str(ROOT)]) == 2
    assert ", ".join(profiles(ROOT)) in capsys.readouterr().err
    # a runtime error: the data a run needs is not there
    params = tmp_path / "p.yaml"
    params.write_text(f"data_root: {tmp_path / 'missing'}\n")
    assert main(["train", "--params", str(params)]) == 1
    assert "does not exist" in capsys.readouterr().err
    # a failed run: verify finds no reports
    assert main(["verify", str(tmp_path)]) == 1
