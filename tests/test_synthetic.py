"""The embedded synthetic H&E dataset: deterministic, distinct classes, masks, fold files."""

import dataclasses
import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.folds import find_encoding, read_split
from pixelcam.data.synthetic import (
    CAMELYON_E_OD,
    CAMELYON_H_OD,
    E_OD,
    H_OD,
    SyntheticSpec,
    ensure_dataset,
    render_image,
    write_dataset,
)
from pixelcam.errors import ConfigError

SPEC = SyntheticSpec(n_train=8, n_valcl=6, n_test=4, n_valpx_per_class=2, width=96, height=80)


def _digest_tree(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("a") / "d", SPEC)


def test_same_spec_same_bytes(data, tmp_path):
    assert _digest_tree(data) == _digest_tree(write_dataset(tmp_path / "d", SPEC))
    other = write_dataset(tmp_path / "e", SyntheticSpec(**{**SPEC.to_dict(), "seed": 1}))
    assert _digest_tree(data) != _digest_tree(other)


def test_fold_files_and_balance(data):
    fold = data / "folds" / "fold-0"
    counts = {s: read_split(fold, s) for s in ("train", "valcl", "valpx", "test")}
    assert [len(counts[s]) for s in ("train", "valcl", "valpx", "test")] == [8, 6, 4, 4]
    for split, recs in counts.items():
        labels = [r.label for r in recs]
        assert labels.count(0) == labels.count(1), split
        for r in recs:
            assert (data / r.image_id).is_file() and (data / r.mask_path).is_file()
            assert Image.open(data / r.image_id).size == (96, 80)
    valcl = {r.image_id for r in counts["valcl"]}
    assert {r.image_id for r in counts["valpx"]} <= valcl


def _stats(label, n=6):
    spec = SyntheticSpec()
    out = []
    for i in range(n):
        image, mask = render_image(np.random.default_rng([7, label, i]), label, spec)
        od = -np.log(np.clip(image.astype(float) / 255, 1e-3, 1))
        # haematoxylin absorbs red strongly: the red OD measures nuclear density
        out.append((mask.mean(), od[..., 0].mean()))
    return np.array(out)


def test_both_classes_have_glands_and_differ():
    benign, malignant = _stats(0), _stats(1)
    for stats in (benign, malignant):
        assert ((stats[:, 0] > 0.1) & (stats[:, 0] < 0.7)).all()  # gland coverage
    # malignant: crowded, atypical, darker nuclei -> more haematoxylin on every image
    assert malignant[:, 1].min() > benign[:, 1].max()


def test_stain_matrix_changes_colour_not_masks():
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    base = SyntheticSpec()
    shifted = SyntheticSpec(stain_matrix=((0.3, 0.8, 0.5), (0.2, 0.9, 0.3)))
    im_a, mask_a = render_image(rng(), 1, base)
    im_b, mask_b = render_image(rng(), 1, shifted)
    assert np.array_equal(mask_a, mask_b)
    assert np.abs(im_a.astype(int) - im_b.astype(int)).mean() > 5


def test_ensure_dataset_is_cached_and_atomic(tmp_path):
    first = ensure_dataset(tmp_path, SPEC)
    stamp = (first / "MANIFEST.json").stat().st_mtime_ns
    again = ensure_dataset(tmp_path, SPEC)
    assert again == first and (again / "MANIFEST.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporaries left


def test_bad_spec():
    with pytest.raises(ConfigError, match="n_valcl"):
        SyntheticSpec(n_valcl=2, n_valpx_per_class=3)


def test_masks_on_disk_are_binary_and_match_render(data):
    rec = read_split(data / "folds" / "fold-0", "test")[1]
    mask = np.asarray(Image.open(data / rec.mask_path))
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 255}
    image = np.asarray(Image.open(data / rec.image_id))
    assert image.shape == (80, 96, 3) and image.dtype == np.uint8


def _solidity(mask):
    # gland area / convex-hull area, averaged over glands: 1 for ellipses, lower for ragged or
    # fused outlines
    labels, n = ndimage.label(mask)
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        if len(ys) >= 30:
            corners = np.concatenate([np.stack([ys + a, xs + b], 1)
                                      for a in (0, 1) for b in (0, 1)])
            out.append(len(ys) / ConvexHull(corners).volume)
    return np.mean(out)


def test_malignant_glands_are_more_irregular():
    spec = SyntheticSpec()
    solidity = {
        label: [_solidity(render_image(np.random.default_rng([5, i]), label, spec)[1])
                for i in range(6)]
        for label in (0, 1)
    }
    assert min(solidity[0]) > 0.95
    assert np.mean(solidity[1]) < np.mean(solidity[0]) - 0.04


