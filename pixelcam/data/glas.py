"""GlaS (Warwick-QU, colon glands): the official download -> the WSOL protocol's fold format.

Input: the unpacked download (``Warwick_QU_Dataset_(Released_2016_07_08)/``, or the original
space-named folder, or a folder holding either): ``train_*.bmp``, ``testA_*.bmp``,
``testB_*.bmp``, each with its ``*_anno.bmp`` (gland instance ids, >0 = gland), and ``Grade.csv``
(CR line endings, leading spaces in the header and values).

Output (``<out>``, written aside and renamed when complete)::

    <out>/encoding.yaml                             {benign: 0, malignant: 1}
    <out>/Warwick_QU_Dataset_(Released_2016_07_08)/ the .bmp images, their _anno.bmp, Grade.csv
    <out>/folds/fold-0/{train,valcl,valpx,test}/    the protocol's fold files
    <out>/MANIFEST.json                             how it was made, the counts (written last)

Images and annotations are hard-linked (copied across file systems) unchanged: the loader reads an
``_anno.bmp`` as binary (>0) and resizes it nearest, as the protocol does, and image_sizes.txt keeps
the original size. Keeping the published folder name and ``_anno.bmp`` paths means the published
fold files apply to the prepared folder as they are.

The splits (``split``):

* ``"published"`` (default): the WSOL protocol's published GlaS folds fold-0 ... fold-4, shipped
  with this package (``pixelcam/data/published_folds/GLAS``, from the "wsol-done-right-splits" of
  the official PixelCAM code), all written under ``<out>/folds``; ``folds=DIR`` reads another fold
  directory instead. Every image they name must be in the download.
* ``"seeded"``: the protocol's split drawn with ``seed`` (for a partial download, e.g. a sample).

The helpers for fold directories and the staged output are shared with the CAMELYON16 preparer.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixelcam.atomic import write_json, write_text
from pixelcam.data.folds import (
    ENCODING_FILE,
    SPLITS,
    Record,
    find_encoding,
    read_split,
    write_split,
)
from pixelcam.errors import ConfigError, DataError

GLAS_DIR = "Warwick_QU_Dataset_(Released_2016_07_08)"
GLAS_DIR_NAMES = (GLAS_DIR, "Warwick QU Dataset (Released 2016_07_08)")
GLAS_ENCODING = {"benign": 0, "malignant": 1}
GRADE_FILE = "Grade.csv"
MANIFEST = "MANIFEST.json"
# The published GlaS folds of the WSOL protocol, shipped as package data (see its README.md).
PACKAGED_FOLDS = Path(__file__).resolve().parent / "published_folds" / "GLAS"
SPLIT_MODES = ("published", "seeded")
# The protocol's split of the 85 official train images: 67 train / 18 valcl, 3 valpx per class.
VALCL_FRACTION = 18 / 85
VALPX_PER_CLASS = 3
_FOLD_NAME = re.compile(r"fold-\d+")


# --------------------------------------------------------------------------------------------
# helpers shared with camelyon.py


def natural_key(text: str) -> list:
    """train_2 before train_10: orders files the way people number them."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def split_counts(records: Sequence[Record], labels: Sequence[int] = (0, 1)) -> tuple[int, ...]:
    """(n, n with label 0, n with label 1, ...): the numbers the protocol tables quote."""
    return (len(records), *(sum(r.label == k for r in records) for k in labels))


def counts_table(folds: Mapping[str, Mapping[str, Sequence[Record]]]) -> dict:
    """JSON-ready counts per fold and split, for the manifest and the command's summary."""
    out: dict = {}
    for fold, splits in folds.items():
        out[fold] = {}
        for split, records in splits.items():
            per_class: dict[str, int] = {}
            for r in records:
                per_class[str(r.label)] = per_class.get(str(r.label), 0) + 1
            out[fold][split] = {"n": len(records), "per_class": dict(sorted(per_class.items()))}
    return out


