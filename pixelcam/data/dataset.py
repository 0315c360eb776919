"""Torch Dataset over one fold split, with the WSOL protocol's transforms.

Eval (valcl, valpx, test, and CAM storage): resize to (S, S) without keeping the aspect ratio, as
the protocol does, plus the binary ground-truth mask resized nearest. Train: resize to (R, R),
random crop S, random flips, colour jitter; a stored low-resolution CAM goes through the *same*
resize, crop and flips, so pseudo-labels drawn from it stay aligned with the augmented image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from pixelcam.data.folds import Record, read_split
from pixelcam.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_files(data_root: str | Path, records: list[Record], *, masks: bool = True) -> None:
    """Fail at construction, not after an epoch: every image (and mask) must exist."""
    root = Path(data_root)
    for r in records:
        if not os.path.isfile(root / r.image_id):
            raise DataError(
                f"image {root / r.image_id} (id {r.image_id!r}) does not exist: check data_root "
                f"({root}) or remove the image from the fold files"
            )
        if masks and r.mask_path and not os.path.isfile(root / r.mask_path):
            raise DataError(
                f"mask {root / r.mask_path} of image {r.image_id!r} does not exist: check "
                f"data_root ({root}) or fix localization.txt"
            )


def _open(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot decode {what} {path} ({type(exc).__name__}): replace it with a valid image "
            f"file or drop it from the fold"
        ) from None
    return image


def _mask_array(image: Image.Image) -> np.ndarray:
    """Binary gland mask: GlaS stores instance ids, so any non-zero value is foreground."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1) if image.mode in ("RGB", "RGBA") else arr[..., 0]
    return arr > 0


