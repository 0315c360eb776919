"""CAMELYON16 preparation on small synthetic pyramidal WSIs: both modes end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from synthetic_wsi import (  # tests/ is on sys.path (rootdir-relative test modules)
    HOLE,
    LESION,
    SIZE,
    SLIVER,
    TISSUE_X,
    TISSUE_Y,
    rect,
    write_download,
    write_xml,
)

from pixelcam.data import camelyon
from pixelcam.data.camelyon import (
    Annotation,
    open_slide,
    otsu_threshold,
    parse_patch_name,
    polygon_mask,
    prepare_camelyon16,
    read_asap_xml,
    slide_for,
    tissue_fractions,
)
from pixelcam.data.folds import Record, read_split, write_split
from pixelcam.data.glas import read_folds, split_counts
from pixelcam.errors import ConfigError, DataError

# the published CAMELYON512 fold-0 files the tests read (valpx, and the first 200 ids of valcl
# and test); see tests/data/README.md
FOLDS = Path(__file__).resolve().parent / "data" / "wsol-folds"
SPLITS = ("train", "valcl", "valpx", "test")


def _expected_mask(x, y, w, h):
    full = np.zeros((SIZE, SIZE), dtype=bool)
    for x0, y0, x1, y1 in (LESION, SLIVER):
        full[y0:y1, x0:x1] = True
    full[HOLE[1] : HOLE[3], HOLE[0] : HOLE[2]] = False
    return full[y : y + h, x : x + w]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("camelyon") / "CAMELYON16"
    return src, write_download(src)


@pytest.fixture(scope="module")
def scratch(source, tmp_path_factory):
    src, _ = source
    out = tmp_path_factory.mktemp("out") / "camelyon512"
    manifest = prepare_camelyon16(src, out, seed=0, valcl_fraction=0.5, valpx_per_class=1)
    return out, manifest


def _records(out: Path, fold: str = "fold-0") -> dict[str, list[Record]]:
    return {s: read_split(out / "folds" / fold, s) for s in SPLITS}


# ---------------------------------------------------------------------------------------------
# building blocks


def test_tifffile_pyramid_opens_in_openslide(source):
    src, arrays = source
    slide = open_slide(src / "training/tumor/tumor_001.tif")
    assert slide.level_count == 3
    assert slide.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
    region = np.asarray(slide.read_region((500, 700), 0, (40, 30)).convert("RGB"))
    assert np.array_equal(region, arrays["tumor_001.tif"][700:730, 500:540])
    low = np.asarray(slide.read_region((0, 0), 2, (16, 16)).convert("RGB"))
    assert np.array_equal(low, arrays["tumor_001.tif"][:64:4, :64:4])
    slide.close()


def test_polygon_mask_uses_pixel_centres_and_even_odd():
    square = np.array(rect((3, 2, 9, 7)), dtype=float)
    m = polygon_mask([square], 1, 1, 12, 10)  # window origin (1, 1)
    expected = np.zeros((10, 12), dtype=bool)
    expected[1:6, 2:8] = True
    assert np.array_equal(m, expected)
    # A triangle above the diagonal: centres on its left edge count as inside ([start, end)).
    tri = np.array([(0.0, 0.0), (20.0, 0.0), (20.0, 20.0)])
    yy, xx = np.mgrid[0:20, 0:20]
    assert np.array_equal(polygon_mask([tri], 0, 0, 20, 20), xx >= yy)
    # Even-odd: the centre of a pentagram is outside, its points inside.
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.stack([50 + 40 * np.cos(angles), 50 - 40 * np.sin(angles)], axis=1)
    m = polygon_mask([star], 0, 0, 100, 100)
    assert not m[50, 50] and m[15, 50] and m[50:, :].sum() > 0
    # A polygon away from the window adds nothing; the union of two is their OR.
    far = np.array(rect((100, 100, 120, 130)), dtype=float)
    assert not polygon_mask([far], 0, 0, 20, 20).any()
    two = polygon_mask([square, tri], 0, 0, 20, 20)
    assert np.array_equal(two, polygon_mask([square], 0, 0, 20, 20) | (xx >= yy))


def test_annotation_groups_and_exclusion(source):
    src, _ = source
    ann = read_asap_xml(src / "training/lesion_annotations/tumor_001.xml", SIZE, SIZE)
    assert len(ann.tumor) == 2 and len(ann.exclusion) == 1
    for x, y in [(512, 512), (1024, 512), (0, 0), (300, 900)]:
        assert np.array_equal(ann.mask(x, y, 512, 512), _expected_mask(x, y, 512, 512))
    assert ann.mask(512, 512, 512, 512).mean() == pytest.approx(1 - 100 * 100 / 512**2)
    assert not ann.touches(1600, 1600, 256, 256)


def test_otsu_and_tissue_fractions_read_in_chunks(source):
    hist = np.zeros(256)
    hist[10], hist[200] = 500, 300
    assert 10 <= otsu_threshold(hist) < 200
    src, _ = source

    class Recorder:
        """Forwards to the slide and records the largest region read."""

        def __init__(self, slide):
            self.slide, self.largest = slide, 0

        def __getattr__(self, name):
            return getattr(self.slide, name)

        def read_region(self, loc, level, size):
            self.largest = max(self.largest, size[0] * size[1])
            return self.slide.read_region(loc, level, size)

    slide = Recorder(open_slide(src / "training/normal/normal_001.tif"))
    frac = tissue_fractions(slide, 512, 32, chunk=100)
    assert slide.largest <= 100 * 100  # never the whole level
    expected = np.ones((4, 4))
    expected[3, :] = (TISSUE_Y - 1536) / 512
    expected[:, 3] = (TISSUE_X - 1536) / 512
    expected[3, 3] = (TISSUE_X - 1536) * (TISSUE_Y - 1536) / 512**2
    assert np.allclose(frac, expected)
    assert np.allclose(tissue_fractions(slide, 512, 32, chunk=4096), expected)


def test_patch_names_of_the_published_folds_parse():
    fold = FOLDS / "CAMELYON512" / "fold-0"
    names = []
    for f in fold.glob("*/image_ids.txt"):
        names += f.read_text().split()
    assert len(names) == 410
    slides = {}
    for name in names:
        token, x, y, w, h = parse_patch_name(name)
        assert (w, h) == (512, 512) and x >= 0 and y >= 0
        slides[token.rsplit("-", 1)[-1]] = True
    assert "tumor_009.tif" in slides and "normal_065.tif" in slides and "test_048.tif" in slides
    first = parse_patch_name(
        "camelyon16/w-512xh-512/metastatic-patches/training/tumor/tumor_009/Patch_file_training-"
        "tumor-tumor_009.tif_reg_4_row_23_patch_12_x_17767_y_157191_tissue_0.7259063720703125_"
        "metastatic_1.0_w_512_h_512.png"
    )
    assert first == ("training-tumor-tumor_009.tif", 17767, 157191, 512, 512)
    assert slide_for("training-tumor-tumor_009.tif", {"tumor_009.tif": "S"}) == "S"
    folds, encoding = read_folds(fold.parent, camelyon.CAMELYON_ENCODING, required=())
    assert encoding == {"normal": 0, "tumor": 1}
    assert split_counts(folds["fold-0"]["valpx"]) == (10, 5, 5)  # the paper writes 6 per class


# ---------------------------------------------------------------------------------------------
# from scratch


def test_from_scratch_counts_and_balance(scratch):
    out, manifest = scratch
    recs = _records(out)
    counts = {s: split_counts(r) for s, r in recs.items()}
    assert counts == {"train": (4, 2, 2), "valcl": (4, 2, 2), "valpx": (2, 1, 1),
                      "test": (8, 4, 4)}
    assert manifest["counts"]["fold-0"]["test"] == {"n": 8, "per_class": {"0": 4, "1": 4}}
    valcl = {r.image_id for r in recs["valcl"]}
    assert {r.image_id for r in recs["valpx"]} <= valcl
    assert not valcl & {r.image_id for r in recs["train"]}
    assert not (out.parent / f".{out.name}.partial").exists()
    assert json.loads((out / "MANIFEST.json").read_text())["patches"] == 16


def test_from_scratch_follows_the_survey_rules(scratch, source):
    out, _ = scratch
    _, arrays = source
    lesion_cells = {(512, 512): 0.9619, (1024, 512): 0.5, (512, 1024): 1.0, (1024, 1024): 0.5}
    for split, records in _records(out).items():
        for r in records:
            token, x, y, w, h = parse_patch_name(r.image_id)
            assert (w, h, r.width, r.height) == (512, 512, 512, 512)
            patch = np.asarray(Image.open(out / r.image_id))
            assert np.array_equal(patch, arrays[token][y : y + 512, x : x + 512])
            from_test_slide = token.startswith("test_")
            assert from_test_slide == (split == "test")
            if r.label == 1:  # >= 20% lesion, from an annotated slide, with its mask
                assert token in ("tumor_001.tif", "test_001.tif")
                assert f"metastatic_{lesion_cells[(x, y)]:.4f}" in r.image_id
                mask = np.asarray(Image.open(out / r.mask_path))
                assert set(np.unique(mask).tolist()) <= {0, 255}
                assert np.array_equal(mask > 0, _expected_mask(x, y, 512, 512))
            else:  # normal slides only, >= 10% tissue (column 3 has 6.25%), no mask
                assert token in ("normal_001.tif", "test_002.tif")
                assert r.mask_path is None and x < 1536


def test_from_scratch_is_seeded(scratch, source, tmp_path):
    out, _ = scratch
    src, _ = source
    again = prepare_camelyon16(src, tmp_path / "b", seed=0, valcl_fraction=0.5,
                               valpx_per_class=1)
    assert again["counts"] == scratch[1]["counts"]
    assert _records(tmp_path / "b") == _records(out)
    prepare_camelyon16(src, tmp_path / "c", seed=5, valcl_fraction=0.5, valpx_per_class=1,
                       max_per_class=3)
    other = _records(tmp_path / "c")
    assert {s: split_counts(r) for s, r in other.items()}["test"] == (6, 3, 3)


def test_prepared_patches_load_in_the_dataset(scratch):
    from pixelcam.data.dataset import WSOLDataset

    out, _ = scratch
    ds = WSOLDataset(out, out / "folds" / "fold-0", "valpx", train=False, image_size=32,
                     resize_size=40)
    masks = {int(item["label"]): item["mask"] for item in (ds[0], ds[1])}
    assert masks[1].any() and not masks[0].any()


# ---------------------------------------------------------------------------------------------
# published folds


def _published_fold(root: Path, entries: dict[str, list[tuple[str, int, int, int]]]) -> Path:
    """A fold in the survey's naming: (slide path with dashes, label, x, y) per split."""
    (root / "encoding.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "encoding.yaml").write_text("{normal: 0, tumor: 1}\n")
    prefix = "camelyon16/w-512xh-512"
    for split, items in entries.items():
        records = []
        for wsi, label, x, y in items:
            stem = wsi.rsplit("-", 1)[-1].removesuffix(".tif")
            if label:
                tail = (f"{wsi}_reg_0_row_0_patch_0_x_{x}_y_{y}_tissue_0.5_metastatic_0.5"
                        f"_w_512_h_512.png")
                folder = f"{prefix}/metastatic-patches/{stem}"
                records.append(Record(f"{folder}/Patch_file_{tail}", 1, 512, 512,
                                      f"{folder}/mask_file_{tail}"))
            else:
                name = f"Patch_file_{wsi}_patch_0_x_{x}_y_{y}_tissue_0.5_w_512_h_512.png"
                records.append(Record(f"{prefix}/normal-patches/{name}", 0, 512, 512))
        write_split(root / "fold-0", split, records)
    return root


FOLD_ENTRIES = {
    "train": [("training-tumor-tumor_001.tif", 1, 450, 580),
              ("training-normal-normal_001.tif", 0, 0, 0)],
    "valcl": [("training-tumor-tumor_001.tif", 1, 700, 1100),
              ("training-normal-normal_001.tif", 0, 1000, 1200),
              ("training-tumor-tumor_001.tif", 1, 1, 2)],
    "valpx": [("training-tumor-tumor_001.tif", 1, 700, 1100),
              ("training-normal-normal_001.tif", 0, 1000, 1200)],
    "test": [("testing-images-test_001.tif", 1, 333, 444),
             ("testing-images-test_002.tif", 0, 1536, 1536)],
}


def test_published_folds_cut_exactly_those_patches(source, tmp_path):
    src, arrays = source
    folds = _published_fold(tmp_path / "CAMELYON512", FOLD_ENTRIES)
    out = tmp_path / "prepared"
    manifest = prepare_camelyon16(src, out, folds=folds, workers=2)
    assert manifest["patches"] == 7 and manifest["stats"]["cut"] == 4  # valpx ⊂ valcl
    expected = {s: read_split(folds / "fold-0", s) for s in SPLITS}
    assert _records(out) == expected
    for records in expected.values():
        for r in records:
            token, x, y, _, _ = parse_patch_name(r.image_id)
            slide = arrays[token.rsplit("-", 1)[-1]]
            patch = np.asarray(Image.open(out / r.image_id))
            assert np.array_equal(patch, slide[y : y + 512, x : x + 512])
            if r.mask_path:
                mask = np.asarray(Image.open(out / r.mask_path)) > 0
                assert np.array_equal(mask, _expected_mask(x, y, 512, 512))
    assert (out / "encoding.yaml").read_text() == "normal: 0\ntumor: 1\n"


# ---------------------------------------------------------------------------------------------
# bad input, atomic output, resume


def _copy_source(source, tmp_path: Path) -> Path:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source[0], src)
    return src


