"""Regenerate tests/data/glas-sample from a GlaS (Warwick-QU) download.

The tests need real GlaS images but not their full size: this script takes the ten images the
tests name (train_1, train_10..14, testA_1, testA_10, testB_1, testB_10), downscales each by
SCALE (images with Lanczos; annotations with nearest neighbour, so gland instance ids stay the
integers they were and nothing new appears at their edges) and writes them in the official
layout: ``<out>/Warwick_QU_Dataset_(Released_2016_07_08)/<name>.bmp``, ``<name>_anno.bmp`` and a
``Grade.csv`` holding the header and these images' lines byte for byte (CR line endings and the
padding of the download kept, which the tests check the reader against).

Usage (from the repository root, Pillow is the only requirement)::

    python tests/data/make_glas_sample.py --src "Warwick QU Dataset (Released 2016_07_08)"
    python tests/data/make_glas_sample.py --src DOWNLOAD --out /tmp/sample --scale 0.5

``--src`` is the unpacked download (the folder holding Grade.csv, or a folder holding it). The
output is deterministic: the same download and scale give the same bytes. A new size changes
the numbers that tests/test_glas.py checks (image sizes), so keep SCALE unless you update them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

GLAS_DIR = "Warwick_QU_Dataset_(Released_2016_07_08)"
NAMES = ("testA_1", "testA_10", "testB_1", "testB_10", "train_1", "train_10", "train_11",
         "train_12", "train_13", "train_14")
SCALE = 0.4
HERE = Path(__file__).resolve().parent


def find_source(src: Path) -> Path:
    if (src / "Grade.csv").is_file():
        return src
    inside = [p for p in sorted(src.iterdir()) if (p / "Grade.csv").is_file()] \
        if src.is_dir() else []
    if len(inside) != 1:
        sys.exit(f"make_glas_sample: no single folder with Grade.csv in {src}: pass --src the "
                 f"unpacked GlaS download")
    return inside[0]


def scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def make(src: Path, out: Path, scale: float = SCALE, names=NAMES) -> Path:
    src = find_source(src)
    dst = out / GLAS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix, resample in ((".bmp", Image.LANCZOS), ("_anno.bmp", Image.NEAREST)):
            path = src / f"{name}{suffix}"
            if not path.is_file():
                sys.exit(f"make_glas_sample: {path} is missing: pass --src the full download")
            with Image.open(path) as im:
                im.load()
                small = im.resize(scaled(im.size, scale), resample)
                small.save(dst / f"{name}{suffix}", format="BMP")
    # Grade.csv: the header and the lines of these images, as the download writes them.
    raw = (src / "Grade.csv").read_bytes()
    sep = b"\r\n" if b"\r\n" in raw else (b"\r" if b"\r" in raw else b"\n")
    lines = raw.split(sep)
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(b",")[0].strip().decode() in names]
    if len(keep) != len(names) + 1:
        sys.exit(f"make_glas_sample: {src / 'Grade.csv'} lacks some of {', '.join(names)}: pass "
                 f"--src the full download")
    (dst / "Grade.csv").write_bytes(sep.join(keep))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, type=Path, help="the unpacked GlaS download")
    parser.add_argument("--out", type=Path, default=HERE / "glas-sample",
                        help="folder to write (default: tests/data/glas-sample)")
    parser.add_argument("--scale", type=float, default=SCALE, help=f"default {SCALE}")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        sys.exit(f"make_glas_sample: --scale {args.scale} must lie in (0, 1]")
    dst = make(args.src.expanduser(), args.out.expanduser(), args.scale)
    total = sum(p.stat().st_size for p in dst.iterdir())
    print(f"wrote {dst} ({len(list(dst.iterdir()))} files, {total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
