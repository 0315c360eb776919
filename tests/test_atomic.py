"""Results are written whole or not at all; unwritable outputs fail early with a clear message."""

import errno
import os

import pytest
import torch

from pixelcam.atomic import ensure_writable, link_over, save_torch, write_json, write_text
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


def test_torch_save_on_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    target = tmp_path / "b-loc.pt"
    save_torch({"w": torch.ones(2)}, target)

    def full(_obj, _path):  # what torch.save raises when the disk fills up mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match=r"cannot write .*b-loc.pt: torch.save failed "
                                          r"\(.*unexpected pos.*\) with [\d,]+ MB free on that "
                                          r"disk; free disk space"):
        save_torch({"w": torch.zeros(2)}, target)
    assert torch.equal(torch.load(target)["w"], torch.ones(2))  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["b-loc.pt"]


def test_link_over_shares_one_file_and_copies_where_links_are_refused(tmp_path, monkeypatch):
    source = tmp_path / "b-cl.pt"
    save_torch({"w": torch.arange(3)}, source)
    write_text(tmp_path / "b-loc.pt", "an older checkpoint")
    link_over(source, tmp_path / "b-loc.pt")
    assert (tmp_path / "b-loc.pt").samefile(source)

    def refused(*_args):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", refused)
    link_over(source, tmp_path / "copy.pt")
    assert not (tmp_path / "copy.pt").samefile(source)
    assert torch.equal(torch.load(tmp_path / "copy.pt")["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-cl.pt", "b-loc.pt", "copy.pt"]


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
