"""Fuzzing the inputs a user gives: broken images and masks, random params values.

The kit either handles an input or raises its own error type (PixelCamError) with a message;
never a bare traceback from deep inside a library.
"""

import random
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelcam.builders import synthetic_spec
from pixelcam.config import Config, load_config, valid_keys
from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.synthetic import SyntheticSpec, write_dataset
from pixelcam.errors import ConfigError, PixelCamError

SPEC = SyntheticSpec(n_train=2, n_valcl=2, n_test=2, n_valpx_per_class=1, width=40, height=32)


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path, format="PNG")


def _corrupt(path, kind):
    data = path.read_bytes()
    rgb = np.asarray(Image.open(path).convert("RGB"))
    gray = rgb[..., 0]
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(300))
    elif kind == "rgba":
        _png(path, np.dstack([rgb, np.full_like(gray, 200)]))
    elif kind == "grayscale":
        _png(path, gray)
    elif kind == "16-bit":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path, format="PNG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path, format="PNG")
    elif kind == "bmp truncated":
        Image.fromarray(rgb).save(path, format="BMP")
        path.write_bytes(path.read_bytes()[:-500])
    elif kind == "wrong size":
        _png(path, np.zeros((7, 9, 3), np.uint8))


KINDS = ["truncated", "empty", "random bytes", "rgba", "grayscale", "16-bit", "palette",
         "bmp truncated", "wrong size"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("fuzz") / "d", SPEC)


@pytest.mark.parametrize("target", ["image", "mask"])
@pytest.mark.parametrize("kind", KINDS)
def test_broken_images_and_masks(clean, tmp_path, kind, target):
    root = tmp_path / "d"
    shutil.copytree(clean, root)
    fold = root / "folds" / "fold-0"
    rec = WSOLDataset(root, fold, "test", train=False).records[0]
    _corrupt(root / (rec.image_id if target == "image" else rec.mask_path), kind)
    for train in (False, True):
        try:
            ds = WSOLDataset(root, fold, "test", train=train, image_size=32, resize_size=36)
            item = ds[0]
        except PixelCamError as err:
            assert str(err) and "\n" not in str(err)
            assert rec.image_id.split("/")[-1] in str(err) or rec.mask_path.split("/")[-1] in str(
                err)
            continue
        # handled: a well-formed item
        assert item["image"].shape == (3, 32, 32)
        assert item["image"].isfinite().all()
        if "mask" in item:
            assert set(item["mask"].unique().tolist()) <= {0, 1}


POOL = [0, 1, -1, 3, 10**9, -(10**9), 0.5, -0.5, 1e-3, float("nan"), float("inf"), "", "abc",
        "1e-3", "true", "false", "3", True, False, None, [1, 2], {"a": 1}, "layercam", "resnet18",
        "b-loc", "official", "paper", "linear", "sat", "pb", "th", "positive", 224, 256, 128]


def test_random_params_values_give_configs_or_config_errors():
    rng = random.Random(1234)
    keys = valid_keys()
    accepted = 0
    for _ in range(2000):
        overrides = {rng.choice(keys): rng.choice(POOL) for _ in range(rng.randint(1, 3))}
        try:
            cfg = load_config(None, overrides)
        except ConfigError as err:
            assert "\n" not in str(err)
            continue
        assert isinstance(cfg, Config)
        synthetic_spec(cfg)  # what the data layer builds from a config must accept it too
        accepted += 1
    assert accepted > 50  # the fuzzer also reaches valid configs


def test_random_params_files(tmp_path):
    rng = random.Random(7)
    for i in range(200):
        path = tmp_path / f"p{i}.yaml"
        if i % 2:
            path.write_bytes(rng.randbytes(rng.randint(0, 200)))
        else:
            path.write_text(yaml.safe_dump({rng.choice(valid_keys() + ["bogus"]): rng.choice(
                POOL[:-1])}))
        try:
            load_config(path)
        except ConfigError as err:
            assert "\n" not in str(err)
