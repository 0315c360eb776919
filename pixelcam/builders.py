"""A config's data and models: the one place that turns params into images and networks.

Data: the data root and fold of a config (the embedded synthetic set generated into the cache on
first use) and its splits as datasets. Models: a run kind's network, freshly and reproducibly
initialised, or built around a checkpoint's tensors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from pixelcam.config import Config
from pixelcam.data.dataset import WSOLDataset
from pixelcam.data.synthetic import SyntheticSpec, ensure_dataset
from pixelcam.datasets import DATASETS
from pixelcam.errors import DataError
from pixelcam.methods import METHODS
from pixelcam.models.negev import NEGEV
from pixelcam.models.unet import UNet


def synthetic_spec(cfg: Config) -> SyntheticSpec:
    return SyntheticSpec(
        n_train=cfg.synthetic_n_train, n_valcl=cfg.synthetic_n_valcl, n_test=cfg.synthetic_n_test,
        n_valpx_per_class=cfg.synthetic_n_valpx_per_class, width=cfg.synthetic_width,
        height=cfg.synthetic_height, seed=cfg.synthetic_seed,
        domain=DATASETS[cfg.dataset].synthetic_domain,
    )


DATA_KEYS = ("dataset", "data_root", "fold_dir", "synthetic_n_train", "synthetic_n_valcl",
             "synthetic_n_test", "synthetic_n_valpx_per_class", "synthetic_width",
             "synthetic_height", "synthetic_seed")


def data_key(cfg: Config, split: str = "") -> str:
    """Names what a model is evaluated on: the data fields, the input size and the split."""
    fields = {k: getattr(cfg, k) for k in DATA_KEYS}
    blob = json.dumps({**fields, "image_size": cfg.image_size, "split": split}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def with_data_of(cfg: Config, data: Config) -> Config:
    """`cfg` (a trained model's params) reading the images of `data` (another dataset)."""
    return cfg.replace(**{k: getattr(data, k) for k in DATA_KEYS})


def data_paths(cfg: Config) -> tuple[Path, Path]:
    """(data_root, fold_dir): the embedded synthetic default is generated once into the cache."""
    if cfg.data_root == "synthetic":
        root = ensure_dataset(Path(cfg.cache_dir) / "data", synthetic_spec(cfg))
    else:
        root = Path(cfg.data_root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data root {root} does not exist: set data_root in the params file to the folder "
                "that image ids are relative to (or 'synthetic' for the embedded dataset)"
            )
    fold = Path(cfg.fold_dir).expanduser() if cfg.fold_dir else root / "folds" / "fold-0"
    if not fold.is_dir():
        raise DataError(
            f"fold directory {fold} does not exist: set fold_dir to a folder holding "
            "train/ valcl/ valpx/ test/ split files"
        )
    return root, fold


def dataset(cfg: Config, split: str, *, train: bool = False,
            cams: dict[str, torch.Tensor] | None = None, train_masks: bool = False
            ) -> WSOLDataset:
    root, fold = data_paths(cfg)
    return WSOLDataset(root, fold, split, train=train, image_size=cfg.image_size,
                       resize_size=cfg.resize_size, cams=cams, color_jitter=cfg.color_jitter,
                       train_masks=train_masks, crop_size=cfg.train_crop)



def new_model(cfg: Config, pixel: bool) -> torch.nn.Module:
    """A freshly initialised model of cfg's method; the init is seeded so the same params give
    the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return METHODS[cfg.method].build(cfg, cfg.pixel_head if pixel else None)


def new_negev(cfg: Config, classifier: torch.nn.Module) -> NEGEV:
    """NEGEV on `classifier`; its decoder's init is seeded, not left to whatever the process
    drew before (a baseline trained in the same process, or read from the cache)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return NEGEV(classifier, freeze=True)


def model_for(kind: str, cfg: Config) -> torch.nn.Module:
    """The architecture of a run kind, freshly (and reproducibly) initialised."""
    if kind in ("baseline", "pixelcam"):
        return new_model(cfg, pixel=kind == "pixelcam")
    if kind == "negev":  # the decoder's frozen classifier is the baseline architecture
        return new_negev(cfg, new_model(cfg, pixel=False))
    if kind == "unet":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return UNet(cfg.backbone, pretrained=cfg.pretrained)
    raise ValueError(f"unknown run kind {kind!r}")


def model_holding(kind: str, cfg: Config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The architecture of a run kind holding `state` (a checkpoint), on the CPU.

    It is built on the meta device and takes the checkpoint's tensors as they are, so no random
    init runs for weights that are replaced at once (timm's VGG16 spends 2 s initialising a
    4096-wide classifier the WSOL net drops), and no ImageNet file is read for them. Should the
    meta build not hold exactly the checkpoint's tensors (a buffer kept out of the state dict),
    the model is built and loaded the ordinary way, which also names any mismatch.
    """
    with torch.device("meta"):
        model = model_for(kind, cfg.replace(pretrained="false"))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    if set(tensors) == set(state) and all(t.shape == state[k].shape for k, t in tensors.items()):
        model.load_state_dict(state, assign=True)
        return model
    model = model_for(kind, cfg)
    model.load_state_dict(state)
    return model

