"""The fold-format reader on the protocol's real fold files, the writer, and bad input.

The GLAS folds are the ones shipped with the package; the CAMELYON512 valpx split is a copy of
the published one in tests/data/wsol-folds (see tests/data/README.md).
"""

from pathlib import Path

import pytest

from pixelcam.data.folds import Record, find_encoding, read_split, write_split
from pixelcam.data.glas import PACKAGED_FOLDS
from pixelcam.errors import DataError

FOLDS = Path(__file__).resolve().parent / "data" / "wsol-folds"  # CAMELYON512 (a few files)
P = "Warwick_QU_Dataset_(Released_2016_07_08)"


def _counts(records):
    return len(records), sum(r.label == 0 for r in records), sum(r.label == 1 for r in records)


def test_published_glas_fold0():
    fold = PACKAGED_FOLDS / "fold-0"
    assert find_encoding(fold) == {"benign": 0, "malignant": 1}
    splits = {s: read_split(fold, s) for s in ("train", "valcl", "valpx", "test")}
    assert _counts(splits["train"]) == (67, 29, 38)
    assert _counts(splits["valcl"]) == (18, 8, 10)
    assert _counts(splits["valpx"]) == (6, 3, 3)
    assert _counts(splits["test"]) == (80, 37, 43)
    first = splits["train"][0]
    assert first == Record(f"{P}/train_71.bmp", 1, 775, 522, f"{P}/train_71_anno.bmp")
    valcl = {r.image_id for r in splits["valcl"]}
    assert all(r.image_id in valcl for r in splits["valpx"])  # valpx is a subset of valcl


def test_published_camelyon_valpx_has_normal_patches_without_masks():
    records = read_split(FOLDS / "CAMELYON512" / "fold-0", "valpx")
    assert _counts(records) == (10, 5, 5)
    assert all((r.mask_path is None) == (r.label == 0) for r in records)
    assert all((r.width, r.height) == (512, 512) for r in records)


def _write(tmp_path, records=None):
    records = records or [Record("a.png", 0, 4, 3, "a_m.png"), Record("b.png", 1, 4, 3, None)]
    write_split(tmp_path / "fold", "test", records)
    (tmp_path / "encoding.yaml").write_text("{benign: 0, malignant: 1}\n")
    return tmp_path / "fold"


def test_round_trip(tmp_path):
    records = [Record("x/a.png", 0, 4, 3, "m/a.png"), Record("x/b.png", 1, 5, 6, None)]
    fold = _write(tmp_path, records)
    assert read_split(fold, "test") == records
    assert not list((fold / "test").glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("name,content,match", [
    ("class_labels.txt", "a.png,0\nb.png,7\n", r"label 7 .*valid values are \[0, 1\]"),
    ("class_labels.txt", "a.png,0\n", "no line for image id 'b.png'"),
    ("class_labels.txt", "a.png,0\nb.png,1\nc.png,0\n", "'c.png' is not in"),
    ("class_labels.txt", "a.png;0\nb.png,1\n", r"class_labels.txt:1: malformed line"),
    ("image_sizes.txt", "a.png,4,3\nb.png,x,3\n", r"image_sizes.txt:2: .*width 'x'"),
    ("image_ids.txt", "\n\n", "has no images"),
    ("image_ids.txt", "a.png\na.png\nb.png\n", "appears twice"),
])
def test_bad_fold_files(tmp_path, name, content, match):
    fold = _write(tmp_path)
    (fold / "test" / name).write_text(content)
    with pytest.raises(DataError, match=match):
        read_split(fold, "test")


def test_missing_pieces(tmp_path):
    fold = _write(tmp_path)
    with pytest.raises(DataError, match="split directory .*valcl not found"):
        read_split(fold, "valcl")
    (fold / "test" / "class_labels.txt").unlink()
    with pytest.raises(DataError, match="class_labels.txt is missing"):
        read_split(fold, "test")
    (tmp_path / "encoding.yaml").unlink()
    with pytest.raises(DataError, match="no encoding.yaml found"):
        find_encoding(fold)


def test_writer_refuses_unwritable_records(tmp_path):
    with pytest.raises(DataError, match="no records"):
        write_split(tmp_path, "test", [])
    with pytest.raises(DataError, match="commas"):
        write_split(tmp_path, "test", [Record("a,b.png", 0)])


def test_optional_files_and_the_camelyon_sizes_alias(tmp_path):
    fold = _write(tmp_path)
    split = fold / "test"
    (split / "image_sizes.txt").rename(split / "images_size.txt")  # CAMELYON fold-6 spelling
    (split / "localization.txt").unlink()  # e.g. a train split without masks
    records = read_split(fold, "test")
    assert [(r.width, r.height, r.mask_path) for r in records] == [(4, 3, None), (4, 3, None)]
    (split / "images_size.txt").unlink()
    assert [(r.width, r.height) for r in read_split(fold, "test")] == [(None, None)] * 2


def test_encoding_two_levels_up_and_explicit(tmp_path):
    fold = tmp_path / "DS" / "fold-0"
    write_split(fold, "train", [Record("a.png", 2, 4, 3, None)])
    (tmp_path / "encoding.yaml").write_text("{normal: 0, tumor: 2}\n")
    assert find_encoding(fold) == {"normal": 0, "tumor": 2}
    assert read_split(fold, "train")[0].label == 2
    with pytest.raises(DataError, match=r"valid values are \[0, 1\] from the encoding passed"):
        read_split(fold, "train", encoding={"benign": 0, "malignant": 1})


@pytest.mark.parametrize("text", ["[benign, malignant]\n", "{benign: zero}\n", "{a: 0, b: 0}\n"])
def test_bad_encoding_file(tmp_path, text):
    fold = _write(tmp_path)
    (tmp_path / "encoding.yaml").write_text(text)
    with pytest.raises(DataError, match="encoding.yaml"):
        read_split(fold, "test")


def test_localization_must_match_the_ids(tmp_path):
    fold = _write(tmp_path)
    (fold / "test" / "localization.txt").write_text("a.png,a_m.png,\nb.png,,\nb.png,,\n")
    with pytest.raises(DataError, match=r"localization.txt:3: image id 'b.png' appears twice"):
        read_split(fold, "test")
    (fold / "test" / "localization.txt").write_text("a.png,a_m.png\nb.png,,\n")
    with pytest.raises(DataError, match=r"localization.txt:1: malformed line"):
        read_split(fold, "test")


def test_rewrite_drops_stale_sizes(tmp_path):
    fold = _write(tmp_path)
    write_split(fold, "test", [Record("c.png", 1)])  # no sizes known this time
    assert not (fold / "test" / "image_sizes.txt").exists()
    assert read_split(fold, "test") == [Record("c.png", 1, None, None, None)]
    with pytest.raises(DataError, match="sizes for all records or for none"):
        write_split(fold, "test", [Record("c.png", 1, 4, 3), Record("d.png", 0)])