def test_digest_is_stable_and_covers_every_field():
    assert SyntheticSpec().digest() == SyntheticSpec().digest()
    as_lists = SyntheticSpec(stain_matrix=[list(r) for r in SyntheticSpec().stain_matrix])
    assert as_lists.digest() == SyntheticSpec().digest()  # YAML lists hash like tuples
    digests = {SyntheticSpec(**{**SPEC.to_dict(), k: v}).digest()
               for k, v in [("n_train", 10), ("n_valcl", 8), ("n_test", 6), ("width", 64),
                            ("height", 48), ("seed", 9), ("n_valpx_per_class", 1),
                            ("stain_matrix", ((0.6, 0.7, 0.3), (0.1, 0.9, 0.1)))]}
    assert len(digests | {SPEC.digest()}) == 9


def test_crash_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    import pixelcam.data.synthetic as synthetic

    real = synthetic.render_image
    calls = []

    def flaky(rng, label, spec):
        calls.append(label)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real(rng, label, spec)

    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_dataset(tmp_path, SPEC)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary remains
    monkeypatch.setattr(synthetic, "render_image", real)
    root = ensure_dataset(tmp_path, SPEC)
    assert root.name == f"synthetic-{SPEC.digest()}" and (root / "MANIFEST.json").is_file()


def test_render_rejects_unknown_label():
    with pytest.raises(ConfigError, match="label"):
        render_image(np.random.default_rng(0), 2, SyntheticSpec())


# --------------------------------------------------------------------------------------------
# the CAMELYON16-like domain

CAM = dataclasses.replace(SPEC, width=64, height=48, domain="camelyon16", stain_matrix=None)


@pytest.fixture(scope="module")
def cam_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("c") / "d", CAM)


def _cam_records(root):
    fold = root / "folds" / "fold-0"
    return {s: read_split(fold, s) for s in ("train", "valcl", "valpx", "test")}


def test_glas_rendering_and_digest_are_unchanged():
    # Pinned before the camelyon16 domain existed: GlaS-like pixels, masks and cache names stay.
    spec = SyntheticSpec(width=64, height=48)
    h = hashlib.sha1()
    for label in (0, 1):
        image, mask = render_image(np.random.default_rng([4, label]), label, spec)
        h.update(image.tobytes())
        h.update(mask.tobytes())
    assert h.hexdigest() == "02f022af37d07d50de0fa94fa1de02548974bd20"
    assert SyntheticSpec().digest() == "eb107bbcbaf9" and spec.digest() == "2a57e826bca6"
    assert SPEC.digest() == "6ed47b9ebeb4" and "domain" not in SPEC.to_dict()
    assert SyntheticSpec(domain="glas") == SyntheticSpec()


def test_camelyon_spec_defaults_digest_and_errors():
    assert CAM.stain_matrix == (CAMELYON_H_OD, CAMELYON_E_OD) != (H_OD, E_OD)
    assert CAM.class_names == ("normal", "tumor") and CAM.encoding == {"normal": 0, "tumor": 1}
    assert SyntheticSpec(**CAM.to_dict()) == CAM and CAM.to_dict()["domain"] == "camelyon16"
    glas_twin = dataclasses.replace(CAM, domain="glas", stain_matrix=None)
    assert len({CAM.digest(), glas_twin.digest(),
                dataclasses.replace(CAM, stain_matrix=(H_OD, E_OD)).digest()}) == 3
    with pytest.raises(ConfigError, match=r"'camelyon17'.*\['camelyon16', 'glas'\]"):
        SyntheticSpec(domain="camelyon17")
    with pytest.raises(ConfigError, match="tumor"):
        render_image(np.random.default_rng(0), 2, CAM)


def test_camelyon_masks_normal_empty_tumour_in_range(cam_data):
    records = _cam_records(cam_data)
    assert [len(records[s]) for s in ("train", "valcl", "valpx", "test")] == [8, 6, 4, 4]
    seen = set()
    for recs in records.values():
        for r in recs:
            mask = np.asarray(Image.open(cam_data / r.mask_path))
            image = np.asarray(Image.open(cam_data / r.image_id))
            assert mask.shape == (48, 64) and image.shape == (48, 64, 3)
            assert set(np.unique(mask).tolist()) <= {0, 255}
            fraction = (mask > 0).mean()
            if r.label == 0:
                assert fraction == 0.0, r.image_id  # normal: no foreground at all
            else:  # drawn coverage is 12-55% of the patch, exactly
                assert 0.10 <= fraction <= 0.60, (r.image_id, fraction)
            seen.add(r.label)
    assert seen == {0, 1}


