"""CAMELYON16 WSIs + ASAP XML lesion annotations -> 512x512 patches and masks in the fold format.

Two modes, both cutting level-0 regions with openslide (``read_region`` only, so peak memory does
not grow with the slide):

* **published folds** (``folds=``): the survey's patch names carry the WSI and the level-0
  coordinates (``Patch_file_training-tumor-tumor_009.tif_reg_4_..._x_17767_y_157191_..._w_512_h_
  512.png``); exactly those patches and their masks are cut, to the paths the fold files name, and
  the fold files are rewritten unchanged in content.
* **from scratch**: the survey's rules (Rony et al. 2023): non-overlapping 512x512 level-0 patches
  on a grid from (0, 0); a patch needs >= 10% tissue (Otsu on the saturation of a low-resolution
  level); a tumour patch needs >= 20% metastatic pixels and comes from an annotated slide; normal
  patches come only from slides without annotation; classes are balanced by a seeded draw.
  Training slides give train/valcl (stratified, ``valcl_fraction``), ``test_*`` slides (or
  slides under a ``testing`` folder) give test; valpx = 5 per class from valcl (the official
  folds hold 5 per class; the paper writes 6).

A slide is *tumour* when ``<stem>.xml`` exists anywhere under ``src``; a ``tumor_*`` slide without
one is skipped with a warning. Annotation groups ``Tumor``/``_0``/``_1`` (and ``metastases``) are
lesions, ``_2``/``Exclusion`` are cut out of them; a pixel is inside a polygon when its centre is
(even-odd rule).

Work goes to ``<out's parent>/.<out name>.partial`` with a marker per finished slide, so a rerun
with the same arguments skips finished slides; the folder is renamed to ``out`` when complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pixelcam.atomic import write_json
from pixelcam.data.folds import SPLITS, Record, write_split
from pixelcam.data.glas import (
    MANIFEST,
    check_out,
    check_protocol,
    counts_table,
    natural_key,
    publish,
    read_folds,
    write_encoding,
)
from pixelcam.errors import DataError

CAMELYON_ENCODING = {"normal": 0, "tumor": 1}
TUMOR_GROUPS = frozenset({"tumor", "_0", "_1", "metastases"})
EXCLUSION_GROUPS = frozenset({"_2", "exclusion"})
SLIDE_SUFFIXES = (".tif", ".tiff")
PATCH_SIZE = 512
MIN_TISSUE = 0.10
MIN_TUMOR = 0.20
VALCL_FRACTION = 0.2
VALPX_PER_CLASS = 5
TISSUE_DOWNSAMPLE = 32.0
# Otsu on a nearly blank slide would call scanner noise tissue: saturation must exceed this.
MIN_SATURATION = 15
PATCH_NAME = re.compile(
    r"(?:Patch|mask)_file_(?P<wsi>.+?\.tiff?)_(?:.*_)?x_(?P<x>\d+)_y_(?P<y>\d+)_"
    r"(?:.*_)?w_(?P<w>\d+)_h_(?P<h>\d+)\.png"
)
_PROGRESS = ".progress"


# --------------------------------------------------------------------------------------------
# annotations


def polygon_mask(
    polygons: Sequence[np.ndarray], x0: float, y0: float, w: int, h: int
) -> np.ndarray:
    """(h, w) bool: pixels of the window at (x0, y0) whose centre lies in a polygon (union).

    Scanline even-odd fill, vectorised over rows and edges: edges crossing each row centre are
    intersected at once, sorted, and filled pairwise through a difference array.
    """
    diff = np.zeros((h, w + 1), dtype=np.int32)
    yc = y0 + np.arange(h, dtype=np.float64) + 0.5
    for poly in polygons:
        a = np.asarray(poly, dtype=np.float64)
        b = np.roll(a, -1, axis=0)
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        # Only edges spanning some row centre of the window can cross it.
        keep = (hi > yc[0]) & (lo <= yc[-1]) & (a[:, 1] != b[:, 1])
        if not keep.any():
            continue
        a, b = a[keep], b[keep]
        ya, yb = a[:, 1][None], b[:, 1][None]
        y = yc[:, None]
        crosses = ((ya <= y) & (y < yb)) | ((yb <= y) & (y < ya))
        xs = a[:, 0][None] + (y - ya) / (yb - ya) * (b[:, 0] - a[:, 0])[None]
        xs = np.sort(np.where(crosses, xs, np.inf), axis=1)
        k = int(crosses.sum(axis=1).max())
        if k < 2:
            continue
        starts, ends = xs[:, 0 : k - 1 : 2], xs[:, 1:k:2]
        valid = np.isfinite(ends)
        # Column c is inside when x0 + c + 0.5 lies in [start, end).
        c0 = np.clip(np.ceil(np.where(valid, starts, 0) - x0 - 0.5), 0, w).astype(np.int64)
        c1 = np.clip(np.ceil(np.where(valid, ends, 0) - x0 - 0.5), 0, w).astype(np.int64)
        rows = np.broadcast_to(np.arange(h)[:, None], c0.shape)
        ok = valid & (c1 > c0)
        np.add.at(diff, (rows[ok], c0[ok]), 1)
        np.add.at(diff, (rows[ok], c1[ok]), -1)
    return np.cumsum(diff, axis=1)[:, :w] > 0


@dataclass
class Annotation:
    """Lesion polygons of one slide, in level-0 pixel coordinates."""

    tumor: list[np.ndarray] = field(default_factory=list)
    exclusion: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tb = _boxes(self.tumor)
        self._eb = _boxes(self.exclusion)

    def touches(self, x: int, y: int, w: int, h: int) -> bool:
        """Whether a tumour polygon's bounding box meets the window: a cheap pre-filter."""
        return bool(_hits(self._tb, x, y, w, h).any())

    def mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) bool metastatic mask of the level-0 window: lesions minus exclusions."""
        tumor = [p for p, hit in zip(self.tumor, _hits(self._tb, x, y, w, h)) if hit]
        if not tumor:
            return np.zeros((h, w), dtype=bool)
        out = polygon_mask(tumor, x, y, w, h)
        excl = [p for p, hit in zip(self.exclusion, _hits(self._eb, x, y, w, h)) if hit]
        if excl:
            out &= ~polygon_mask(excl, x, y, w, h)
        return out


def _boxes(polys: Sequence[np.ndarray]) -> np.ndarray:
    if not polys:
        return np.zeros((0, 4))
    return np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in polys])


def _hits(boxes: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    return (boxes[:, 0] < x + w) & (boxes[:, 2] > x) & (boxes[:, 1] < y + h) & (boxes[:, 3] > y)


def _number(text: str | None) -> float:
    # Some annotation tools write a decimal comma.
    return float((text or "").replace(",", "."))


def read_asap_xml(
    path: str | Path, width: int | None = None, height: int | None = None
) -> Annotation:
    """Parse an ASAP annotation; with the slide size, refuse vertices outside the slide."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(
            f"cannot parse annotation {path} ({exc}): replace it with a valid ASAP XML"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read annotation {path}: {exc.strerror or exc}") from None
    tumor: list[np.ndarray] = []
    exclusion: list[np.ndarray] = []
    for number, node in enumerate(root.iter("Annotation")):
        group = (node.get("PartOfGroup") or node.get("Name") or "").strip()
        kind = group.lower()
        if kind in TUMOR_GROUPS:
            target = tumor
        elif kind in EXCLUSION_GROUPS:
            target = exclusion
        else:
            raise DataError(
                f"annotation {path}: polygon {node.get('Name')!r} is in group {group!r}, which "
                f"is neither a lesion group (Tumor/_0/_1) nor an exclusion group (_2/Exclusion): "
                f"rename its PartOfGroup"
            )
        coords = node.findall("./Coordinates/Coordinate")
        try:
            pts = sorted(
                (_number(c.get("Order", str(i))), _number(c.get("X")), _number(c.get("Y")))
                for i, c in enumerate(coords)
            )
        except ValueError:
            raise DataError(
                f"annotation {path}: polygon {node.get('Name')!r} has a non-numeric X/Y/Order: "
                f"fix its coordinates"
            ) from None
        if len(pts) < 3:
            continue  # dots and point sets mark no area
        poly = np.array([(x, y) for _, x, y in pts], dtype=np.float64)
        if width is not None and height is not None:
            bad = (poly[:, 0] < 0) | (poly[:, 0] > width) | (poly[:, 1] < 0) | (poly[:, 1] > height)
            if bad.any():
                x, y = poly[np.argmax(bad)]
                raise DataError(
                    f"annotation {path}: polygon {node.get('Name')!r} (#{number}) has vertex "
                    f"({x:g}, {y:g}) outside the {width}x{height} slide: is it the XML of "
                    f"another slide? Fix or remove that polygon"
                )
        target.append(poly)
    if not tumor:
        raise DataError(
            f"annotation {path} holds no lesion polygon (group Tumor/_0/_1 with >= 3 "
            f"coordinates): fix the file, or delete it if the slide is normal"
        )
    return Annotation(tumor, exclusion)