def discover_folds(folds_dir: str | Path) -> list[Path]:
    """A fold directory itself, or a dataset folder of ``fold-k`` directories (all of them)."""
    folds_dir = Path(folds_dir)
    if not folds_dir.is_dir():
        raise DataError(
            f"fold directory {folds_dir} does not exist: pass --folds a folder holding "
            f"{'/'.join(SPLITS)} sub-directories or fold-k folders of them"
        )
    if any((folds_dir / s).is_dir() for s in SPLITS):
        return [folds_dir]
    found = sorted(
        (p for p in folds_dir.iterdir() if p.is_dir() and _FOLD_NAME.fullmatch(p.name)),
        key=lambda p: natural_key(p.name),
    )
    if not found:
        subdirs = sorted(p.name for p in folds_dir.iterdir() if p.is_dir())
        raise DataError(
            f"{folds_dir} holds neither split directories ({'/'.join(SPLITS)}) nor fold-k "
            f"folders (found {subdirs}): point --folds at a fold directory or at its parent"
        )
    return found


def fold_name(fold_dir: Path, single: bool) -> str:
    """Keep ``fold-k``; a lone directory of another name becomes fold-0, the loader's default."""
    return fold_dir.name if _FOLD_NAME.fullmatch(fold_dir.name) or not single else "fold-0"


def read_folds(
    folds_dir: str | Path,
    default_encoding: Mapping[str, int],
    *,
    required: Sequence[str] = SPLITS,
) -> tuple[dict[str, dict[str, list[Record]]], dict[str, int]]:
    """Read every fold of a published fold directory; returns ({fold: {split: records}}, encoding).

    The encoding comes from the nearest encoding.yaml (fold, parent, grandparent) or the default.
    Splits in ``required`` must exist; the others of SPLITS are read when present.
    """
    dirs = discover_folds(folds_dir)
    encoding: dict[str, int] | None = None
    folds: dict[str, dict[str, list[Record]]] = {}
    for fold_dir in dirs:
        try:
            enc = find_encoding(fold_dir)
        except DataError:
            near = (fold_dir, fold_dir.parent, fold_dir.parent.parent)
            if any((d / ENCODING_FILE).exists() for d in near):
                raise  # present but broken: say so rather than silently use the default
            enc = dict(default_encoding)
        if encoding is not None and enc != encoding:
            raise DataError(
                f"fold {fold_dir} has encoding {enc} but another fold has {encoding}: "
                f"all folds of a dataset must share one encoding.yaml"
            )
        encoding = enc
        splits: dict[str, list[Record]] = {}
        for split in SPLITS:
            if (fold_dir / split).is_dir() or split in required:
                splits[split] = read_split(fold_dir, split, enc)
        if not splits:
            subdirs = sorted(p.name for p in fold_dir.iterdir() if p.is_dir())
            raise DataError(
                f"fold {fold_dir} has none of the splits {'/'.join(SPLITS)} (found {subdirs}): "
                f"rename its split directories to these names"
            )
        check_protocol(splits, fold_dir)
        folds[fold_name(fold_dir, len(dirs) == 1)] = splits
    assert encoding is not None
    return folds, encoding


def check_protocol(splits: Mapping[str, Sequence[Record]], where: str | Path) -> None:
    """The protocol's invariants: valpx inside valcl; train, valcl and test disjoint."""
    ids = {s: {r.image_id for r in recs} for s, recs in splits.items()}
    if "valpx" in ids and "valcl" in ids and not ids["valpx"] <= ids["valcl"]:
        extra = sorted(ids["valpx"] - ids["valcl"])[0]
        raise DataError(
            f"{where}: valpx image {extra!r} is not in valcl: valpx must be a subset of valcl; "
            f"fix the fold files"
        )
    for a, b in (("train", "valcl"), ("train", "test"), ("valcl", "test")):
        if a in ids and b in ids and ids[a] & ids[b]:
            both = sorted(ids[a] & ids[b])[0]
            raise DataError(
                f"{where}: image {both!r} is in both {a} and {b}: the splits must not overlap; "
                f"fix the fold files"
            )


