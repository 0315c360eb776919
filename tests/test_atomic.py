"""Results are written whole or not at all; unwritable outputs fail early with a clear message."""

import errno
import os

import pytest

from pixelcam.atomic import ensure_writable, save_torch, write_json, write_text
from pixelcam.errors import OutputError
from pixelcam.runner import run_reports


def test_writes_replace_the_target(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1.5})
    write_json(target, {"x": 2})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"x":2}'
    save_torch({"w": 1}, tmp_path / "w.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.pt"]


def test_disk_full_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_text(target, "old")

    def full(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"cannot write .*results.json: No space left on device"):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="choose a writable output folder"):
        ensure_writable(blocker / "quick")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_any.ipynb").write_text("{}")
    (tmp_path / "params" / "quick").mkdir(parents=True)
    (tmp_path / "params" / "quick" / "01_any.yaml").write_text("epochs: 1\n")
    with pytest.raises(OutputError, match=str(blocker)):
        run_reports("quick", tmp_path, outputs=blocker, log=lambda s: None)
