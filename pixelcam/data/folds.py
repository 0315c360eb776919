"""The WSOL fold format: one reader and one writer for real (GlaS, CAMELYON) and synthetic data.

A fold directory holds one sub-directory per split; each split holds comma-separated text files
with one image per line (the layout of the "wsol-done-right" splits that the paper uses):

* ``image_ids.txt``      ``<id>``                       (defines the order of the records)
* ``class_labels.txt``   ``<id>,<int>``
* ``image_sizes.txt``    ``<id>,<W>,<H>``               (CAMELYON fold-6 says ``images_size.txt``)
* ``localization.txt``   ``<id>,<mask_path>,<ignore>``  (optional; an empty mask path = no mask)

Class names live in ``encoding.yaml`` (``{class_name: int}``) in the fold directory, its parent or
its grandparent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pixelcam.atomic import write_text
from pixelcam.errors import DataError

SPLITS = ("train", "valcl", "valpx", "test")
ENCODING_FILE = "encoding.yaml"
IMAGE_IDS = "image_ids.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
IMAGE_SIZES_ALT = "images_size.txt"  # CAMELYON fold-6 spelling
LOCALIZATION = "localization.txt"


@dataclass(frozen=True)
class Record:
    """One image of a split; paths are relative to the data root so a fold moves with its data."""

    image_id: str
    label: int
    width: int | None = None
    height: int | None = None
    mask_path: str | None = None


def _encoding_dirs(fold_dir: Path) -> list[Path]:
    return [fold_dir, fold_dir.parent, fold_dir.parent.parent]


def _encoding_path(fold_dir: Path) -> Path | None:
    for directory in _encoding_dirs(fold_dir):
        if (directory / ENCODING_FILE).is_file():
            return directory / ENCODING_FILE
    return None


def find_encoding(fold_dir: str | Path) -> dict[str, int]:
    """Load ``{class_name: label}``; searched upwards: datasets keep one file for all folds."""
    fold_dir = Path(fold_dir)
    path = _encoding_path(fold_dir)
    if path is None:
        looked = ", ".join(str(d / ENCODING_FILE) for d in _encoding_dirs(fold_dir))
        raise DataError(
            f"no {ENCODING_FILE} found for fold {fold_dir} (looked at {looked}): "
            f"write one such as '{{benign: 0, malignant: 1}}' next to the fold directories"
        )
    return _load_encoding(path)


def _load_encoding(path: Path) -> dict[str, int]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read {path}: {first}; it must be a YAML mapping such as "
            f"'{{benign: 0, malignant: 1}}'"
        ) from None
    ok = (
        isinstance(data, dict)
        and len(data) > 0
        and all(isinstance(k, str) for k in data)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values())
    )
    if not ok:
        raise DataError(
            f"{path} must map class names to integer labels, such as "
            f"'{{benign: 0, malignant: 1}}'; got {data!r}"
        )
    if len(set(data.values())) != len(data):
        raise DataError(
            f"{path} gives the same label to two classes ({data!r}): make labels unique")
    return dict(data)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, so errors can point at the exact line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: rewrite it as plain text") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            out.append((number, line))
    return out


def _fields(path: Path, number: int, line: str, n: int, form: str) -> list[str]:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != n or not parts[0]:
        raise DataError(
            f"{path}:{number}: malformed line {line!r}: expected '{form}' "
            f"({n} comma-separated fields, no commas inside image ids)"
        )
    return parts


def _parse_int(
    path: Path, number: int, line: str, text: str, what: str, minimum: int | None = None
) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        bound = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise DataError(
            f"{path}:{number}: malformed line {line!r}: {what} {text!r} is not {bound}; "
            f"fix that line"
        )
    return value


def _keyed(
    path: Path, rows: list[tuple[int, list[str]]], order: dict[str, int], ids_path: Path
) -> dict[str, tuple[int, list[str]]]:
    """Index rows by image id and check they name exactly the images of image_ids.txt."""
    out: dict[str, tuple[int, list[str]]] = {}
    for number, parts in rows:
        image_id = parts[0]
        if image_id not in order:
            raise DataError(
                f"{path}:{number}: image id {image_id!r} is not in {ids_path}: "
                f"add it there or remove this line"
            )
        if image_id in out:
            raise DataError(
                f"{path}:{number}: image id {image_id!r} appears twice (first at line "
                f"{out[image_id][0]}): keep one line per image"
            )
        out[image_id] = (number, parts)
    if len(out) != len(order):
        missing = next(i for i in order if i not in out)
        raise DataError(
            f"{path} has no line for image id {missing!r} (line {order[missing]} of {ids_path}): "
            f"add a line for it or remove it from {ids_path.name}"
        )
    return out


def read_split(
    fold_dir: str | Path, split: str, encoding: dict[str, int] | None = None
) -> list[Record]:
    """Read one split into records in image_ids.txt order, checking every file against the ids."""
    fold_dir = Path(fold_dir)
    split_dir = fold_dir / split
    if not split_dir.is_dir():
        if fold_dir.is_dir():
            found = sorted(p.name for p in fold_dir.iterdir() if p.is_dir())
            where = f"fold directory {fold_dir} has splits {found}"
        else:
            where = f"fold directory {fold_dir} does not exist"
        raise DataError(
            f"split directory {split_dir} not found ({where}): point fold_dir at a folder "
            f"holding {'/'.join(SPLITS)} sub-directories"
        )
    ids_path = split_dir / IMAGE_IDS
    labels_path = split_dir / CLASS_LABELS
    for required in (ids_path, labels_path):
        if not required.is_file():
            raise DataError(
                f"{required} is missing: every split needs {IMAGE_IDS} and {CLASS_LABELS}"
            )

    if encoding is None:
        encoding = find_encoding(fold_dir)
        enc_name = str(_encoding_path(fold_dir))
    else:
        enc_name = "the encoding passed to read_split"
    valid = sorted(encoding.values())

    order: dict[str, int] = {}
    for number, line in _read_lines(ids_path):
        (image_id,) = _fields(ids_path, number, line, 1, "<image_id>")
        if image_id in order:
            raise DataError(
                f"{ids_path}:{number}: image id {image_id!r} appears twice (first at line "
                f"{order[image_id]}): keep one line per image"
            )
        order[image_id] = number
    if not order:
        raise DataError(
            f"split {split} in {fold_dir} has no images: {ids_path} is empty; "
            f"add one image id per line"
        )

    label_rows = [
        (n, _fields(labels_path, n, line, 2, "<image_id>,<label>"))
        for n, line in _read_lines(labels_path)
    ]
    labels: dict[str, int] = {}
    for image_id, (number, parts) in _keyed(labels_path, label_rows, order, ids_path).items():
        line = ",".join(parts)
        label = _parse_int(labels_path, number, line, parts[1], "label")
        if label not in encoding.values():
            raise DataError(
                f"{labels_path}:{number}: label {label} of {image_id!r} is not a valid label: "
                f"valid values are {valid} from {enc_name}; fix the label or the encoding"
            )
        labels[image_id] = label

    sizes: dict[str, tuple[int, int]] = {}
    sizes_path = split_dir / IMAGE_SIZES
    if not sizes_path.is_file() and (split_dir / IMAGE_SIZES_ALT).is_file():
        sizes_path = split_dir / IMAGE_SIZES_ALT
    if sizes_path.is_file():
        rows = [
            (n, _fields(sizes_path, n, line, 3, "<image_id>,<W>,<H>"))
            for n, line in _read_lines(sizes_path)
        ]
        for image_id, (number, parts) in _keyed(sizes_path, rows, order, ids_path).items():
            line = ",".join(parts)
            w = _parse_int(sizes_path, number, line, parts[1], "width", minimum=1)
            h = _parse_int(sizes_path, number, line, parts[2], "height", minimum=1)
            sizes[image_id] = (w, h)

    masks: dict[str, str | None] = {}
    loc_path = split_dir / LOCALIZATION
    if loc_path.is_file():
        rows = [
            (n, _fields(loc_path, n, line, 3, "<image_id>,<mask_path>,<ignore_path>"))
            for n, line in _read_lines(loc_path)
        ]
        for image_id, (_, parts) in _keyed(loc_path, rows, order, ids_path).items():
            masks[image_id] = parts[1] or None

    return [
        Record(
            image_id=image_id,
            label=labels[image_id],
            width=sizes[image_id][0] if image_id in sizes else None,
            height=sizes[image_id][1] if image_id in sizes else None,
            mask_path=masks.get(image_id),
        )
        for image_id in order
    ]


def _check_field(value: str, what: str, image_id: str) -> None:
    if "," in value or "\n" in value or "\r" in value or value != value.strip():
        raise DataError(
            f"{what} {value!r} of image {image_id!r} cannot be written to a fold file: "
            f"remove commas, line breaks and surrounding spaces from it"
        )


def write_split(fold_dir: str | Path, split: str, records: Sequence[Record]) -> None:
    """Write a split in the format read_split reads, one file at a time atomically."""
    split_dir = Path(fold_dir) / split
    if not records:
        raise DataError(
            f"cannot write split {split} in {fold_dir} with no records: pass at least one")
    seen: set[str] = set()
    for r in records:
        if not r.image_id:
            raise DataError(f"an image id of split {split} is empty: give every record an id")
        _check_field(r.image_id, "image id", r.image_id)
        if r.image_id in seen:
            raise DataError(f"image id {r.image_id!r} appears twice in split {split}: remove one")
        seen.add(r.image_id)
        if r.mask_path:
            _check_field(r.mask_path, "mask path", r.image_id)
    has_size = [r.width is not None and r.height is not None for r in records]
    if any(has_size) and not all(has_size):
        missing = records[has_size.index(False)].image_id
        raise DataError(
            f"image {missing!r} of split {split} has no width/height while others do: "
            f"give sizes for all records or for none"
        )

    split_dir.mkdir(parents=True, exist_ok=True)
    write_text(split_dir / IMAGE_IDS, "".join(f"{r.image_id}\n" for r in records))
    write_text(
        split_dir / CLASS_LABELS, "".join(f"{r.image_id},{int(r.label)}\n" for r in records)
    )
    if all(has_size):
        write_text(
            split_dir / IMAGE_SIZES,
            "".join(f"{r.image_id},{r.width},{r.height}\n" for r in records),
        )
    # A stale sizes file of an earlier write would no longer match the new ids.
    for stale in ([IMAGE_SIZES_ALT] if all(has_size) else [IMAGE_SIZES, IMAGE_SIZES_ALT]):
        if (split_dir / stale).exists():
            (split_dir / stale).unlink()
    write_text(
        split_dir / LOCALIZATION,
        "".join(f"{r.image_id},{r.mask_path or ''},\n" for r in records),
    )