def link_or_copy(src: Path, dst: Path, *, link: bool = True) -> None:
    """Hard link when possible: a prepared dataset then costs no disk space."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system or no permission: fall back to a copy
    shutil.copyfile(src, dst)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse early, before any work, to replace a folder the user did not ask to replace."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out} already exists and is not empty: choose another folder, delete it, "
            f"or pass --overwrite to replace it"
        )


def publish(staging: Path, out: Path) -> None:
    """Rename the complete staging folder to ``out``; an old ``out`` is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; it becomes ``out`` only if the block completes."""
    out = Path(out).expanduser().resolve()
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_encoding(root: Path, encoding: Mapping[str, int]) -> None:
    write_text(root / ENCODING_FILE, "".join(f"{k}: {v}\n" for k, v in encoding.items()))


# --------------------------------------------------------------------------------------------
# GlaS


@dataclass(frozen=True)
class GlasImage:
    """One official image: its name (``train_12``), protocol group, label and size."""

    name: str
    group: str  # "train" (the 85 official train images) or "test" (testA + testB)
    label: int
    width: int
    height: int

    @property
    def image_id(self) -> str:
        return f"{GLAS_DIR}/{self.name}.bmp"

    @property
    def mask_path(self) -> str:
        return f"{GLAS_DIR}/{self.name}_anno.bmp"

    def record(self) -> Record:
        return Record(self.image_id, self.label, self.width, self.height, self.mask_path)


def find_glas_dir(src: str | Path) -> Path:
    """The folder holding Grade.csv: ``src`` itself or one of its sub-folders."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"--src {src} does not exist: point it at the unpacked GlaS download")
    if (src / GRADE_FILE).is_file():
        return src
    inside = sorted(p for p in src.iterdir() if p.is_dir() and (p / GRADE_FILE).is_file())
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise DataError(
            f"{src} holds several GlaS folders ({[p.name for p in inside]}): point --src at one"
        )
    raise DataError(
        f"{GRADE_FILE} is missing from {src} (and from its sub-folders): point --src at the "
        f"unpacked GlaS download, which holds {GRADE_FILE} beside the .bmp images"
    )


