"""GlaS preparation: the packaged published folds (the default), the seeded split on the real
sample (tests/data/glas-sample, 10 GlaS images downscaled by 0.4), bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelcam.cli import main
from pixelcam.data.folds import Record, read_split, write_split
from pixelcam.data.glas import (
    GLAS_DIR,
    PACKAGED_FOLDS,
    GlasImage,
    prepare_glas,
    protocol_split,
    read_folds,
    read_grades,
    scan_glas,
    split_counts,
)
from pixelcam.errors import DataError

SAMPLE = Path(__file__).resolve().parent / "data" / "glas-sample"
FOLDS = PACKAGED_FOLDS  # the published GLAS folds, shipped with the package
SPLITS = ("train", "valcl", "valpx", "test")
SAMPLE_GRADES = {  # from the sample's Grade.csv
    "testA_1": 0, "testA_10": 0, "testB_1": 1, "testB_10": 1, "train_1": 1, "train_10": 1,
    "train_11": 1, "train_12": 0, "train_13": 1, "train_14": 1,
}


def _counts(root: Path, fold: str = "fold-0") -> dict[str, tuple[int, int, int]]:
    return {s: split_counts(read_split(root / "folds" / fold, s)) for s in SPLITS}


def _mini_src(tmp_path: Path, names=tuple(SAMPLE_GRADES)) -> Path:
    """A copy of (part of) the sample, Grade.csv kept in the download's CR/padded format."""
    src_dir = SAMPLE / GLAS_DIR
    dst = tmp_path / "src" / GLAS_DIR
    dst.mkdir(parents=True)
    for name in names:
        for suffix in (".bmp", "_anno.bmp"):
            shutil.copyfile(src_dir / f"{name}{suffix}", dst / f"{name}{suffix}")
    lines = (src_dir / "Grade.csv").read_bytes().split(b"\r")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(b",")[0].decode() in names]
    (dst / "Grade.csv").write_bytes(b"\r".join(keep))
    return dst.parent


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("glas") / "glas"
    return out, prepare_glas(SAMPLE, out, split="seeded", seed=0)


# ---------------------------------------------------------------------------------------------
# the protocol split


def test_grade_csv_with_cr_line_endings_and_padding():
    text = (SAMPLE / GLAS_DIR / "Grade.csv").read_bytes()
    assert b"\r" in text and b"\n" not in text and b", benign" in text
    assert read_grades(SAMPLE / GLAS_DIR / "Grade.csv") == SAMPLE_GRADES


def test_sample_protocol_split_counts(prepared):
    out, manifest = prepared
    counts = _counts(out)
    # 6 train images (1 benign, 5 malignant): round(6 * 18/85) = 1 valcl image by quota, but
    # every class gets at least one, so valcl takes the only benign one (train_12) and one
    # malignant; valpx keeps what valcl has of each class (1 benign, 1 malignant).
    assert counts == {"train": (4, 0, 4), "valcl": (2, 1, 1), "valpx": (2, 1, 1),
                      "test": (4, 2, 2)}
    assert manifest["mode"] == "seeded-split" and manifest["seed"] == 0
    assert manifest["counts"]["fold-0"]["test"] == {"n": 4, "per_class": {"0": 2, "1": 2}}
    recs = {s: read_split(out / "folds" / "fold-0", s) for s in SPLITS}
    assert [r.image_id for r in recs["test"]] == [
        f"{GLAS_DIR}/{n}.bmp" for n in ("testA_1", "testA_10", "testB_1", "testB_10")]
    assert {r.image_id for r in recs["valpx"]} <= {r.image_id for r in recs["valcl"]}
    everything = [r for rs in recs.values() for r in rs]
    for r in everything:
        name = Path(r.image_id).stem
        assert r.label == SAMPLE_GRADES[name]
        assert r.mask_path == f"{GLAS_DIR}/{name}_anno.bmp"
        assert (out / r.image_id).read_bytes() == (SAMPLE / r.image_id).read_bytes()
        with Image.open(out / r.image_id) as im:
            assert (r.width, r.height) == im.size  # the original size, for full-res evaluation
    sizes = {Path(r.image_id).stem: (r.width, r.height) for r in everything}
    # the sample's sizes (775x522 and 574x433 in the download, times 0.4)
    assert sizes["train_12"] == (230, 173) and sizes["train_1"] == (310, 209)
    assert (out / "encoding.yaml").read_text() == "benign: 0\nmalignant: 1\n"
    assert (out / GLAS_DIR / "Grade.csv").is_file()
    _no_leftovers(out.parent)