# --------------------------------------------------------------------------------------------
# slides


def open_slide(path: str | Path):  # -> openslide.OpenSlide
    """Open a WSI, turning openslide's failures into a DataError that names the file."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"openslide cannot open slide {path} ({first}): the file is damaged or not a "
            f"pyramidal TIFF; replace it with the original download"
        ) from None


@dataclass(frozen=True)
class Slide:
    """One WSI found under the source folder."""

    path: Path
    rel: str  # path relative to the source folder, for messages and the manifest
    xml: Path | None
    group: str  # "train" or "test"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stem(self) -> str:
        return self.path.stem


def find_slides(src: str | Path) -> list[Slide]:
    """Every ``.tif`` under ``src`` with its ``<stem>.xml`` (if any), in natural order."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(
            f"--src {src} does not exist: point it at the CAMELYON16 folder (WSIs and XMLs)"
        )
    tifs = sorted(
        (p for p in src.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file()),
        key=lambda p: natural_key(p.relative_to(src).as_posix()),
    )
    if not tifs:
        raise DataError(f"no .tif slide found under {src}: point --src at the CAMELYON16 folder")
    xmls: dict[str, Path] = {}
    for p in sorted(src.rglob("*.xml")):
        if p.stem in xmls:
            raise DataError(f"two annotations for {p.stem}: {xmls[p.stem]} and {p}: keep one")
        xmls[p.stem] = p
    slides: list[Slide] = []
    seen: dict[str, Path] = {}
    for p in tifs:
        if p.name in seen:
            raise DataError(f"two slides named {p.name}: {seen[p.name]} and {p}: keep one")
        seen[p.name] = p
        rel = p.relative_to(src).as_posix()
        parts = [q.lower() for q in Path(rel).parts[:-1]]
        group = "test" if p.stem.lower().startswith("test") or "testing" in parts else "train"
        slides.append(Slide(p, rel, xmls.get(p.stem), group))
    return slides