def test_camelyon_tumour_mask_is_the_rendered_region():
    # Tumour nests are eosinophilic with pale nuclei, the node is packed with dark lymphocytes:
    # on every image the masked region has more eosin (green/red OD ratio ~1.8 against ~1.5
    # measured) and far fewer very dark pixels (~3% against ~12%) than the rest.
    spec = dataclasses.replace(CAM, width=96, height=80)
    fractions = []
    for i in range(12):
        image, mask = render_image(np.random.default_rng([2, i]), 1, spec)
        od = -np.log(np.clip(image.astype(float) / 255, 1e-3, 1))
        inside, outside = od[mask], od[~mask]
        ratio_in = inside[:, 1].mean() / inside[:, 0].mean()
        ratio_out = outside[:, 1].mean() / outside[:, 0].mean()
        assert ratio_in > ratio_out + 0.2, (i, ratio_in, ratio_out)
        dark_in, dark_out = (inside.sum(1) > 2).mean(), (outside.sum(1) > 2).mean()
        assert dark_out > 2.5 * dark_in, (i, dark_in, dark_out)
        fractions.append(mask.mean())
    assert min(fractions) >= 0.12 and max(fractions) <= 0.55 and np.ptp(fractions) > 0.15


def test_camelyon_encoding_and_manifest(cam_data):
    assert (cam_data / "encoding.yaml").read_text(encoding="utf-8") == "normal: 0\ntumor: 1\n"
    assert find_encoding(cam_data / "folds" / "fold-0") == {"normal": 0, "tumor": 1}
    manifest = json.loads((cam_data / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["encoding"] == {"normal": 0, "tumor": 1}
    assert manifest["spec"]["domain"] == "camelyon16" and manifest["digest"] == CAM.digest()


def test_camelyon_same_spec_same_bytes(cam_data, tmp_path):
    assert _digest_tree(cam_data) == _digest_tree(write_dataset(tmp_path / "d", CAM))
    other = write_dataset(tmp_path / "e", dataclasses.replace(CAM, seed=1))
    assert _digest_tree(cam_data) != _digest_tree(other)
    root = ensure_dataset(tmp_path / "cache", CAM)
    assert root.name == f"synthetic-{CAM.digest()}" and _digest_tree(root) == _digest_tree(cam_data)


def _mean_rgb(spec, n=4):
    out = []
    for label in (0, 1):
        for i in range(n):
            image, _ = render_image(np.random.default_rng([9, label, i]), label, spec)
            out.append(image.reshape(-1, 3).astype(float).mean(axis=0))
    return np.array(out)


def test_domains_differ_in_colour():
    glas = _mean_rgb(SyntheticSpec(width=96, height=80))
    cam = _mean_rgb(dataclasses.replace(CAM, width=96, height=80))
    cam_glas_stains = _mean_rgb(dataclasses.replace(CAM, width=96, height=80,
                                                    stain_matrix=(H_OD, E_OD)))
    # GlaS-like is bluish (blue above red: B-R 8..27 measured), CAMELYON16-like is purple-pink
    # (B-R -5..2): every image of one domain is separated from every image of the other.
    b_minus_r = {k: v[:, 2] - v[:, 0] for k, v in (("glas", glas), ("cam", cam))}
    assert b_minus_r["cam"].max() < b_minus_r["glas"].min() - 4
    # mean colours: blue differs by ~27 grey levels (measured 26.8), L1 over RGB by ~44
    diff = np.abs(glas.mean(axis=0) - cam.mean(axis=0))
    assert diff[2] > 18 and diff.sum() > 30
    # the stain pair alone (same tissue) moves the blue channel by ~23 grey levels
    stain_only = np.abs(cam.mean(axis=0) - cam_glas_stains.mean(axis=0))
    assert stain_only[2] > 15


def test_camelyon_read_back_by_the_loader(cam_data):
    fold = cam_data / "folds" / "fold-0"
    ds = WSOLDataset(cam_data, fold, "test", train=False, image_size=32, resize_size=40)
    assert ds.labels().tolist() == [0, 1, 0, 1]
    for k in range(len(ds)):
        item = ds[k]
        assert item["image"].shape == (3, 32, 32)
        assert bool(item["mask"].any()) == (int(item["label"]) == 1)
    train = WSOLDataset(cam_data, fold, "train", train=True, image_size=32, resize_size=40)
    assert train[0]["image"].shape == (3, 32, 32) and len(train) == 8


def test_camelyon_rendering_is_fast():
    spec = dataclasses.replace(CAM, width=192, height=160)
    best = float("inf")
    for i in range(3):
        start = time.perf_counter()
        render_image(np.random.default_rng(i), 1, spec)
        best = min(best, time.perf_counter() - start)
    assert best < 0.05  # ~10 ms measured on one core
