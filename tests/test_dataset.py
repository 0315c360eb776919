"""The loader: eval and train items, CAM alignment with crops and flips, bad-input errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelcam.data.dataset import IMAGENET_MEAN, IMAGENET_STD, WSOLDataset
from pixelcam.data.folds import Record, write_split
from pixelcam.data.synthetic import SyntheticSpec, write_dataset
from pixelcam.errors import ConfigError, DataError

GLAS = Path(__file__).resolve().parent / "data" / "glas-sample"  # 10 real GlaS images, x0.4
PREFIX = "Warwick_QU_Dataset_(Released_2016_07_08)"
SPEC = SyntheticSpec(n_train=4, n_valcl=2, n_test=2, n_valpx_per_class=1, width=64, height=48)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, SPEC)
    return root


def _ds(root, split="test", **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("resize_size", 40)
    kw.setdefault("train", False)
    return WSOLDataset(root, root / "folds" / "fold-0", split, **kw)


def test_eval_items(synth):
    ds = _ds(synth)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.uint8
    assert set(item["mask"].unique().tolist()) <= {0, 1} and item["mask"].any()
    assert item["index"] == 0 and item["label"].dtype == torch.long
    # undoing the normalisation gives back the bilinearly resized image
    rec = ds.records[0]
    ref = np.asarray(Image.open(synth / rec.image_id).convert("RGB").resize((32, 32),
                                                                           Image.BILINEAR))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    back = ((item["image"] * std + mean) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(back - ref).max() <= 1
    assert ds.labels().tolist() == [r.label for r in ds.records]


def test_train_items_and_cam_alignment(synth):
    # the CAM is the image's own mask at low resolution: after the joint crop and flips it must
    # still sit on the mask of the same crop (the image carries the mask in its colour channels)
    plain = _ds(synth, "train")
    cams = {}
    for i, rec in enumerate(plain.records):
        m = plain[i]["mask"].float()[None, None]
        cams[rec.image_id] = torch.nn.functional.interpolate(m, size=(8, 8), mode="area")[0, 0]
    ds = _ds(synth, "train", train=True, cams=cams, color_jitter=False)
    torch.manual_seed(0)
    flipped = 0
    for i in range(len(ds)):
        for _ in range(4):
            item = ds[i]
            assert set(item) == {"image", "label", "index", "cam"}
            assert item["image"].shape == (3, 32, 32) and item["cam"].shape == (32, 32)
            # reconstruct the expected CAM from the mask with the recorded geometry by search
            full = torch.nn.functional.interpolate(cams[ds.records[i].image_id][None, None],
                                                   size=(40, 40), mode="bilinear",
                                                   align_corners=False, antialias=True)[0, 0]
            best = min(
                (float((cand - item["cam"]).abs().max()), fh, fv)
                for a in range(9) for b in range(9)
                for fh in (False, True) for fv in (False, True)
                for cand in [_flip(full[a:a + 32, b:b + 32], fh, fv)]
            )
            assert best[0] < 1e-6
            flipped += best[1] or best[2]
    assert flipped > 0  # flips happen


def _flip(t, fh, fv):
    if fh:
        t = t.flip(-1)
    if fv:
        t = t.flip(-2)
    return t


def test_image_and_cam_share_the_geometry(synth):
    # a CAM equal to the image's red channel must follow the image through crop and flips
    plain = _ds(synth, "train", resize_size=40)
    rec = plain.records[0]
    red = torch.from_numpy(np.asarray(Image.open(synth / rec.image_id).convert("RGB").resize(
        (40, 40), Image.BILINEAR))[..., 0].astype(np.float32) / 255)
    ds = _ds(synth, "train", train=True, cams={r.image_id: red for r in plain.records},
             color_jitter=False)
    torch.manual_seed(3)
    for _ in range(8):
        item = ds[0]
        image_red = item["image"][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        # the CAM went through an extra antialiased resize 40 -> 40 (identity) only
        assert torch.allclose(image_red, item["cam"], atol=1e-5)


def test_glas_masks_are_binary(tmp_path):
    records = [Record(f"{PREFIX}/train_{i}.bmp", 0, None, None, f"{PREFIX}/train_{i}_anno.bmp")
               for i in (1, 10, 11)]
    write_split(tmp_path / "fold", "test", records)
    (tmp_path / "encoding.yaml").write_text("{benign: 0, malignant: 1}\n")
    ds = WSOLDataset(GLAS, tmp_path / "fold", "test", train=False, image_size=64,
                     encoding={"benign": 0, "malignant": 1})
    for i in range(3):
        mask = ds[i]["mask"]
        assert set(mask.unique().tolist()) == {0, 1}
        assert 0.2 < float(mask.float().mean()) < 0.9


def test_missing_data_root(synth, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        WSOLDataset(tmp_path / "nope", synth / "folds" / "fold-0", "test", train=False)


def test_fold_naming_a_missing_image(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    rec = _ds(root).records[1]
    (root / rec.image_id).unlink()
    with pytest.raises(DataError, match=rec.image_id):
        _ds(root)


def test_mask_size_mismatch(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    rec = _ds(root).records[0]
    Image.new("L", (10, 10)).save(root / rec.mask_path)
    with pytest.raises(DataError, match="10x10"):
        _ds(root)[0]


def test_undecodable_image(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    rec = _ds(root).records[0]
    (root / rec.image_id).write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        _ds(root)[0]


def test_missing_cam(synth):
    with pytest.raises(DataError, match="no stored CAM"):
        _ds(synth, "train", train=True, cams={})


def test_train_masks_follow_the_image_geometry(synth):
    # the U-Net reads masks while training: they must get the crop and flips of their image
    plain = _ds(synth, "train", resize_size=40, image_size=40)
    cams = {r.image_id: plain[i]["mask"].float() for i, r in enumerate(plain.records)}
    ds = _ds(synth, "train", train=True, cams=cams, train_masks=True, color_jitter=False)
    torch.manual_seed(5)
    for i in range(len(ds)):
        item = ds[i]
        assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (32, 32)
        assert torch.equal(item["mask"].float(), item["cam"])


def test_flips_with_a_fixed_seed(synth):
    # no crop freedom (resize == crop): a train item is one of the 4 flips of the eval image
    plain = _ds(synth, "train", image_size=32)
    ds = _ds(synth, "train", train=True, image_size=32, resize_size=32, color_jitter=False)
    ref = plain[1]["image"]
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out = ds[1]["image"]
        match = [(fh, fv) for fh in (False, True) for fv in (False, True)
                 if torch.allclose(out, _flip(ref, fh, fv), atol=1e-6)]
        assert len(match) >= 1
        seen.add(match[0])
        torch.manual_seed(seed)
        assert torch.equal(ds[1]["image"], out)  # the global RNG alone decides the geometry
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_jitter_changes_the_image_only(synth):
    ones = {r.image_id: torch.ones(6, 6) for r in _ds(synth, "train").records}
    ds = _ds(synth, "train", train=True, image_size=40, cams=ones)
    off = _ds(synth, "train", train=True, image_size=40, cams=ones, color_jitter=False)
    torch.manual_seed(1)
    a = ds[0]
    torch.manual_seed(1)
    b = off[0]
    assert not torch.allclose(a["image"], b["image"], atol=1e-3)
    assert torch.equal(a["cam"], b["cam"]) and torch.allclose(a["cam"], torch.ones(40, 40))


def test_train_mode_never_needs_masks(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    rec = _ds(root, "train").records[0]
    (root / rec.mask_path).unlink()
    item = _ds(root, "train", train=True)[0]
    assert set(item) == {"image", "label", "index"}
    with pytest.raises(DataError, match="mask .* does not exist"):
        _ds(root, "train")
    with pytest.raises(DataError, match="mask .* does not exist"):
        _ds(root, "train", train=True, train_masks=True)


def test_record_without_mask_gives_background(synth, tmp_path):
    recs = [Record(r.image_id, r.label, r.width, r.height, None) for r in _ds(synth).records]
    write_split(tmp_path / "fold", "test", recs)
    ds = WSOLDataset(synth, tmp_path / "fold", "test", train=False, image_size=16,
                     encoding={"benign": 0, "malignant": 1})
    assert torch.equal(ds[0]["mask"], torch.zeros(16, 16, dtype=torch.uint8))


def test_cam_shapes(synth):
    recs = _ds(synth, "train").records
    cams = {r.image_id: torch.rand(1, 7, 9) for r in recs}  # (1, h, w) is accepted
    assert _ds(synth, "train", train=True, cams=cams)[0]["cam"].shape == (32, 32)
    assert _ds(synth, "train", cams=cams)[0]["cam"].shape == (32, 32)  # eval: plain resize
    cams[recs[0].image_id] = torch.rand(2, 7, 9)
    with pytest.raises(DataError, match=r"shape \(2, 7, 9\)"):
        _ds(synth, "train", train=True, cams=cams)[0]


def test_sizes_must_allow_the_crop(synth):
    with pytest.raises(ConfigError, match="resize_size"):
        _ds(synth, image_size=64, resize_size=32)


def test_train_crop_sets_the_train_crop_only(synth):
    cams = {r.image_id: torch.rand(8, 8) for r in _ds(synth, "train").records}
    ds = _ds(synth, "train", train=True, crop_size=24, cams=cams, train_masks=True)
    item = ds[0]
    assert item["image"].shape == (3, 24, 24)
    assert item["cam"].shape == item["mask"].shape == (24, 24)
    # evaluation keeps image_size whatever the train crop
    assert _ds(synth, "test", crop_size=24)[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="train_crop=48"):
        _ds(synth, "train", train=True, crop_size=48)


@pytest.mark.parametrize("split,train", [("test", False), ("train", True)])
def test_preloaded_items_are_the_uncached_items_bit_for_bit(synth, split, train):
    """The in-memory cache keeps only the decoded, resized pixels: the random crop, flips and
    jitter are still drawn per item, from the same RNG, so the items are identical."""
    cams = None
    if train:
        cams = {r.image_id: torch.rand(6, 6, generator=torch.Generator().manual_seed(i))
                for i, r in enumerate(_ds(synth, split).records)}
    plain = _ds(synth, split, train=train, cams=cams, train_masks=train)
    cached = _ds(synth, split, train=train, cams=cams, train_masks=train)
    cached.preload(threads=2)
    assert cached.preloaded and not plain.preloaded
    assert cached.cache_bytes() == len(cached) * cached._side ** 2 * 4
    for i in range(len(plain)):
        torch.manual_seed(i)
        a = plain[i]
        torch.manual_seed(i)
        b = cached[i]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), (i, k)
    # reading items never alters the cache: its pixels are still those decoded afresh
    for (pixels, mask), i in zip(cached._decoded, range(len(cached))):
        fresh_pixels, fresh_mask = plain._decode(i)
        assert torch.equal(pixels, fresh_pixels) and torch.equal(mask, fresh_mask)


def test_preload_within_keeps_to_its_budget(synth):
    from pixelcam.data.dataset import preload_within

    small, large = _ds(synth, "valpx"), _ds(synth, "train", train=True)
    budget_mb = (small.cache_bytes() + 1) / 2**20
    assert preload_within([small, large], budget_mb) == ["valpx"]
    assert small.preloaded and not large.preloaded
    assert preload_within([_ds(synth, "test")], 0) == []
