"""Stain shift (paper section 3.3, Figs 4/5/9/10): re-stain dataset A with stain styles of B.

The paper re-stains the test images of one dataset "using stain styles from the other dataset",
ten styles ordered by their distance to the original stain (1 = minor, 10 = large), and publishes
no code. Our reading, frozen to a JSON file so every run sees the same ten styles:

* a stain style is a Macenko estimate (Macenko et al., ISBI 2009; fitted with torchstain's numpy
  backend): a 3x2 matrix of optical-density (OD) vectors, columns unit-norm, haematoxylin first,
  plus the 99th-percentile concentration of each stain (``max_c``);
* the original stain of A is the mean matrix over (a sample of) A's images, columns re-normalised,
  and the mean ``max_c``;
* candidate styles are single images of B; their distance to A's stain is the Frobenius norm of
  the difference of the two 3x2 matrices (the unit columns make it a pure colour distance, blind
  to how much stain an image holds); level k of n keeps the candidate at rank
  ``round((k - 1) * (N - 1) / (n - 1))`` of the N candidates sorted by distance, so level 1 is the
  closest candidate and level n the farthest, evenly spaced in rank;
* re-staining an image estimates its own matrix and concentrations (torchstain), rescales the
  concentrations to the target's ``max_c`` and rebuilds the RGB with the target matrix
  (Beer-Lambert), as Macenko normalisation does. Images whose own fit fails (blank, too little
  tissue, one stain only) are unmixed with A's reference stain instead, and counted.

Level 0 is the original data; it is never written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pixelcam.atomic import write_json, write_text
from pixelcam.data.folds import ENCODING_FILE, Record, find_encoding, read_split, write_split
from pixelcam.errors import ConfigError, DataError, OutputError

STAIN_VERSION = 1
METHOD = "macenko"
MANIFEST = "MANIFEST.json"
FOLD_DIR = Path("folds") / "fold-0"
DECIMALS = 6  # what the JSON keeps: identical files on machines whose last float bits differ
# An image needs this much tissue (pixels with OD >= beta in every channel) for its own fit.
MIN_TISSUE_PIXELS = 64
MIN_TISSUE_FRACTION = 0.01
# H and E closer than this (cosine) means the image shows one stain: the split is meaningless.
MAX_STAIN_COSINE = 0.995
MIN_MAX_C = 1e-3
IO, ALPHA, BETA = 240.0, 1.0, 0.15  # Macenko's defaults (light, angle percentile, OD cut)
_LEVEL_DIR = re.compile(r"^level-\d{2,}$")
_SOURCE_STREAM, _TARGET_STREAM = 0, 1  # spawn keys of the image-sampling rngs


class StainFitError(ValueError):
    """Macenko cannot be fitted on an image; callers skip it or fall back to a reference."""


Matrix = list[list[float]]  # 3 rows (R, G, B) x 2 columns (H, E)


@dataclass
class StainLevels:
    """The frozen stain styles: A's reference stain and one target style per shift level."""

    source_he: Matrix
    source_max_c: list[float]
    levels: list[dict[str, Any]]  # level k = levels[k - 1]: {image_id, he, max_c, distance}
    n_candidates: int  # candidate images of B tried
    n_failed: int  # of those, skipped because the fit failed
    n_source: int = 0  # images of A tried for the reference
    n_source_failed: int = 0
    method: str = METHOD
    version: int = STAIN_VERSION
    notes: dict[str, Any] = field(default_factory=dict)  # split names, seeds: provenance only

    def save(self, path: str | Path) -> None:
        """Write atomically; floats are rounded so the same fit gives the same bytes anywhere."""
        write_json(path, _rounded(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> StainLevels:
        """Read and validate a saved file; anything wrong is a DataError naming the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"stain levels file {path} does not exist: write it with fit_stain_levels(...)"
                f".save({str(path)!r})"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(
                f"cannot read stain levels file {path} ({type(exc).__name__}): it is damaged; "
                f"delete it and run fit_stain_levels again"
            ) from None
        return _validate(path, data)

    def he(self, level: int) -> np.ndarray:
        """(3, 2) target matrix of a level (1-based, as in the paper's figures)."""
        return np.asarray(self._level(level)["he"], dtype=np.float64)

    def max_c(self, level: int) -> np.ndarray:
        return np.asarray(self._level(level)["max_c"], dtype=np.float64)

    def _level(self, level: int) -> dict[str, Any]:
        if not isinstance(level, int) or not 1 <= level <= len(self.levels):
            raise ConfigError(
                f"stain level {level!r} does not exist: use 1..{len(self.levels)} (level 0 is "
                f"the original data)"
            )
        return self.levels[level - 1]

    def digest(self) -> str:
        """Names the styles: a re-stained copy made from other styles is not reused."""
        text = json.dumps(_rounded(asdict(self)), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Macenko


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        value = round(obj, DECIMALS)
        return 0.0 if value == 0 else value  # no "-0.0"
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _as_rgb(rgb: Any, what: str) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.size == 0:
        raise DataError(
            f"{what} must be an (H, W, 3) uint8 RGB array, got shape {arr.shape} dtype "
            f"{arr.dtype}: convert it with np.asarray(Image.open(path).convert('RGB'))"
        )
    return arr


def _unit_columns(he: np.ndarray) -> np.ndarray:
    return he / np.linalg.norm(he, axis=0, keepdims=True)


def _check_params(io: float, alpha: float, beta: float) -> None:
    if not (math.isfinite(io) and io > 0):
        raise ConfigError(f"Io={io!r} must be a positive light intensity, such as 240")
    if not (math.isfinite(alpha) and 0 <= alpha < 50):
        raise ConfigError(f"alpha={alpha!r} must be a percentile in [0, 50), such as 1")
    if not (math.isfinite(beta) and beta >= 0):
        raise ConfigError(f"beta={beta!r} must be an OD threshold >= 0, such as 0.15")


def fit_macenko(
    rgb: np.ndarray, *, io: float = 240, alpha: float = 1, beta: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """(he (3, 2), max_c (2,)) of one image with torchstain; StainFitError when it cannot be fit.

    torchstain answers NaN, a warning or garbage on blank or one-stain images instead of
    failing, so the tissue amount and the result are checked here.
    """
    from torchstain.base.normalizers import MacenkoNormalizer

    _check_params(io, alpha, beta)
    rgb = _as_rgb(rgb, "image")
    flat = rgb.reshape(-1, 3).astype(np.float64)
    tissue = int((-np.log((flat + 1.0) / io) >= beta).all(axis=1).sum())
    need = max(MIN_TISSUE_PIXELS, math.ceil(MIN_TISSUE_FRACTION * len(flat)))
    if tissue < need:
        raise StainFitError(f"too little tissue: {tissue} stained pixels, need {need}")
    normalizer = MacenkoNormalizer(backend="numpy")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            normalizer.fit(rgb, Io=io, alpha=alpha, beta=beta)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, IndexError) as exc:
        raise StainFitError(f"torchstain failed: {type(exc).__name__}: {exc}") from None
    he = np.asarray(normalizer.HERef, dtype=np.float64)
    max_c = np.asarray(normalizer.maxCRef, dtype=np.float64).reshape(-1)
    if he.shape != (3, 2) or max_c.shape != (2,):
        raise StainFitError(f"unexpected shapes {he.shape}, {max_c.shape}")
    if not (np.isfinite(he).all() and np.isfinite(max_c).all()):
        raise StainFitError("non-finite stain matrix or concentrations")
    norms = np.linalg.norm(he, axis=0)
    if (norms < 1e-6).any():
        raise StainFitError("a stain vector is zero")
    he = he / norms
    if (he < -0.1).any():  # stains absorb light: a clearly negative OD is no stain
        raise StainFitError(f"stain vector with a negative OD component {he.T.round(3).tolist()}")
    if float(he[:, 0] @ he[:, 1]) > MAX_STAIN_COSINE:
        raise StainFitError("H and E vectors coincide: the image shows a single stain")
    if (max_c < MIN_MAX_C).any():
        raise StainFitError(f"a stain is absent (max concentration {max_c.round(4).tolist()})")
    return he, max_c


def _concentrations(rgb: np.ndarray, he: np.ndarray, io: float) -> np.ndarray:
    """(2, H*W) stain concentrations: least squares of OD = he @ c for every pixel at once."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    return np.linalg.pinv(he) @ od.T


def _reconstruct(
    conc: np.ndarray, max_c: np.ndarray, he_target: np.ndarray, max_c_target: np.ndarray,
    io: float, shape: tuple[int, ...],
) -> np.ndarray:
    scaled = conc * (max_c_target / max_c)[:, None]
    out = io * np.exp(-(he_target @ scaled))
    return np.clip(np.rint(out.T), 0, 255).astype(np.uint8).reshape(shape)


def _target(he: Any, max_c: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    he_arr = np.asarray(he, dtype=np.float64)
    mc = np.asarray(max_c, dtype=np.float64).reshape(-1)
    if he_arr.shape != (3, 2) or not np.isfinite(he_arr).all():
        raise ConfigError(f"{what} stain matrix must be a finite 3x2 array, got {he_arr.tolist()}")
    if (np.linalg.norm(he_arr, axis=0) < 1e-6).any():
        raise ConfigError(f"{what} stain matrix has a zero column: {he_arr.tolist()}")
    if mc.shape != (2,) or not np.isfinite(mc).all() or (mc <= 0).any():
        raise ConfigError(f"{what} max_c must be two positive numbers, got {mc.tolist()}")
    return _unit_columns(he_arr), mc


def _own_stain(
    rgb: np.ndarray, fallback_he: np.ndarray, fallback_max_c: np.ndarray,
    io: float, alpha: float, beta: float,
) -> tuple[np.ndarray, np.ndarray, bool]:
    try:
        he, max_c = fit_macenko(rgb, io=io, alpha=alpha, beta=beta)
        return he, max_c, False
    except StainFitError:
        return fallback_he, fallback_max_c, True


def restain(
    rgb_uint8: np.ndarray,
    he_target: Any,
    max_c_target: Any,
    *,
    fallback_he: Any,
    fallback_max_c: Any,
    Io: float = 240,  # noqa: N803 - Macenko's and torchstain's name for the light intensity
    alpha: float = 1,
    beta: float = 0.15,
) -> tuple[np.ndarray, bool]:
    """Re-stain one image with a target style; fell_back is True when its own fit failed.

    The image's own matrix and concentrations come from torchstain's Macenko fit; the
    concentrations are scaled to the target's max_c and rebuilt with the target matrix.
    """
    _check_params(Io, alpha, beta)
    rgb = _as_rgb(rgb_uint8, "image to re-stain")
    he_t, mc_t = _target(he_target, max_c_target, "target")
    he_f, mc_f = _target(fallback_he, fallback_max_c, "fallback")
    he, max_c, fell_back = _own_stain(rgb, he_f, mc_f, Io, alpha, beta)
    conc = _concentrations(rgb, he, Io)
    return _reconstruct(conc, max_c, he_t, mc_t, Io, rgb.shape), fell_back


# --------------------------------------------------------------------------------------------
# fitting the levels


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot decode image {path} ({type(exc).__name__}): replace it with a valid image "
            f"file or drop it from the fold"
        ) from None


def _sample(records: list[Record], limit: int, seed: int, stream: int) -> list[Record]:
    """At most `limit` records, drawn with a fixed seed, kept in fold order."""
    if len(records) <= limit:
        return records
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    keep = sorted(int(i) for i in rng.choice(len(records), size=limit, replace=False))
    return [records[i] for i in keep]


Fit = tuple[str, np.ndarray, np.ndarray]  # image id, he, max_c


def _image_path(root: Path, record: Record) -> Path:
    path = root / record.image_id
    if not path.is_file():
        raise DataError(
            f"image {path} (id {record.image_id!r}) does not exist: check the data root "
            f"({root}) or remove the image from the fold files"
        )
    return path


def _fit_all(root: Path, records: list[Record]) -> tuple[list[Fit], int]:
    """Fits of the images that can be fitted, and how many could not."""
    fits, failed = [], 0
    for r in records:
        path = _image_path(root, r)
        try:
            he, max_c = fit_macenko(_read_rgb(path))
        except StainFitError:
            failed += 1
            continue
        fits.append((r.image_id, he, max_c))
    return fits, failed


def _int_arg(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    return value


def fit_stain_levels(
    source_root: str | Path,
    source_fold: str | Path,
    target_root: str | Path,
    target_fold: str | Path,
    *,
    n_levels: int = 10,
    source_split: str = "train",
    target_split: str = "train",
    max_candidates: int = 200,
    max_source: int = 200,
    seed: int = 0,
) -> StainLevels:
    """Fit A's reference stain and pick n_levels styles of B, evenly spread by distance.

    At most max_source images of A and max_candidates of B are fitted (seeded sample, fold
    order kept); images whose fit fails are skipped and counted. Same inputs, same result.
    """
    n_levels = _int_arg("n_levels", n_levels, 1)
    max_candidates = _int_arg("max_candidates", max_candidates, n_levels)
    max_source = _int_arg("max_source", max_source, 1)
    seed = _int_arg("seed", seed, 0)
    source_root, target_root = Path(source_root), Path(target_root)

    source = _sample(read_split(source_fold, source_split), max_source, seed, _SOURCE_STREAM)
    source_fits, source_failed = _fit_all(source_root, source)
    if not source_fits:
        raise DataError(
            f"no image of split {source_split} of {source_fold} ({len(source)} tried) gives a "
            f"Macenko stain fit (blank or single-stain images): use a split with H&E tissue"
        )
    # Rounded as the file stores them, so a distance can be recomputed from the file exactly.
    src_he = np.round(_unit_columns(np.mean([he for _, he, _ in source_fits], axis=0)), DECIMALS)
    src_mc = np.mean([mc for _, _, mc in source_fits], axis=0)

    candidates = _sample(read_split(target_fold, target_split), max_candidates, seed,
                         _TARGET_STREAM)
    target_fits, failed = _fit_all(target_root, candidates)
    usable = len(target_fits)
    if usable < n_levels:
        raise DataError(
            f"only {usable} of {len(candidates)} candidate images of split {target_split} of "
            f"{target_fold} give a stain fit ({failed} failed), fewer than n_levels={n_levels}: "
            f"lower n_levels, raise max_candidates or use a split with more H&E tissue images"
        )
    ranked = sorted(
        (
            (round(float(np.linalg.norm(he - src_he)), DECIMALS), image_id, he, mc)
            for image_id, he, mc in ((i, np.round(h, DECIMALS), m) for i, h, m in target_fits)
        ),
        key=lambda t: (t[0], t[1]),
    )
    if n_levels == 1:
        ranks = [0]
    else:
        ranks = [math.floor(k * (usable - 1) / (n_levels - 1) + 0.5) for k in range(n_levels)]
    levels = [
        {
            "image_id": ranked[i][1],
            "he": ranked[i][2].tolist(),
            "max_c": ranked[i][3].tolist(),
            "distance": ranked[i][0],
        }
        for i in ranks
    ]
    result = StainLevels(
        source_he=src_he.tolist(),
        source_max_c=src_mc.tolist(),
        levels=levels,
        n_candidates=len(candidates),
        n_failed=failed,
        n_source=len(source),
        n_source_failed=source_failed,
        notes={"source_split": source_split, "target_split": target_split, "seed": seed,
               "distance": "frobenius(he - source_he)"},
    )
    # In memory exactly what the file holds, so a loaded copy compares equal and restains alike.
    return StainLevels(**_rounded(asdict(result)))


# --------------------------------------------------------------------------------------------
# validation of a saved file


def _bad(path: Path, where: str, why: str) -> DataError:
    return DataError(
        f"stain levels file {path}: field {where!r} {why}; run fit_stain_levels again and save "
        f"it (do not edit the file by hand)"
    )


def _number(path: Path, where: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(value) and (value > 0 if positive else True)
    if not ok:
        kind = "a positive finite number" if positive else "a finite number"
        raise _bad(path, where, f"must be {kind}, got {value!r}")
    return float(value)


def _matrix(path: Path, where: str, value: Any) -> Matrix:
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(row, list) and len(row) == 2 for row in value)):
        raise _bad(path, where, f"must be a 3x2 list of numbers (R, G, B rows; H, E columns), "
                                f"got {value!r}")
    rows = [[_number(path, f"{where}[{i}][{j}]", v) for j, v in enumerate(row)]
            for i, row in enumerate(value)]
    norms = np.linalg.norm(np.asarray(rows), axis=0)
    if (np.abs(norms - 1.0) > 1e-3).any():
        raise _bad(path, where, f"must have unit-norm columns, got norms {norms.round(4).tolist()}")
    return rows


def _pair(path: Path, where: str, value: Any) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise _bad(path, where, f"must be a list of 2 positive numbers (H, E), got {value!r}")
    return [_number(path, f"{where}[{i}]", v, positive=True) for i, v in enumerate(value)]


def _count(path: Path, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(path, where, f"must be an integer >= 0, got {value!r}")
    return value


def _validate(path: Path, data: Any) -> StainLevels:
    if not isinstance(data, dict):
        raise _bad(path, "<top level>", f"must be a JSON object, got {type(data).__name__}")
    required = ("source_he", "source_max_c", "levels", "n_candidates", "n_failed", "method",
                "version")
    for key in required:
        if key not in data:
            raise _bad(path, key, "is missing")
    known = {f for f in StainLevels.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _bad(path, unknown[0], f"is unknown (known fields: {sorted(known)})")
    if data["method"] != METHOD:
        raise _bad(path, "method", f"must be {METHOD!r}, got {data['method']!r}")
    if data["version"] != STAIN_VERSION:
        raise _bad(path, "version", f"must be {STAIN_VERSION} (this code), got "
                                    f"{data['version']!r}")
    levels = data["levels"]
    if not isinstance(levels, list) or not levels:
        raise _bad(path, "levels", f"must be a non-empty list, got {levels!r}")
    clean = []
    previous = -math.inf
    for k, level in enumerate(levels):
        where = f"levels[{k}]"
        if not isinstance(level, dict):
            raise _bad(path, where, f"must be an object, got {level!r}")
        for key in ("image_id", "he", "max_c", "distance"):
            if key not in level:
                raise _bad(path, f"{where}.{key}", "is missing")
        extra = sorted(set(level) - {"image_id", "he", "max_c", "distance"})
        if extra:
            raise _bad(path, f"{where}.{extra[0]}", "is unknown")
        if not isinstance(level["image_id"], str) or not level["image_id"]:
            raise _bad(path, f"{where}.image_id", f"must be a non-empty string, got "
                                                  f"{level['image_id']!r}")
        distance = _number(path, f"{where}.distance", level["distance"])
        if distance < 0 or distance < previous:
            raise _bad(path, f"{where}.distance", f"must be >= 0 and >= the previous level's "
                                                  f"({previous}), got {distance}")
        previous = distance
        clean.append({
            "image_id": level["image_id"],
            "he": _matrix(path, f"{where}.he", level["he"]),
            "max_c": _pair(path, f"{where}.max_c", level["max_c"]),
            "distance": distance,
        })
    notes = data.get("notes", {})
    if not isinstance(notes, dict):
        raise _bad(path, "notes", f"must be an object, got {notes!r}")
    n_candidates = _count(path, "n_candidates", data["n_candidates"])
    n_failed = _count(path, "n_failed", data["n_failed"])
    if n_candidates - n_failed < len(clean):
        raise _bad(path, "n_failed", f"leaves {n_candidates - n_failed} usable candidates of "
                                     f"{n_candidates}, fewer than the {len(clean)} levels")
    return StainLevels(
        source_he=_matrix(path, "source_he", data["source_he"]),
        source_max_c=_pair(path, "source_max_c", data["source_max_c"]),
        levels=clean,
        n_candidates=n_candidates,
        n_failed=n_failed,
        n_source=_count(path, "n_source", data.get("n_source", 0)),
        n_source_failed=_count(path, "n_source_failed", data.get("n_source_failed", 0)),
        method=METHOD,
        version=STAIN_VERSION,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# writing re-stained copies of a split


def _save_png(path: Path, rgb: np.ndarray) -> None:
    """Temporary name then rename: a crash never leaves a truncated image under the real name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(rgb).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc}; free disk space or choose a writable "
            f"out_dir (nothing was left half-written)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # other file system, or links not allowed
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        raise OutputError(f"cannot write mask {dst}: {exc.strerror or exc}; choose a writable "
                          f"out_dir") from None
    finally:
        tmp.unlink(missing_ok=True)


def _inside(root: Path, rel: str, what: str, image_id: str) -> Path:
    """Relative ids only: an absolute or '..' id would write outside the re-stained root."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise DataError(
            f"{what} {rel!r} of image {image_id!r} is not a relative path inside the data root: "
            f"re-staining writes it under out_dir, so fix the fold files"
        )
    return root / p


def _resolve(manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    out = dict(manifest)
    out["levels"] = [
        {**lv, "data_root": str(out_dir / lv["data_root"]),
         "fold_dir": str(out_dir / lv["fold_dir"])}
        for lv in manifest["levels"]
    ]
    return out


def _key(levels: StainLevels, split: str, records: Sequence[Record]) -> str:
    h = hashlib.sha256(levels.digest().encode())
    h.update(split.encode())
    for r in records:
        h.update(f"{r.image_id},{r.label},{r.width},{r.height},{r.mask_path}\n".encode())
    return h.hexdigest()[:16]


def write_restained_split(
    data_root: str | Path,
    fold_dir: str | Path,
    split: str,
    levels: StainLevels,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write out_dir/level-XX/ data roots (images re-stained, masks linked, fold files copied).

    Each level reads with WSOLDataset(out_dir/level-XX, out_dir/level-XX/folds/fold-0, split).
    Images keep their ids (and so their extensions) but are PNG inside; the loader decodes by
    content. MANIFEST.json is written last: a complete out_dir is returned as is, an incomplete
    one is rebuilt. Paths in the file are relative to out_dir; the returned ones are absolute.
    """
    data_root, fold_dir, out_dir = Path(data_root), Path(fold_dir), Path(out_dir)
    records = read_split(fold_dir, split)
    encoding = find_encoding(fold_dir)
    key = _key(levels, split, records)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            found = manifest.get("key")
        except (OSError, ValueError, AttributeError):
            manifest, found = None, None
        if manifest is not None and found == key:
            return _resolve(manifest, out_dir)
        if manifest is not None:
            raise DataError(
                f"{manifest_path} describes other re-stained data (key {found!r}, expected "
                f"{key}: other stain levels, split or fold files): delete {out_dir} or choose "
                f"another out_dir"
            )
        manifest_path.unlink()  # unreadable (damaged by hand): rebuild like an incomplete run
    if out_dir.is_dir():  # an interrupted earlier run: rebuild the levels from scratch
        for child in out_dir.iterdir():
            if child.is_dir() and _LEVEL_DIR.match(child.name):
                shutil.rmtree(child)
    out_dir.mkdir(parents=True, exist_ok=True)

    fallback_he, fallback_mc = _target(levels.source_he, levels.source_max_c, "source")
    targets = [_target(lv["he"], lv["max_c"], f"level {k}")
               for k, lv in enumerate(levels.levels, start=1)]
    names = [f"level-{k:02d}" for k in range(1, len(targets) + 1)]
    roots = [out_dir / name for name in names]
    n_fallback = 0
    for r in records:
        src = _image_path(data_root, r)
        rgb = _read_rgb(src)
        he, max_c, fell_back = _own_stain(rgb, fallback_he, fallback_mc, IO, ALPHA, BETA)
        n_fallback += fell_back
        conc = _concentrations(rgb, he, IO)
        mask_src = data_root / r.mask_path if r.mask_path else None
        if mask_src is not None and not mask_src.is_file():
            raise DataError(
                f"mask {mask_src} of image {r.image_id!r} does not exist: check data_root "
                f"({data_root}) or fix localization.txt"
            )
        for root, (he_t, mc_t) in zip(roots, targets):
            dst = _inside(root, r.image_id, "image id", r.image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            _save_png(dst, _reconstruct(conc, max_c, he_t, mc_t, IO, rgb.shape))
            if mask_src is not None:
                mask_dst = _inside(root, r.mask_path, "mask path", r.image_id)
                mask_dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(mask_src, mask_dst)

    entries = []
    for k, (name, root) in enumerate(zip(names, roots), start=1):
        fold = root / FOLD_DIR
        write_split(fold, split, records)
        write_text(fold / ENCODING_FILE, yaml.safe_dump(encoding, sort_keys=False))
        entries.append({
            "level": k,
            "data_root": name,
            "fold_dir": (Path(name) / FOLD_DIR).as_posix(),
            "n_images": len(records),
            "n_fallback": n_fallback,
            "target_image_id": levels.levels[k - 1]["image_id"],
            "distance": levels.levels[k - 1]["distance"],
        })
    manifest = {
        "key": key,
        "split": split,
        "stain_digest": levels.digest(),
        "method": levels.method,
        "version": STAIN_VERSION,
        "levels": entries,
    }
    write_json(manifest_path, manifest)
    return _resolve(manifest, out_dir)