def test_prepared_sample_loads_with_binary_masks(prepared):
    from pixelcam.data.dataset import WSOLDataset

    out, _ = prepared
    ds = WSOLDataset(out, out / "folds" / "fold-0", "test", train=False, image_size=64,
                     resize_size=72)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64)
    anno = np.asarray(Image.open(out / ds.records[0].mask_path))
    assert set(item["mask"].unique().tolist()) == {0, 1}
    assert abs(item["mask"].float().mean().item() - (anno > 0).mean()) < 0.05


def test_full_size_split_gives_the_published_counts():
    """37 benign + 48 malignant train, 37 + 43 test: the official GlaS class balance."""
    images = [GlasImage(f"train_{i}", "train", int(i > 37), 775, 522) for i in range(1, 86)]
    images += [GlasImage(f"testA_{i}", "test", int(i > 37), 775, 522) for i in range(1, 81)]
    splits = protocol_split(images, seed=0)
    assert {s: split_counts(r) for s, r in splits.items()} == {
        "train": (67, 29, 38), "valcl": (18, 8, 10), "valpx": (6, 3, 3), "test": (80, 37, 43)}
    assert splits == protocol_split(images, seed=0)
    draws = {tuple(r.image_id for r in protocol_split(images, seed=s)["valcl"]) for s in range(4)}
    assert len(draws) == 4  # the seed changes the draw


def test_published_fold0_counts_and_class_balance():
    folds, encoding = read_folds(FOLDS / "fold-0", {"benign": 0, "malignant": 1})
    assert encoding == {"benign": 0, "malignant": 1} and list(folds) == ["fold-0"]
    counts = {s: split_counts(r) for s, r in folds["fold-0"].items()}
    assert counts == {"train": (67, 29, 38), "valcl": (18, 8, 10), "valpx": (6, 3, 3),
                      "test": (80, 37, 43)}
    every, _ = read_folds(FOLDS, {"benign": 0, "malignant": 1})
    assert list(every) == [f"fold-{k}" for k in range(5)]
    assert split_counts(every["fold-4"]["train"]) == (72, 32, 40)


# ---------------------------------------------------------------------------------------------
# published folds


def test_folds_mode_copies_a_fold_directory(tmp_path):
    def rec(name):
        return Record(f"{GLAS_DIR}/{name}.bmp", SAMPLE_GRADES[name], None, None,
                      f"{GLAS_DIR}/{name}_anno.bmp")

    plan = {"train": ["train_1", "train_12", "train_13"], "valcl": ["train_10", "train_11"],
            "valpx": ["train_10"], "test": ["testA_1", "testB_1"]}
    folds = tmp_path / "GLAS"
    (folds).mkdir()
    (folds / "encoding.yaml").write_text("{benign: 0, malignant: 1}\n")
    for split, names in plan.items():
        write_split(folds / "fold-2", split, [rec(n) for n in names])
    out = tmp_path / "out"
    manifest = prepare_glas(SAMPLE, out, folds=folds)
    assert manifest["mode"] == "published-folds" and list(manifest["counts"]) == ["fold-2"]
    for split, names in plan.items():
        got = read_split(out / "folds" / "fold-2", split)
        assert [r.image_id for r in got] == [rec(n).image_id for n in names]
        assert all((out / r.image_id).is_file() and (out / r.mask_path).is_file() for r in got)
    # Only what the folds name is copied.
    assert sorted(p.name for p in (out / GLAS_DIR).glob("*_anno.bmp")) == sorted(
        f"{n}_anno.bmp" for n in {n for names in plan.values() for n in names})


def test_published_fold_naming_absent_files(tmp_path):
    # The published fold-0 names all 165 images; the sample has 10: refused, nothing written.
    with pytest.raises(DataError, match=r"lacks 155 of the 165 images the fold files of "
                                        r".*fold-0 name \(first: .*/train_71\.bmp\): is this the "
                                        r"full Warwick QU download\?.* --split seeded"):
        prepare_glas(SAMPLE, tmp_path / "out", folds=FOLDS / "fold-0")
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# the default: the packaged published folds