class WSOLDataset(torch.utils.data.Dataset):
    """One split of a fold; items are dicts so CAMs and masks travel with their images."""

    def __init__(
        self,
        data_root: str | Path,
        fold_dir: str | Path,
        split: str,
        *,
        train: bool,
        image_size: int = 224,
        resize_size: int = 256,
        cams: Mapping[str, torch.Tensor] | None = None,
        color_jitter: bool = True,
        encoding: dict[str, int] | None = None,
        train_masks: bool = False,
        crop_size: int = 0,
    ) -> None:
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise DataError(
                f"data root {self.data_root} does not exist: set data_root in the params file to "
                f"the folder that image ids are relative to"
            )
        if image_size < 1 or resize_size < image_size:
            raise ConfigError(
                f"image_size={image_size}, resize_size={resize_size}: need 1 <= image_size <= "
                f"resize_size (the train crop is taken from the resized image)"
            )
        self.fold_dir = Path(fold_dir)
        self.split = split
        self.train = train
        self.train_masks = train_masks
        self.image_size = image_size
        self.resize_size = resize_size
        # the train crop; 0 = image_size (the protocol). A smaller crop shows the classifier a
        # part of the tissue, so its evidence must lie in that part
        self.crop_size = crop_size or image_size
        if not 1 <= self.crop_size <= resize_size:
            raise ConfigError(f"train_crop={crop_size}: need 1 <= train_crop <= resize_size "
                              f"({resize_size}), or 0 for image_size")
        self.records: list[Record] = read_split(fold_dir, split, encoding)
        # WSOL training never reads masks, so a train split need not ship them; only the fully
        # supervised upper bound (U-Net) asks for them with train_masks.
        check_files(self.data_root, self.records, masks=not train or train_masks)
        self.cams = cams
        if cams is not None:
            missing = next((r.image_id for r in self.records if r.image_id not in cams), None)
            if missing is not None:
                raise DataError(
                    f"no stored CAM for image {missing!r} of split {split}: store CAMs for "
                    f"this split again (they must cover every image)"
                )
        self.jitter = (
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.05)
            if color_jitter
            else None
        )
        self._decoded: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> torch.Tensor:
        """(N,) long labels in record order, for class weights and balanced sampling."""
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    # ---------------------------------------------------------------------------------------

    def _read_image(self, record: Record) -> Image.Image:
        path = self.data_root / record.image_id
        return _open(path, "image").convert("RGB")

    def _to_input(self, image_u8: torch.Tensor) -> torch.Tensor:
        return (image_u8.float() / 255.0 - self._mean) / self._std

    def _cam(self, record: Record) -> torch.Tensor:
        assert self.cams is not None
        if record.image_id not in self.cams:
            raise DataError(
                f"no stored CAM for image {record.image_id!r} of split {self.split}: store CAMs "
                f"for this split again (they must cover every image)"
            )
        cam = torch.as_tensor(self.cams[record.image_id]).detach().float().cpu()
        if cam.ndim == 3 and cam.shape[0] == 1:
            cam = cam[0]
        if cam.ndim != 2 or cam.numel() == 0:
            raise DataError(
                f"stored CAM of image {record.image_id!r} has shape {tuple(cam.shape)}: "
                f"expected a 2-D (h, w) map; store CAMs again"
            )
        return torch.nan_to_num(cam)

    def _resize_cam(self, cam: torch.Tensor, size: int) -> torch.Tensor:
        out = F.interpolate(
            cam[None, None], size=(size, size), mode="bilinear", align_corners=False,
            antialias=True,
        )
        return out[0, 0]

    # --- decoding, optionally once (see preload) -------------------------------------------

    @property
    def _side(self) -> int:
        """The side an image is resized to before anything random happens to it."""
        return self.resize_size if self.train else self.image_size

    @property
    def _with_masks(self) -> bool:
        return not self.train or self.train_masks

    def cache_bytes(self) -> int:
        """Memory that `preload` takes: uint8 RGB (+ mask) at the working size, per image."""
        side = self._side
        return len(self) * side * side * (4 if self._with_masks else 3)

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(3, side, side) uint8 image and its (side, side) mask (None when not needed)."""
        record = self.records[index]
        image = self._read_image(record)
        side = self._side
        pixels = v2.functional.pil_to_tensor(image.resize((side, side), Image.BILINEAR))
        mask = self._read_mask(record, image.size, side) if self._with_masks else None
        return pixels, mask

    def preload(self, threads: int = 0) -> None:
        """Decode and resize every image once and keep it in memory.

        A training reads each image once per epoch, for training and again for validation;
        decoding a 775x522 PNG costs more than the augmentation that follows. Only the
        deterministic part is kept: crops, flips and jitter are still drawn per sample, so the
        items (and a training's numbers) are those of an uncached dataset, bit for bit.
        Decoding releases the GIL, so `threads` (0 = one per core, at most 8) overlap it.
        """
        if self._decoded is not None:
            return
        workers = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            self._decoded = list(pool.map(self._decode, range(len(self))))

    @property
    def preloaded(self) -> bool:
        return self._decoded is not None

    def _pixels(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._decoded[index] if self._decoded is not None else self._decode(index)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        pixels, mask = self._pixels(index)
        label = torch.tensor(record.label, dtype=torch.long)
        if self.train:
            return self._train_item(record, pixels, mask, label, index)
        item = {"image": self._to_input(pixels), "label": label, "mask": mask, "index": index}
        if self.cams is not None:
            item["cam"] = self._resize_cam(self._cam(record), self.image_size)
        return item

    def _read_mask(self, record: Record, image_size: tuple[int, int], s: int) -> torch.Tensor:
        """(s, s) uint8 {0, 1}; an image without a mask (e.g. a normal patch) is all background."""
        if not record.mask_path:
            return torch.zeros((s, s), dtype=torch.uint8)
        path = self.data_root / record.mask_path
        mask = _open(path, "mask")
        if mask.size != image_size:
            raise DataError(
                f"mask {path} is {mask.size[0]}x{mask.size[1]} but image "
                f"{self.data_root / record.image_id} is {image_size[0]}x{image_size[1]}: "
                f"masks must have their image's size"
            )
        binary = Image.fromarray(_mask_array(mask).astype(np.uint8))
        return torch.from_numpy(np.asarray(binary.resize((s, s), Image.NEAREST)).copy())

    def _train_item(
        self, record: Record, img: torch.Tensor, mask: torch.Tensor | None, label: torch.Tensor,
        index: int,
    ) -> dict:
        r, s = self.resize_size, self.crop_size
        cam = self._resize_cam(self._cam(record), r) if self.cams is not None else None
        # One draw of the geometry, applied to image and CAM alike (torch's global RNG, so
        # DataLoader worker seeding makes it reproducible).
        top = int(torch.randint(0, r - s + 1, (1,)).item())
        left = int(torch.randint(0, r - s + 1, (1,)).item())
        hflip = bool(torch.rand(1).item() < 0.5)
        vflip = bool(torch.rand(1).item() < 0.5)
        img = img[:, top : top + s, left : left + s]
        if cam is not None:
            cam = cam[top : top + s, left : left + s]
        if mask is not None:
            mask = mask[top : top + s, left : left + s]
        dims = [d for d, flip in ((-1, hflip), (-2, vflip)) if flip]
        if dims:
            img = img.flip(dims)
            cam = cam.flip(dims) if cam is not None else None
            mask = mask.flip(dims) if mask is not None else None
        if self.jitter is not None:
            img = self.jitter(img)
        item = {"image": self._to_input(img.contiguous()), "label": label, "index": index}
        if cam is not None:
            item["cam"] = cam.contiguous()
        if mask is not None:
            item["mask"] = mask.contiguous()
        return item


def preload_within(datasets: Iterable[torch.utils.data.Dataset], limit_mb: float) -> list[str]:
    """Preload each WSOLDataset (in the given order) while their total stays within `limit_mb`.

    Returns the splits kept in memory. A dataset over the remaining budget (a CAMELYON16 train
    split of tens of thousands of patches) is read from disk as before.
    """
    budget = limit_mb * 2**20
    kept = []
    for ds in datasets:
        if not isinstance(ds, WSOLDataset):
            continue
        need = 0 if ds.preloaded else ds.cache_bytes()
        if need <= budget:
            ds.preload()
            budget -= need
            kept.append(ds.split)
    return kept
