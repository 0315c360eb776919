"""The embedded synthetic H&E dataset: deterministic, distinct classes, masks, fold files."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from pixelcam.data.folds import read_split
from pixelcam.data.synthetic import SyntheticSpec, ensure_dataset, render_image, write_dataset
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