def _fold_images() -> dict[str, tuple[int, int, int]]:
    """{name: (label, W, H)} of every image the packaged folds name (all 5 folds: 165)."""
    folds, _ = read_folds(FOLDS, {"benign": 0, "malignant": 1})
    return {Path(r.image_id).stem: (r.label, r.width, r.height)
            for splits in folds.values() for recs in splits.values() for r in recs}


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory) -> Path:
    """A "download" named as the packaged folds name it: one generated image and annotation
    per size, hard-linked under every name of that size (cheap), and a Grade.csv in the
    download's format (CR line endings, padded values)."""
    src = tmp_path_factory.mktemp("download") / GLAS_DIR
    src.mkdir()
    images = _fold_images()
    rng = np.random.default_rng(0)
    made: dict[tuple[int, int], tuple[Path, Path]] = {}
    for w, h in sorted({(w, h) for _, w, h in images.values()}):
        image, anno = src.parent / f"img_{w}x{h}.bmp", src.parent / f"anno_{w}x{h}.bmp"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
        Image.fromarray(((np.arange(w)[None, :] + np.zeros((h, 1), int)) % 7 == 0)
                        .astype(np.uint8) * 3).save(anno)
        made[w, h] = image, anno
    lines = [b"name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for name, (label, w, h) in images.items():
        image, anno = made[w, h]
        os.link(image, src / f"{name}.bmp")
        os.link(anno, src / f"{name}_anno.bmp")
        lines.append(f"{name},1, {('benign', 'malignant')[label]}, x".encode())
    (src / "Grade.csv").write_bytes(b"\r".join(lines))
    return src.parent


def test_default_prepare_writes_the_packaged_published_folds(fake_download, tmp_path, capsys):
    out = tmp_path / "glas"
    # the command the README gives, with no other flag
    assert main(["data", "prepare", "glas", "--src", str(fake_download), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fold-0 train     67 (benign 29, malignant 38)" in printed
    assert f"use data_root: {out}" in printed and "fold_dir" not in printed
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["mode"] == "published-folds" and manifest["seed"] is None
    assert manifest["folds_source"].startswith("packaged")
    assert list(manifest["counts"]) == [f"fold-{k}" for k in range(5)]
    # every fold written as published, fold-0 where the loader looks by default
    for k in range(5):
        for split in SPLITS:
            assert read_split(out / "folds" / f"fold-{k}", split) == read_split(
                FOLDS / f"fold-{k}", split), (k, split)
    assert _counts(out) == {"train": (67, 29, 38), "valcl": (18, 8, 10), "valpx": (6, 3, 3),
                            "test": (80, 37, 43)}
    assert _counts(out, "fold-4")["train"] == (72, 32, 40)
    assert len(list((out / GLAS_DIR).glob("*_anno.bmp"))) == 165
    assert (out / "encoding.yaml").read_text() == "benign: 0\nmalignant: 1\n"
    _no_leftovers(tmp_path)


def test_default_prepare_refuses_a_partial_download(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "lacks 155 of the 165 images the published GlaS folds name (first: " in err
    assert f"{GLAS_DIR}/train_71.bmp): is this the full Warwick QU download (165 images)?" in err
    assert "--split seeded" in err
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_published_folds_ship_with_the_package():
    """The folds live inside the package (pyproject's package-data lists them)."""
    import pixelcam.data.glas as glas_module

    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    assert FOLDS.is_relative_to(Path(glas_module.__file__).parent)
    files = sorted(str(p.relative_to(FOLDS)) for p in FOLDS.rglob("*") if p.is_file())
    assert len(files) == 1 + 5 * 4 * 4 and "encoding.yaml" in files
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["pixelcam"]
    pkg = FOLDS.parents[2]  # pixelcam/
    covered = {str(p.relative_to(FOLDS)) for g in globs for p in pkg.glob(g)
               if p.is_relative_to(FOLDS)}
    assert covered == set(files)


def test_folds_mode_refuses_wrong_labels(tmp_path):
    folds = tmp_path / "fold-0"
    wrong = Record(f"{GLAS_DIR}/train_12.bmp", 1)  # Grade.csv: benign
    for split in SPLITS:
        write_split(folds, split, [wrong] if split in ("valcl", "valpx") else [
            Record(f"{GLAS_DIR}/{'train_1' if split == 'train' else 'testA_1'}.bmp",
                   1 if split == "train" else 0)])
    with pytest.raises(DataError, match=r"train_12\.bmp' label 1 but Grade\.csv says 0"):
        prepare_glas(SAMPLE, tmp_path / "out", folds=folds)


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_grade_csv(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "testA_1"))
    (src / GLAS_DIR / "Grade.csv").unlink()
    with pytest.raises(DataError, match=r"Grade\.csv is missing from .*src"):
        prepare_glas(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_named_by_grade_csv_is_missing(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "train_12", "testA_1"))
    (src / GLAS_DIR / "train_12.bmp").unlink()
    with pytest.raises(DataError, match=r"Grade\.csv names 'train_12' but .*train_12\.bmp is "
                                        r"missing"):
        prepare_glas(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_annotation_of_another_size(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "testA_1"))
    anno = src / GLAS_DIR / "testA_1_anno.bmp"
    Image.open(anno).resize((300, 200)).save(anno, format="BMP")
    with pytest.raises(DataError, match=r"testA_1_anno\.bmp is 300x200 but image .*testA_1\.bmp "
                                        r"is 310x209"):
        prepare_glas(src, tmp_path / "out")


def test_undecodable_image(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "testA_1"))
    path = src / GLAS_DIR / "train_1.bmp"
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    with pytest.raises(DataError, match=r"cannot decode image .*train_1\.bmp"):
        prepare_glas(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_bad_grade_value_and_unknown_prefix(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "testA_1"))
    grade = src / GLAS_DIR / "Grade.csv"
    grade.write_bytes(grade.read_bytes().replace(b" malignant", b" cancerous"))
    with pytest.raises(DataError, match=r"Grade\.csv:\d+: grade 'cancerous' of 'train_1'"):
        scan_glas(src)
    grade.write_bytes(b"name,patient ID, grade (GlaS)\rvalid_1,1, benign")
    with pytest.raises(DataError, match=r"'valid_1' starts with none of train_/testA_/testB_"):
        scan_glas(src)


def test_space_named_download_folder(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "train_10", "train_11", "train_12", "testA_1"))
    (src / GLAS_DIR).rename(src / "Warwick QU Dataset (Released 2016_07_08)")
    out = tmp_path / "out"
    prepare_glas(src, out, split="seeded")
    # The output keeps the published folder name, so published fold files apply to it as is.
    assert _counts(out) == {"train": (2, 0, 2), "valcl": (2, 1, 1), "valpx": (2, 1, 1),
                            "test": (1, 1, 0)}
    assert (out / GLAS_DIR / "train_12_anno.bmp").is_file()


def test_tiny_source_cannot_fill_a_split(tmp_path):
    src = _mini_src(tmp_path, ("train_1", "testA_1"))
    # the only train image goes to valcl (>= 1 per class), which leaves train empty
    with pytest.raises(DataError, match=r"too few images to fill split train \(1 train_\*, 1 "):
        prepare_glas(src, tmp_path / "out", split="seeded")
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_prepare_glas(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out),
                 "--split", "seeded", "--seed", "0", "--copy"]) == 0
    printed = capsys.readouterr().out
    assert "fold-0 train      4 (malignant 4)" in printed
    assert "fold-0 valpx      2 (benign 1, malignant 1)" in printed
    assert f"use data_root: {out}" in printed
    assert (out / GLAS_DIR / "train_1.bmp").stat().st_nlink == 1  # --copy: not a hard link
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out),
                 "--split", "seeded"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out),
                 "--overwrite", "--split", "seeded", "--seed", "3"]) == 0
    assert _counts(out)["test"] == (4, 2, 2)
    assert json.loads((out / "MANIFEST.json").read_text())["seed"] == 3
    _no_leftovers(tmp_path)