def read_grades(path: str | Path) -> dict[str, int]:
    """``{image name: label}`` from Grade.csv, whatever its line endings and padding."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing: GlaS labels come from {GRADE_FILE}; restore it from the "
            f"download"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: restore it from the download") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = [
        (n, [f.strip() for f in row])
        for n, row in enumerate(csv.reader(text.splitlines()), start=1)
        if any(f.strip() for f in row)
    ]
    if not rows:
        raise DataError(f"{path} is empty: restore it from the GlaS download")
    header = [h.lower() for h in rows[0][1]]
    if "name" not in header or "grade (glas)" not in header:
        raise DataError(
            f"{path}: header {rows[0][1]} lacks 'name' and 'grade (GlaS)' columns: "
            f"restore {GRADE_FILE} from the GlaS download"
        )
    i_name, i_grade = header.index("name"), header.index("grade (glas)")
    grades: dict[str, int] = {}
    for number, fields in rows[1:]:
        if len(fields) <= max(i_name, i_grade):
            raise DataError(f"{path}:{number}: too few fields in {fields}: fix that line")
        name, grade = fields[i_name], fields[i_grade].lower()
        if grade not in GLAS_ENCODING:
            raise DataError(
                f"{path}:{number}: grade {fields[i_grade]!r} of {name!r} is neither 'benign' nor "
                f"'malignant': fix that line"
            )
        if name in grades:
            raise DataError(f"{path}:{number}: image {name!r} is listed twice: keep one line")
        grades[name] = GLAS_ENCODING[grade]
    if not grades:
        raise DataError(f"{path} lists no image: restore it from the GlaS download")
    return grades


def _group(name: str, grade_file: Path) -> str:
    if name.startswith("train_"):
        return "train"
    if name.startswith(("testA_", "testB_")):
        return "test"
    raise DataError(
        f"{grade_file}: image name {name!r} starts with none of train_/testA_/testB_, so its "
        f"protocol split is unknown: fix or remove that line"
    )


def image_size(path: Path, what: str) -> tuple[int, int]:
    """Decode the whole file (not only its header), so a truncated image fails here."""
    if not path.is_file():
        raise DataError(f"{what} {path} is missing: restore it from the download")
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot decode {what} {path} ({type(exc).__name__}): the file is damaged; "
            f"restore it from the download"
        ) from None


def scan_glas(src: str | Path) -> tuple[Path, list[GlasImage]]:
    """Check the download (every image Grade.csv names, decodable, annotation of the same size)."""
    root = find_glas_dir(src)
    grade_file = root / GRADE_FILE
    grades = read_grades(grade_file)
    images = []
    for name in sorted(grades, key=natural_key):
        group = _group(name, grade_file)
        image = root / f"{name}.bmp"
        anno = root / f"{name}_anno.bmp"
        if not image.is_file():
            raise DataError(
                f"{grade_file} names {name!r} but {image} is missing: restore it from the "
                f"download or remove its line"
            )
        size = image_size(image, "image")
        anno_size = image_size(anno, "annotation")
        if anno_size != size:
            raise DataError(
                f"annotation {anno} is {anno_size[0]}x{anno_size[1]} but image {image} is "
                f"{size[0]}x{size[1]}: an annotation must have its image's size; restore both "
                f"from the download"
            )
        images.append(GlasImage(name, group, grades[name], size[0], size[1]))
    return root, images


def _apportion(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` over classes proportionally (largest remainder): the stratified quota."""
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    quotas = [total * s / n for s in sizes]
    out = [int(q) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda k: (-(quotas[k] - out[k]), k))
    for k in order[: total - sum(out)]:
        out[k] += 1
    return out