def slide_for(token: str, slides: Mapping[str, Slide]) -> Slide | None:
    """The slide a patch name points at: ``training-tumor-tumor_009.tif`` -> ``tumor_009.tif``."""
    if token in slides:
        return slides[token]
    return slides.get(token.rsplit("-", 1)[-1])


def parse_patch_name(path: str) -> tuple[str, int, int, int, int]:
    """(WSI token, x, y, w, h) from a survey patch or mask file name (level-0 coordinates)."""
    m = PATCH_NAME.fullmatch(Path(path).name)
    if m is None:
        raise DataError(
            f"patch name {path!r} carries no '<slide>.tif_..._x_<X>_y_<Y>_..._w_<W>_h_<H>.png': "
            f"the fold files must use the survey's patch names"
        )
    return m["wsi"], int(m["x"]), int(m["y"]), int(m["w"]), int(m["h"])


# --------------------------------------------------------------------------------------------
# tissue


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram: values <= t are one class, > t the other."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    p = hist / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    return int(np.argmax(np.nan_to_num(between, nan=0.0, posinf=0.0)))


def _saturation(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.int32)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(hi > 0, (hi - lo) * 255 // np.maximum(hi, 1), 0)
    sat[rgba[..., 3] == 0] = 0  # outside the scanned area
    return sat.astype(np.uint8)


def tissue_fractions(
    slide, patch: int = PATCH_SIZE, downsample: float = TISSUE_DOWNSAMPLE, chunk: int = 2048
) -> np.ndarray:
    """(rows, cols) tissue fraction of each level-0 grid cell of ``patch`` pixels.

    Reads a low level in chunks twice (histogram for Otsu, then counts per cell), so memory
    depends on the chunk size, not on the slide.
    """
    level = slide.get_best_level_for_downsample(downsample)
    ds = float(slide.level_downsamples[level])
    lw, lh = slide.level_dimensions[level]
    width, height = slide.dimensions
    rows, cols = height // patch, width // patch
    boxes = [
        (cx, cy, min(chunk, lw - cx), min(chunk, lh - cy))
        for cy in range(0, lh, chunk)
        for cx in range(0, lw, chunk)
    ]

    def read(box: tuple[int, int, int, int]) -> np.ndarray:
        cx, cy, cw, ch = box
        region = slide.read_region((int(round(cx * ds)), int(round(cy * ds))), level, (cw, ch))
        return _saturation(np.asarray(region))

    hist = np.zeros(256, dtype=np.int64)
    for box in boxes:
        hist += np.bincount(read(box).ravel(), minlength=256)
    threshold = max(otsu_threshold(hist), MIN_SATURATION)

    tissue = np.zeros(rows * cols, dtype=np.float64)
    total = np.zeros(rows * cols, dtype=np.float64)
    for box in boxes:
        cx, cy, cw, ch = box
        sat = read(box)
        # Cell of each low-level pixel, by where its centre falls at level 0.
        col = np.floor((cx + np.arange(cw) + 0.5) * ds / patch).astype(np.int64)
        row = np.floor((cy + np.arange(ch) + 0.5) * ds / patch).astype(np.int64)
        inside = (row[:, None] < rows) & (col[None, :] < cols)
        if not inside.any():
            continue
        cell = (row[:, None] * cols + col[None, :])[inside]
        tissue += np.bincount(cell, weights=(sat > threshold)[inside], minlength=rows * cols)
        total += np.bincount(cell, minlength=rows * cols)
    frac = np.divide(tissue, total, out=np.zeros_like(tissue), where=total > 0)
    return frac.reshape(rows, cols)


# --------------------------------------------------------------------------------------------
# workers (top level so a process pool can pickle them)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_marker(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


def scan_slide(task: dict) -> dict:
    """Candidate patches of one slide (x, y, tissue, metastatic), saved under .progress/scan."""
    slide = open_slide(task["path"])
    try:
        patch = task["patch_size"]
        frac = tissue_fractions(slide, patch, task["tissue_downsample"])
        rr, cc = np.nonzero(frac >= task["min_tissue"])
        xs, ys, tissue = cc * patch, rr * patch, frac[rr, cc]
        meta = np.zeros(len(xs))
        if task["xml"] is not None:
            width, height = slide.dimensions
            ann = read_asap_xml(task["xml"], width, height)
            for k, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
                if ann.touches(x, y, patch, patch):
                    meta[k] = ann.mask(x, y, patch, patch).mean()
            keep = meta >= task["min_tumor"]
            xs, ys, tissue, meta = xs[keep], ys[keep], tissue[keep], meta[keep]
    finally:
        slide.close()
    out = Path(task["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, x=xs.astype(np.int64), y=ys.astype(np.int64), tissue=tissue, metastatic=meta)
    os.replace(tmp, out)
    return {"slide": task["name"], "candidates": len(xs)}


def cut_slide(task: dict) -> dict:
    """Write the patches (RGB PNG) and masks (0/255 PNG) of one slide, then its marker."""
    root = Path(task["root"])
    slide = open_slide(task["path"])
    try:
        width, height = slide.dimensions
        ann = read_asap_xml(task["xml"], width, height) if task["xml"] else None
        for x, y, w, h, image_rel, mask_rel in task["patches"]:
            region = slide.read_region((x, y), 0, (w, h)).convert("RGBA")
            white = Image.new("RGBA", region.size, (255, 255, 255, 255))
            rgb = np.asarray(Image.alpha_composite(white, region).convert("RGB"))
            _save_png(rgb, root / image_rel)
            if mask_rel:
                _save_png(ann.mask(x, y, w, h).astype(np.uint8) * 255, root / mask_rel)
    finally:
        slide.close()
    _write_marker(Path(task["marker"]), {"slide": task["name"], "patches": len(task["patches"])})
    return {"slide": task["name"], "patches": len(task["patches"])}


def _run(fn: Callable[[dict], dict], tasks: list[dict], workers: int, desc: str) -> list[dict]:
    """Run tasks in a process pool (or inline for one worker), with a progress bar on a TTY."""
    results: list[dict] = []
    if not tasks:
        return results
    bar = tqdm(total=len(tasks), desc=desc, unit="slide", disable=None, file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) == 1:
            for task in tasks:
                results.append(fn(task))
                bar.update()
            return results
        # spawn: the parent may hold threads (torch) that a fork would copy mid-lock.
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx)
        try:
            pending = {pool.submit(fn, task) for task in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    results.append(fut.result())  # re-raises a worker's DataError here
                    bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# prepare


@dataclass(frozen=True)
class Patch:
    """One patch to cut, with the record it becomes."""

    slide: str  # slide file name
    x: int
    y: int
    w: int
    h: int
    image_id: str
    label: int
    mask_path: str | None


def _validate_slides(slides: Iterable[Slide]) -> dict[str, tuple[int, int]]:
    """Open every slide and parse its XML before any long work: bad input fails in seconds."""
    sizes = {}
    for s in slides:
        handle = open_slide(s.path)
        sizes[s.name] = handle.dimensions
        handle.close()
        if s.xml is not None:
            read_asap_xml(s.xml, *sizes[s.name])
    return sizes


def _staging(out: Path, job: dict) -> Path:
    """The resumable work folder; work made with other arguments is discarded."""
    staging = out.parent / f".{out.name}.partial"
    job = json.loads(json.dumps(job))  # tuples become lists, as they come back from the file
    job_file = staging / _PROGRESS / "job.json"
    if staging.exists():
        try:
            same = json.loads(job_file.read_text(encoding="utf-8")) == job
        except (OSError, ValueError):
            same = False
        if same:
            return staging
        print(f"pixelcam: discarding {staging}: it was made with other arguments", file=sys.stderr)
        shutil.rmtree(staging)
    (staging / _PROGRESS).mkdir(parents=True)
    write_json(job_file, job)
    return staging


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _patches_from_folds(
    folds: Mapping[str, Mapping[str, Sequence[Record]]],
    folds_dir: Path,
    by_name: Mapping[str, Slide],
    src: Path,
) -> dict[str, Patch]:
    patches: dict[str, Patch] = {}
    for fold, splits in folds.items():
        for split, records in splits.items():
            where = f"fold files of {folds_dir} ({fold}/{split})"
            for r in records:
                token, x, y, w, h = parse_patch_name(r.image_id)
                slide = slide_for(token, by_name)
                if slide is None:
                    raise DataError(
                        f"{where} name patch {Path(r.image_id).name!r} of slide {token!r}, but no "
                        f"such slide is under {src}: add the slide or fix the fold files"
                    )
                if r.width is not None and (r.width, r.height) != (w, h):
                    raise DataError(
                        f"{where} give {r.image_id!r} size {r.width}x{r.height} but its name "
                        f"says {w}x{h}: fix image_sizes.txt"
                    )
                if r.mask_path and slide.xml is None:
                    raise DataError(
                        f"{where} give {r.image_id!r} a mask but slide {slide.rel} has no XML "
                        f"annotation ({slide.stem}.xml) under {src}: add it"
                    )
                patches[r.image_id] = Patch(slide.name, x, y, w, h, r.image_id, r.label,
                                            r.mask_path)
    return patches


def _check_inside(patches: Iterable[Patch], sizes: Mapping[str, tuple[int, int]]) -> None:
    for p in patches:
        width, height = sizes[p.slide]
        if p.x + p.w > width or p.y + p.h > height:
            raise DataError(
                f"patch {Path(p.image_id).name!r} ({p.w}x{p.h} at x={p.x}, y={p.y}) lies outside "
                f"slide {p.slide} ({width}x{height}): the fold files are not for this slide"
            )


def _patch_paths(
    slide: Slide, x: int, y: int, p: int, tissue: float, meta: float | None
) -> tuple[str, str | None]:
    tail = f"{slide.name}_x_{x}_y_{y}_tissue_{tissue:.4f}"
    if meta is None:
        return f"patches/normal/{slide.stem}/Patch_file_{tail}_w_{p}_h_{p}.png", None
    tail += f"_metastatic_{meta:.4f}_w_{p}_h_{p}.png"
    return (f"patches/tumor/{slide.stem}/Patch_file_{tail}",
            f"masks/{slide.stem}/mask_file_{tail}")


def _select(
    slides: Sequence[Slide],
    scans: Mapping[str, Mapping[str, np.ndarray]],
    *,
    seed: int,
    patch_size: int,
    valcl_fraction: float,
    valpx_per_class: int,
    max_per_class: int | None,
    encoding: Mapping[str, int],
) -> dict[str, list[Patch]]:
    """Balanced, seeded draw of patches per class; train pool -> train/valcl/valpx, test pool."""
    rng = np.random.default_rng(seed)
    tumor_label, normal_label = encoding["tumor"], encoding["normal"]
    splits: dict[str, list[Patch]] = {"train": [], "valcl": [], "valpx": [], "test": []}
    for pool in ("train", "test"):
        # Candidates stay numpy columns (slide index, row in its scan): a full CAMELYON16 has
        # millions; only the drawn ones become Patch objects.
        cols: dict[int, list[np.ndarray]] = {tumor_label: [], normal_label: []}
        for k, s in enumerate(slides):
            if s.group == pool:
                label = tumor_label if s.xml is not None else normal_label
                n_s = len(scans[s.name]["x"])
                cols[label].append(np.stack([np.full(n_s, k), np.arange(n_s)], axis=1))
        cands = {
            k: np.concatenate(v) if v else np.zeros((0, 2), dtype=np.int64)
            for k, v in cols.items()
        }
        n = min(len(cands[tumor_label]), len(cands[normal_label]))
        if max_per_class is not None:
            n = min(n, max_per_class)
        if n == 0:
            kind = "tumour" if not len(cands[tumor_label]) else "normal"
            raise DataError(
                f"the {pool} slides give no {kind} patch (tumour: enough metastatic pixels in "
                f"an annotated slide; normal: a slide without XML; both enough tissue): add "
                f"such {pool} slides{' (test_*.tif)' if pool == 'test' else ''}"
            )
        chosen: dict[int, list[Patch]] = {}
        for label, c in cands.items():
            picks = c[np.sort(rng.choice(len(c), size=n, replace=False))]
            chosen[label] = []
            for k, i in picks.tolist():
                slide, scan = slides[k], scans[slides[k].name]
                x, y = int(scan["x"][i]), int(scan["y"][i])
                meta = float(scan["metastatic"][i]) if label == tumor_label else None
                image_id, mask = _patch_paths(
                    slide, x, y, patch_size, float(scan["tissue"][i]), meta)
                chosen[label].append(
                    Patch(slide.name, x, y, patch_size, patch_size, image_id, label, mask))
        if pool == "test":
            splits["test"] = chosen[tumor_label] + chosen[normal_label]
            continue
        n_valcl = round(n * valcl_fraction)
        if not 0 < n_valcl < n:
            raise DataError(
                f"{n} patches per class in the train slides cannot be split with valcl fraction "
                f"{valcl_fraction}: use more slides or another --valcl-fraction"
            )
        for k in (tumor_label, normal_label):
            perm = rng.permutation(n)
            valcl = sorted(perm[:n_valcl].tolist())
            valcl_set = set(valcl)
            splits["train"] += [p for i, p in enumerate(chosen[k]) if i not in valcl_set]
            splits["valcl"] += [chosen[k][i] for i in valcl]
            n_px = min(valpx_per_class, n_valcl)
            if n_px < valpx_per_class:
                print(f"pixelcam: warning: valcl holds {n_valcl} patches of class {k}: valpx "
                      f"gets {n_px} of them, not {valpx_per_class}", file=sys.stderr)
            px = set(rng.permutation(valcl)[:n_px].tolist())
            splits["valpx"] += [chosen[k][i] for i in valcl if i in px]
    return splits


def prepare_camelyon16(
    src: str | Path,
    out: str | Path,
    *,
    folds: str | Path | None = None,
    workers: int = 1,
    seed: int = 0,
    patch_size: int = PATCH_SIZE,
    min_tissue: float = MIN_TISSUE,
    min_tumor: float = MIN_TUMOR,
    valcl_fraction: float = VALCL_FRACTION,
    valpx_per_class: int = VALPX_PER_CLASS,
    max_per_class: int | None = None,
    tissue_downsample: float = TISSUE_DOWNSAMPLE,
    overwrite: bool = False,
) -> dict:
    """Cut the CAMELYON16 patch benchmark into a data root the loader reads; returns the manifest.

    Resumable: a rerun with the same arguments after a crash skips the slides already done.
    """
    src = Path(src).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    check_out(out, overwrite)
    for name, value in (("min_tissue", min_tissue), ("min_tumor", min_tumor),
                        ("valcl_fraction", valcl_fraction)):
        if not 0 <= value <= 1:
            raise DataError(f"{name}={value} must lie in [0, 1]")
    if patch_size < 1 or valpx_per_class < 1 or (max_per_class is not None and max_per_class < 1):
        raise DataError("patch_size, valpx_per_class and max_per_class must be >= 1")
    all_slides = find_slides(src)
    by_name = {s.name: s for s in all_slides}

    if folds is not None:
        folds = Path(folds).expanduser().resolve()
        fold_splits, encoding = read_folds(folds, CAMELYON_ENCODING, required=())
        for name, splits in fold_splits.items():
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                print(f"pixelcam: warning: {folds} ({name}) has no {'/'.join(missing)} split: "
                      f"the prepared fold lacks it too", file=sys.stderr)
        patches = _patches_from_folds(fold_splits, folds, by_name, src)
        used = sorted({p.slide for p in patches.values()}, key=natural_key)
        slides = [by_name[n] for n in used]
        sizes = _validate_slides(slides)
        _check_inside(patches.values(), sizes)
        job = {"mode": "published-folds", "folds": str(folds),
               "patches": _digest(sorted((p.image_id, p.mask_path) for p in patches.values()))}
        staging = _staging(out, job)
        scan_stats = {"scanned": 0, "scan_skipped": 0}
    else:
        encoding = dict(CAMELYON_ENCODING)
        slides = []
        for s in all_slides:
            if s.xml is None and s.stem.lower().startswith("tumor"):
                print(f"pixelcam: warning: skipping {s.rel}: a tumour slide without "
                      f"{s.stem}.xml has no lesion outline", file=sys.stderr)
                continue
            slides.append(s)
        sizes = _validate_slides(slides)
        params = {"patch_size": patch_size, "min_tissue": min_tissue, "min_tumor": min_tumor,
                  "tissue_downsample": tissue_downsample}
        job = {"mode": "from-scratch", **params, "seed": seed, "valcl_fraction": valcl_fraction,
               "valpx_per_class": valpx_per_class, "max_per_class": max_per_class,
               "slides": [(s.rel, s.path.stat().st_size, s.xml is not None) for s in slides]}
        staging = _staging(out, job)
        scan_dir = staging / _PROGRESS / "scan"
        tasks = [
            {"path": str(s.path), "name": s.name, "xml": str(s.xml) if s.xml else None,
             "out": str(scan_dir / f"{s.stem}.npz"), **params}
            for s in slides
        ]
        todo = [t for t in tasks if not Path(t["out"]).is_file()]
        _run(scan_slide, todo, workers, "scan slides")
        scan_stats = {"scanned": len(todo), "scan_skipped": len(tasks) - len(todo)}
        scans = {}
        for s, t in zip(slides, tasks):
            with np.load(t["out"]) as z:
                scans[s.name] = {k: z[k] for k in ("x", "y", "tissue", "metastatic")}
        chosen = _select(slides, scans, seed=seed, patch_size=patch_size,
                         valcl_fraction=valcl_fraction, valpx_per_class=valpx_per_class,
                         max_per_class=max_per_class, encoding=encoding)
        fold_splits = {"fold-0": {
            split: [Record(p.image_id, p.label, p.w, p.h, p.mask_path) for p in ps]
            for split, ps in chosen.items()
        }}
        patches = {p.image_id: p for ps in chosen.values() for p in ps}

    per_slide: dict[str, list[Patch]] = {}
    for p in patches.values():
        per_slide.setdefault(p.slide, []).append(p)
    cut_dir = staging / _PROGRESS / "cut"
    tasks = [
        {"path": str(by_name[name].path), "name": name, "root": str(staging),
         "xml": str(by_name[name].xml) if by_name[name].xml else None,
         "marker": str(cut_dir / f"{by_name[name].stem}.json"),
         "patches": [(p.x, p.y, p.w, p.h, p.image_id, p.mask_path) for p in ps]}
        for name, ps in sorted(per_slide.items(), key=lambda kv: natural_key(kv[0]))
    ]
    todo = [t for t in tasks if not Path(t["marker"]).is_file()]
    _run(cut_slide, todo, workers, "cut patches")

    for name, splits in fold_splits.items():
        check_protocol(splits, f"fold {name}")
        for split, records in splits.items():
            write_split(staging / "folds" / name, split, records)
    write_encoding(staging, encoding)
    manifest = {
        "dataset": "camelyon16",
        "source": str(src),
        "mode": job["mode"],
        "folds_source": str(folds) if folds is not None else None,
        "parameters": {k: v for k, v in job.items() if k not in ("mode", "slides", "patches")},
        "slides": len(slides),
        "patches": len(patches),
        "stats": {**scan_stats, "cut": len(todo), "cut_skipped": len(tasks) - len(todo)},
        "encoding": encoding,
        "counts": counts_table(fold_splits),
    }
    write_json(staging / MANIFEST, manifest)
    shutil.rmtree(staging / _PROGRESS)
    publish(staging, out)
    return manifest