def test_cli_seeded_sample_fills_every_split_and_loads(tmp_path, capsys):
    """What CI runs before training on the sample: every split filled, both classes in valcl,
    valpx and test, every split readable by the loader with its masks."""
    from pixelcam.data.dataset import WSOLDataset

    out = tmp_path / "X"
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out),
                 "--split", "seeded"]) == 0
    err = capsys.readouterr().err
    # the sample has one benign train image: valcl takes it, and says that train has none
    assert "class 0 has 1 train_* image(s), all in valcl" in err
    counts = _counts(out)
    assert all(n > 0 for n, _, _ in counts.values())
    assert all(c[1] > 0 and c[2] > 0 for s, c in counts.items() if s != "train")
    for split in SPLITS:
        ds = WSOLDataset(out, out / "folds" / "fold-0", split, train=False, image_size=32,
                         resize_size=36)
        assert len(ds) == counts[split][0]
        assert all(r.mask_path for r in ds.records)
        assert ds[len(ds) - 1]["mask"].shape == (32, 32)


@pytest.mark.parametrize("args,match", [
    (["--seed", "3"], r"--seed 3 has no effect on the published folds: add --split seeded"),
    (["--split", "seeded", "--folds", "F"], r"--split seeded draws the split but --folds F"),
])
def test_cli_conflicting_split_options(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    assert main(["data", "prepare", "glas", "--src", str(SAMPLE), "--out", str(out),
                 *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()