def _nothing_left(tmp_path: Path, name: str) -> None:
    assert not (tmp_path / name).exists()


def test_xml_without_polygons(source, tmp_path):
    src = _copy_source(source, tmp_path)
    xml = src / "training/lesion_annotations/tumor_001.xml"
    write_xml(xml, [("_0", [(10, 10), (20, 20)])])  # two points: no area
    with pytest.raises(DataError, match=r"tumor_001\.xml holds no lesion polygon"):
        prepare_camelyon16(src, tmp_path / "out")
    _nothing_left(tmp_path, "out")


def test_xml_outside_the_slide(source, tmp_path):
    src = _copy_source(source, tmp_path)
    xml = src / "testing/lesion_annotations/test_001.xml"
    write_xml(xml, [("_0", [(10, 10), (5000, 20), (30, 40)])])
    with pytest.raises(DataError, match=r"test_001\.xml.*vertex \(5000, 20\) outside the "
                                        r"2048x2048 slide"):
        prepare_camelyon16(src, tmp_path / "out")
    _nothing_left(tmp_path, "out")


def test_unknown_group_and_broken_xml(tmp_path):
    path = tmp_path / "a.xml"
    write_xml(path, [("Benign", rect((0, 0, 5, 5)))])
    with pytest.raises(DataError, match=r"group 'Benign'"):
        read_asap_xml(path)
    path.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(DataError, match=r"cannot parse annotation .*a\.xml"):
        read_asap_xml(path)
    write_xml(path, [("_0", [(0, 0), ("x", 1), (2, 2)])])
    with pytest.raises(DataError, match=r"non-numeric"):
        read_asap_xml(path)
    write_xml(path, [("_1", [("1,5", 0), (9, 0), (9, 9)])])  # a decimal comma is accepted
    ann = read_asap_xml(path)
    assert isinstance(ann, Annotation) and ann.tumor[0][0, 0] == 1.5


