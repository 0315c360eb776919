"""Stain shift: fitted levels frozen to JSON, re-staining, and re-stained data roots."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.folds import Record, write_split
from pixelcam.data.stain import (
    StainLevels,
    fit_macenko,
    fit_stain_levels,
    restain,
    write_restained_split,
)
from pixelcam.data.synthetic import (
    E_OD,
    H_OD,
    SyntheticSpec,
    _image_rng,
    ensure_dataset,
    render_image,
)
from pixelcam.errors import DataError

torch.set_num_threads(1)
W, H = 64, 48
A_SPEC = SyntheticSpec(n_train=4, n_valcl=2, n_test=2, n_valpx_per_class=1, width=W, height=H)
# Dataset B: one image per stain style, H and E vectors turned progressively away from A's.
SHIFTS = [0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8]


def _style(t: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    h = np.asarray(H_OD) + t * np.array([0.3, -0.4, 0.5])
    e = np.asarray(E_OD) + t * np.array([0.5, -0.3, 0.4])
    return tuple(h.tolist()), tuple(e.tolist())


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A (synthetic, default stain) and B (one image per style plus one blank image)."""
    base = tmp_path_factory.mktemp("stain")
    a = ensure_dataset(base / "cache", A_SPEC)
    b = base / "b"
    (b / "images").mkdir(parents=True)
    (b / "masks").mkdir()
    records = []
    for k, t in enumerate(SHIFTS):
        spec = SyntheticSpec(n_train=2, width=W, height=H, stain_matrix=_style(t))
        rgb, mask = render_image(_image_rng(spec, 1), 1, spec)
        Image.fromarray(rgb).save(b / f"images/b{k}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(b / f"masks/b{k}.png")
        records.append(Record(f"images/b{k}.png", k % 2, W, H, f"masks/b{k}.png"))
    Image.fromarray(np.full((H, W, 3), 255, np.uint8)).save(b / "images/blank.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(b / "masks/blank.png")
    records.insert(3, Record("images/blank.png", 0, W, H, "masks/blank.png"))
    (b / "encoding.yaml").write_text("benign: 0\nmalignant: 1\n")
    for split in ("train", "test"):
        write_split(b / "folds" / "fold-0", split, records)
    return a, b


def _fit(roots, **kw):
    a, b = roots
    return fit_stain_levels(a, a / "folds/fold-0", b, b / "folds/fold-0", **kw)


@pytest.fixture(scope="module")
def levels(roots):
    return _fit(roots, n_levels=4)


def test_levels_ordered_evenly_spread_and_failures_counted(roots, levels):
    a, b = roots
    assert levels.n_candidates == len(SHIFTS) + 1 and levels.n_failed == 1  # the blank image
    assert levels.n_source == A_SPEC.n_train and levels.n_source_failed == 0
    src = np.asarray(levels.source_he)
    assert np.allclose(np.linalg.norm(src, axis=0), 1.0, atol=1e-5)
    assert src[0, 0] > src[0, 1]  # H first: more red absorbed than by E
    # Independent ranking of the 7 usable candidates; 4 levels of 7 -> ranks 0, 2, 4, 6.
    ranked = sorted(
        (round(float(np.linalg.norm(fit_macenko(np.asarray(Image.open(b / f"images/b{k}.png")))[0]
                                    - src)), 6), f"images/b{k}.png")
        for k in range(len(SHIFTS))
    )
    assert [lv["image_id"] for lv in levels.levels] == [ranked[i][1] for i in (0, 2, 4, 6)]
    distances = [lv["distance"] for lv in levels.levels]
    assert distances == sorted(distances) and distances[0] < distances[-1]
    assert distances == pytest.approx([ranked[i][0] for i in (0, 2, 4, 6)], abs=3e-6)
    for lv in levels.levels:  # the stored distance follows from the stored matrices
        gap = np.linalg.norm(np.asarray(lv["he"]) - src)
        assert lv["distance"] == pytest.approx(gap, abs=1e-6)
    # The styles were built to drift away from A's stain: the extremes are found.
    assert levels.levels[0]["image_id"] == "images/b0.png"
    assert levels.levels[-1]["image_id"] == f"images/b{len(SHIFTS) - 1}.png"


def test_json_round_trip_and_determinism(roots, levels, tmp_path):
    levels.save(tmp_path / "s.json")
    loaded = StainLevels.load(tmp_path / "s.json")
    assert loaded == levels
    loaded.save(tmp_path / "t.json")
    assert (tmp_path / "s.json").read_bytes() == (tmp_path / "t.json").read_bytes()
    _fit(roots, n_levels=4).save(tmp_path / "u.json")
    assert (tmp_path / "u.json").read_bytes() == (tmp_path / "s.json").read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("levels"), "levels"),
        (lambda d: d.pop("source_he"), "source_he"),
        (lambda d: d["levels"][1].pop("max_c"), "levels[1].max_c"),
        (lambda d: d["levels"][0].update(he=[[1.0, 0.0]]), "levels[0].he"),
        (lambda d: d["levels"][2].update(distance="far"), "levels[2].distance"),
        (lambda d: d["levels"][2].update(distance=0.0), "levels[2].distance"),
        (lambda d: d.update(method="reinhard"), "method"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(n_failed=-1), "n_failed"),
        (lambda d: d.update(source_max_c=[1.0, float("nan")]), "source_max_c[1]"),
    ],
)
def test_load_names_file_and_bad_field(levels, tmp_path, edit, field):
    path = tmp_path / "s.json"
    levels.save(path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        StainLevels.load(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value)


def test_load_missing_or_corrupt_file(levels, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        StainLevels.load(tmp_path / "none.json")
    path = tmp_path / "s.json"
    levels.save(path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(DataError, match=f"{path}.*damaged"):
        StainLevels.load(path)


def test_too_few_candidates_is_a_data_error(roots):
    with pytest.raises(DataError, match=r"only 7 of 8 candidate.*\(1 failed\).*n_levels=9"):
        _fit(roots, n_levels=9)


def test_restain_moves_stain_towards_target(roots, levels):
    a, _ = roots
    rgb = np.asarray(Image.open(a / "images/synth_00001.png").convert("RGB"))
    target = levels.he(4)
    before = float(np.linalg.norm(fit_macenko(rgb)[0] - target))
    out, fell_back = restain(rgb, target, levels.max_c(4), fallback_he=levels.source_he,
                             fallback_max_c=levels.source_max_c)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and not fell_back
    after = float(np.linalg.norm(fit_macenko(out)[0] - target))
    assert before > 0.3
    assert after < 0.25 * before, (before, after)
    # Restaining towards the image's own stain barely changes it.
    own_he, own_c = fit_macenko(rgb)
    same, _ = restain(rgb, own_he, own_c, fallback_he=levels.source_he,
                      fallback_max_c=levels.source_max_c)
    # Not exact: the OD part outside the H-E plane (noise, background) is dropped, and pixels
    # brighter than Io=240 come back at about Io; so compare the stained pixels, on average.
    dark = (rgb < 235).all(axis=-1)
    diff = np.abs(same[dark].astype(int) - rgb[dark])
    assert diff.mean() < 2.5 and np.percentile(diff, 99) <= 10


def test_blank_image_falls_back(levels):
    blank = np.full((H, W, 3), 255, np.uint8)
    out, fell_back = restain(blank, levels.he(1), levels.max_c(1), fallback_he=levels.source_he,
                             fallback_max_c=levels.source_max_c)
    assert fell_back and out.shape == blank.shape and out.dtype == np.uint8
    assert out.min() >= 230  # still white-ish, not a crash or NaN garbage
    with pytest.raises(DataError, match="uint8"):
        restain(blank.astype(np.float32), levels.he(1), levels.max_c(1),
                fallback_he=levels.source_he, fallback_max_c=levels.source_max_c)


def test_write_restained_split_reads_back(roots, levels, tmp_path):
    _, b = roots
    fold = b / "folds/fold-0"
    manifest = write_restained_split(b, fold, "test", levels, tmp_path / "out")
    assert [lv["level"] for lv in manifest["levels"]] == [1, 2, 3, 4]
    assert all(lv["n_images"] == 8 and lv["n_fallback"] == 1 for lv in manifest["levels"])
    saved = json.loads((tmp_path / "out/MANIFEST.json").read_text())
    assert saved["levels"][0]["data_root"] == "level-01"  # relative: the folder can move
    original = WSOLDataset(b, fold, "test", train=False, image_size=32, resize_size=32)
    rgb = np.asarray(Image.open(b / "images/b2.png").convert("RGB"))
    for lv, k in zip(manifest["levels"], range(1, 5)):
        ds = WSOLDataset(lv["data_root"], lv["fold_dir"], "test", train=False, image_size=32,
                         resize_size=32)
        assert len(ds) == len(original) == 8
        for i in range(len(ds)):
            assert torch.equal(ds[i]["mask"], original[i]["mask"])
            assert ds[i]["label"] == original[i]["label"]
        assert not torch.equal(ds[4]["image"], original[4]["image"])
        expected, _ = restain(rgb, levels.he(k), levels.max_c(k), fallback_he=levels.source_he,
                              fallback_max_c=levels.source_max_c)
        written = np.asarray(Image.open(os.path.join(lv["data_root"], "images/b2.png")))
        assert np.array_equal(written, expected)


def test_restained_bytes_deterministic_and_rerun_reuses(roots, levels, tmp_path):
    _, b = roots
    fold = b / "folds/fold-0"
    first = write_restained_split(b, fold, "test", levels, tmp_path / "x")
    write_restained_split(b, fold, "test", levels, tmp_path / "y")
    png = "level-03/images/b5.png"
    assert (tmp_path / "x" / png).read_bytes() == (tmp_path / "y" / png).read_bytes()

    stamp = (tmp_path / "x" / png).stat().st_mtime_ns
    (tmp_path / "x/level-01/images/b0.png").unlink()  # a complete manifest is trusted as is
    assert write_restained_split(b, fold, "test", levels, tmp_path / "x") == first
    assert (tmp_path / "x" / png).stat().st_mtime_ns == stamp
    assert not (tmp_path / "x/level-01/images/b0.png").exists()

    (tmp_path / "x/MANIFEST.json").unlink()  # incomplete: rebuilt
    assert write_restained_split(b, fold, "test", levels, tmp_path / "x") == first
    assert (tmp_path / "x/level-01/images/b0.png").exists()
    assert (tmp_path / "x" / png).read_bytes() == (tmp_path / "y" / png).read_bytes()

    (tmp_path / "x/MANIFEST.json").write_text("{damaged")  # unreadable: rebuilt as well
    assert write_restained_split(b, fold, "test", levels, tmp_path / "x") == first

    other = _fit(roots, n_levels=3)
    with pytest.raises(DataError, match="other re-stained data"):
        write_restained_split(b, fold, "test", other, tmp_path / "x")
