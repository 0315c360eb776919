"""torch Dataset over one split of a fold: the same loader for real and synthetic data.

Train mode follows the official pipeline (official-code-notes.md 4.3, 3.2): resize to a square,
random crop, horizontal and vertical flips, colour jitter on the image only; a stored CAM goes
through the same geometry (same crop offsets, same flips) so seeds land on the right pixels.
Eval mode resizes to the evaluation size with no augmentation and reads the binary mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from pixelcam.data.folds import Record, read_split
from pixelcam.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_files(data_root: str | Path, records: list[Record]) -> None:
    """Every image and mask a fold names must exist: fail before training, not mid-epoch."""
    root = Path(data_root)
    for rec in records:
        for kind, rel in (("image", rec.image_id), ("mask", rec.mask_path)):
            if rel and not (root / rel).is_file():
                raise DataError(
                    f"the fold names {kind} {rel!r} but {root / rel} does not exist: fix the "
                    f"fold files or point data_root at the folder the ids are relative to"
                )


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode {path} ({type(exc).__name__}: {exc}): replace the file "
                        "or drop it from the fold") from None


class WSOLDataset(Dataset):
    """Items are dicts: image, label, index; plus mask (eval) or cam (train, when CAMs given)."""

    def __init__(self, data_root: str | Path, fold_dir: str | Path, split: str, *, train: bool,
                 image_size: int = 224, resize_size: int = 256,
                 cams: Mapping[str, torch.Tensor] | None = None, color_jitter: bool = True,
                 encoding: dict[str, int] | None = None) -> None:
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise DataError(
                f"data root {self.root} does not exist: set data_root in the params file to the "
                "folder that image ids are relative to"
            )
        self.records = read_split(fold_dir, split, encoding)
        check_files(self.root, self.records)
        self.split = split
        self.train = train
        self.image_size = image_size
        self.resize_size = resize_size
        self.cams = cams
        if cams is not None:
            missing = [r.image_id for r in self.records if r.image_id not in cams]
            if missing:
                raise DataError(
                    f"no stored CAM for image {missing[0]!r} ({len(missing)} missing): store the "
                    "CAMs of this split again (delete the cams-*.pt file of the baseline run)"
                )
        self.jitter = ColorJitter(0.5, 0.5, 0.5, 0.05) if color_jitter else None
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> torch.Tensor:
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self._mean) / self._std

    def _read_mask(self, rec: Record, image_size: tuple[int, int]) -> torch.Tensor:
        s = self.image_size
        if not rec.mask_path:
            return torch.zeros(s, s, dtype=torch.uint8)
        path = self.root / rec.mask_path
        mask = _open(path, "L")
        if mask.size != image_size:
            raise DataError(
                f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image "
                f"{self.root / rec.image_id} is {image_size[0]}x{image_size[1]}: the mask must "
                "have the image's size"
            )
        mask = mask.resize((s, s), Image.NEAREST)
        return torch.from_numpy((np.asarray(mask) > 0).astype(np.uint8))

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = _open(self.root / rec.image_id, "RGB")
        label = torch.tensor(rec.label, dtype=torch.long)
        if not self.train:
            mask = self._read_mask(rec, image.size)
            resized = image.resize((self.image_size, self.image_size), Image.BILINEAR)
            x = self._normalise(TF.to_tensor(resized))
            return {"image": x, "label": label, "mask": mask, "index": index}
        return self._train_item(rec, image, label, index)

    def _train_item(self, rec: Record, image: Image.Image, label: torch.Tensor,
                    index: int) -> dict[str, Any]:
        r, s = self.resize_size, self.image_size
        x = TF.to_tensor(image.resize((r, r), Image.BILINEAR))
        cam = None
        if self.cams is not None:
            low = self.cams[rec.image_id].float()[None, None]
            cam = F.interpolate(low, size=(r, r), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        # one crop offset and one pair of coin flips for the image and its CAM
        i = int(torch.randint(0, r - s + 1, (1,)))
        j = int(torch.randint(0, r - s + 1, (1,)))
        flips = torch.rand(2) < 0.5
        stacked = x if cam is None else torch.cat([x, cam])
        stacked = stacked[:, i:i + s, j:j + s]
        if flips[0]:
            stacked = stacked.flip(-1)
        if flips[1]:
            stacked = stacked.flip(-2)
        x = stacked[:3]
        if self.jitter is not None:
            x = self.jitter(x)
        item = {"image": self._normalise(x), "label": label, "index": index}
        if cam is not None:
            item["cam"] = stacked[3].contiguous()
        return item