def test_slide_openslide_cannot_open(source, tmp_path):
    src = _copy_source(source, tmp_path)
    (src / "training/normal/normal_002.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(DataError, match=r"openslide cannot open slide .*normal_002\.tif"):
        prepare_camelyon16(src, tmp_path / "out")
    _nothing_left(tmp_path, "out")
    # A plain (untiled) TIFF is no WSI either.
    tifffile.imwrite(src / "training/normal/normal_002.tif", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(DataError, match=r"normal_002\.tif"):
        prepare_camelyon16(src, tmp_path / "out")


def test_fold_naming_an_absent_slide_or_a_patch_outside(source, tmp_path):
    src, _ = source
    entries = {**FOLD_ENTRIES, "test": [("testing-images-test_099.tif", 0, 0, 0)]}
    folds = _published_fold(tmp_path / "f1", entries)
    with pytest.raises(DataError, match=r"slide 'testing-images-test_099\.tif', but no such "
                                        r"slide is under"):
        prepare_camelyon16(src, tmp_path / "out", folds=folds)
    entries = {**FOLD_ENTRIES, "test": [("testing-images-test_002.tif", 0, 1600, 0)]}
    folds = _published_fold(tmp_path / "f2", entries)
    with pytest.raises(DataError, match=r"lies outside slide test_002\.tif \(2048x2048\)"):
        prepare_camelyon16(src, tmp_path / "out", folds=folds)
    _nothing_left(tmp_path, "out")


def test_crash_leaves_no_output_and_rerun_resumes(source, tmp_path, monkeypatch):
    src, _ = source
    real = camelyon.cut_slide

    def crash_on_test_002(task):
        if task["name"] == "test_002.tif":
            raise DataError("simulated crash")
        return real(task)

    monkeypatch.setattr(camelyon, "cut_slide", crash_on_test_002)
    out = tmp_path / "out"
    kwargs = dict(seed=0, valcl_fraction=0.5, valpx_per_class=1)
    with pytest.raises(DataError, match="simulated crash"):
        prepare_camelyon16(src, out, **kwargs)
    assert not out.exists() and (tmp_path / ".out.partial").is_dir()
    monkeypatch.setattr(camelyon, "cut_slide", real)
    manifest = prepare_camelyon16(src, out, **kwargs)
    # Slides are cut in natural order: normal_001 and test_001 were done before the crash.
    assert manifest["stats"] == {"scanned": 0, "scan_skipped": 4, "cut": 2, "cut_skipped": 2}
    assert {s: split_counts(r) for s, r in _records(out).items()}["test"] == (8, 4, 4)
    assert not (tmp_path / ".out.partial").exists()
    with pytest.raises(ConfigError, match=r"already exists and is not empty.*--overwrite"):
        prepare_camelyon16(src, out, **kwargs)
    again = prepare_camelyon16(src, out, overwrite=True, **kwargs)
    assert again["stats"]["scan_skipped"] == 0 and again["counts"] == manifest["counts"]