def protocol_split(
    images: Sequence[GlasImage],
    *,
    seed: int = 0,
    valcl_fraction: float = VALCL_FRACTION,
    valpx_per_class: int = VALPX_PER_CLASS,
) -> dict[str, list[Record]]:
    """Rony et al. (2023): test = testA + testB; train -> train / valcl stratified; valpx ⊂ valcl.

    On the 85 official train images (37 benign, 48 malignant) this gives 67 (29/38) / 18 (8/10)
    and 3 + 3 valpx, the published counts. Fewer images (a sample) give proportionally fewer,
    but every class gets at least one valcl image, so that valcl and valpx hold both classes
    (PxAP and the valpx threshold need them); a class with fewer than ``valpx_per_class`` valcl
    images gives valpx all it has, and a class whose only image went to valcl is absent from
    train (each with a warning).
    """
    if not 0 < valcl_fraction < 1:
        raise DataError(f"valcl fraction {valcl_fraction} must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    train = [im for im in images if im.group == "train"]
    test = [im for im in images if im.group == "test"]
    labels = sorted({im.label for im in train})
    by_class = {k: [im for im in train if im.label == k] for k in labels}
    quota = _apportion(round(len(train) * valcl_fraction), [len(by_class[k]) for k in labels])
    quota = [max(q, 1) for q in quota]  # >= 1 valcl image per class (the full download: 8/10)
    valcl_names: set[str] = set()
    valpx_names: set[str] = set()
    for k, n_valcl in zip(labels, quota):
        pool = by_class[k]  # natural order, so the draw depends on the seed only
        chosen = [pool[int(i)] for i in rng.permutation(len(pool))[:n_valcl]]
        valcl_names.update(im.name for im in chosen)
        n_px = min(valpx_per_class, len(chosen))
        if n_px < valpx_per_class:
            print(
                f"pixelcam: warning: class {k} has {len(chosen)} valcl image(s), fewer than "
                f"{valpx_per_class}: valpx gets {n_px} of that class",
                file=sys.stderr,
            )
        valpx_names.update(chosen[int(i)].name for i in rng.permutation(len(chosen))[:n_px])
    splits = {
        "train": [im.record() for im in train if im.name not in valcl_names],
        "valcl": [im.record() for im in train if im.name in valcl_names],
        "valpx": [im.record() for im in train if im.name in valpx_names],
        "test": [im.record() for im in test],
    }
    for split, records in splits.items():
        if not records:
            raise DataError(
                f"the GlaS source has too few images to fill split {split} "
                f"({len(train)} train_*, {len(test)} testA_/testB_ images): use the full download"
            )
    for k in labels:
        if not any(r.label == k for r in splits["train"]):
            print(
                f"pixelcam: warning: class {k} has {len(by_class[k])} train_* image(s), all in "
                f"valcl (so that valpx holds both classes): the train split has none of it",
                file=sys.stderr,
            )
    check_protocol(splits, "protocol split")
    return splits


def _fold_sources(
    folds: Mapping[str, Mapping[str, Sequence[Record]]],
    folds_dir: Path,
    root: Path,
    images: Sequence[GlasImage],
    *,
    packaged: bool = False,
) -> dict[str, Path]:
    """Map every path the fold files name to its source file, checking labels and sizes.

    Images the folds name but the download lacks are counted first, so the error says how many
    are missing (a partial download lacks many) rather than stopping at the first one.
    """
    by_file = {f"{im.name}.bmp": im for im in images}
    annos = {f"{im.name}_anno.bmp": im for im in images}
    named = list(dict.fromkeys(
        Path(r.image_id).name for splits in folds.values() for recs in splits.values()
        for r in recs))
    missing = [base for base in named if base not in by_file]
    if missing:
        first = root / missing[0]
        unlisted = f" (the file is there but {GRADE_FILE} does not list it)" \
            if first.is_file() else ""
        if packaged:
            fix = ("is this the full Warwick QU download (165 images)? For a partial one "
                   "draw a split from what it has with --split seeded")
            what = "the published GlaS folds"
        else:
            fix = ("is this the full Warwick QU download? Otherwise fix the fold files, or draw "
                   "a split from what it has with --split seeded instead of --folds")
            what = f"the fold files of {folds_dir}"
        raise DataError(
            f"{root} lacks {len(missing)} of the {len(named)} images {what} name (first: "
            f"{first}{unlisted}): {fix}"
        )
    sources: dict[str, Path] = {}
    for fold, splits in folds.items():
        for split, records in splits.items():
            where = f"fold files of {folds_dir} ({fold}/{split})"
            for r in records:
                base = Path(r.image_id).name
                im = by_file[base]
                if r.label != im.label:
                    raise DataError(
                        f"{where} give {r.image_id!r} label {r.label} but {GRADE_FILE} says "
                        f"{im.label}: these fold files are not for this dataset"
                    )
                if r.width is not None and (r.width, r.height) != (im.width, im.height):
                    raise DataError(
                        f"{where} give {r.image_id!r} size {r.width}x{r.height} but the image "
                        f"is {im.width}x{im.height}: these fold files are not for this dataset"
                    )
                sources[r.image_id] = root / base
                if r.mask_path:
                    mbase = Path(r.mask_path).name
                    if mbase not in annos:
                        raise DataError(
                            f"{where} name mask {r.mask_path!r} but {root / mbase} is not in the "
                            f"GlaS source: fix the fold files"
                        )
                    sources[r.mask_path] = root / mbase
    return sources


def prepare_glas(
    src: str | Path,
    out: str | Path,
    *,
    split: str = "published",
    seed: int | None = None,
    folds: str | Path | None = None,
    link: bool = True,
    overwrite: bool = False,
) -> dict:
    """Turn the GlaS download into a data root the loader reads; returns the manifest.

    ``split="published"`` (default): the published folds fold-0 ... fold-4 shipped with the
    package, or those of ``folds`` (a fold directory or a folder of ``fold-k``), checked against
    the images. ``split="seeded"``: the protocol split drawn with ``seed`` (default 0) as
    ``folds/fold-0``, for a download that lacks images the published folds name.
    """
    if split not in SPLIT_MODES:
        raise ConfigError(
            f"--split {split!r} is not a GlaS split: use 'published' (the protocol's published "
            f"folds, the default) or 'seeded' (a split drawn with --seed)"
        )
    if split == "seeded" and folds is not None:
        raise ConfigError(
            f"--split seeded draws the split but --folds {folds} gives it from fold files: "
            f"pass one of them"
        )
    if split == "published" and seed is not None:
        raise ConfigError(
            f"--seed {seed} has no effect on the published folds: add --split seeded to draw a "
            f"split with it, or drop --seed"
        )
    out = Path(out).expanduser().resolve()
    check_out(out, overwrite)
    packaged = split == "published" and folds is None
    if packaged:
        folds = PACKAGED_FOLDS
        if not (folds / "fold-0").is_dir():
            raise DataError(
                f"the published GlaS folds are missing from the installed package ({folds}): "
                f"reinstall pixelcam-kit, or pass --folds DIR or --split seeded"
            )
    root, images = scan_glas(src)
    if split == "seeded":
        seed = 0 if seed is None else seed
        fold_splits = {"fold-0": protocol_split(images, seed=seed)}
        encoding = dict(GLAS_ENCODING)
        sources = {}
        for im in images:
            sources[im.image_id] = root / f"{im.name}.bmp"
            sources[im.mask_path] = root / f"{im.name}_anno.bmp"
    else:
        folds = Path(folds).expanduser()
        fold_splits, encoding = read_folds(folds, GLAS_ENCODING)
        if sorted(encoding.values()) != sorted(GLAS_ENCODING.values()):
            raise DataError(
                f"encoding {encoding} of {folds} does not use GlaS's labels 0/1: fix its "
                f"{ENCODING_FILE}"
            )
        sources = _fold_sources(fold_splits, folds, root, images, packaged=packaged)

    manifest = {
        "dataset": "glas",
        "source": str(root),
        "mode": "seeded-split" if split == "seeded" else "published-folds",
        "folds_source": None if split == "seeded" else (
            "packaged (pixelcam/data/published_folds/GLAS)" if packaged
            else str(Path(folds).resolve())),
        "seed": seed if split == "seeded" else None,
        "encoding": encoding,
        "counts": counts_table(fold_splits),
    }
    with staged_output(out, overwrite=overwrite) as tmp:
        for rel, source in sources.items():
            link_or_copy(source, tmp / rel, link=link)
        link_or_copy(root / GRADE_FILE, tmp / GLAS_DIR / GRADE_FILE, link=link)
        write_encoding(tmp, encoding)
        for name, splits in fold_splits.items():
            for split_name, records in splits.items():
                write_split(tmp / "folds" / name, split_name, records)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def format_counts(manifest: Mapping, encoding: Mapping[str, int]) -> str:
    """One line per fold and split: ``fold-0 train 67 (benign 29, malignant 38)``."""
    names = {str(v): k for k, v in encoding.items()}
    lines = []
    for fold, splits in manifest["counts"].items():
        for split, c in splits.items():
            per = ", ".join(f"{names.get(k, k)} {v}" for k, v in c["per_class"].items())
            lines.append(f"{fold} {split:<5} {c['n']:>6} ({per})")
    return "\n".join(lines)
