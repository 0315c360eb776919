"""A CAMELYON16 download look-alike: small pyramidal TIFF slides and ASAP XML lesion annotations.

The tests prepare it with `pixelcam data prepare camelyon16`; CI's preflight does the same from
the command line (`python tests/synthetic_wsi.py <folder>`), so the real-data path runs on
real-format files without the 700 GB of the real dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

SIZE = 2048
TISSUE_X, TISSUE_Y = 1568, 1792  # tissue where x < 1568 and y < 1792, background elsewhere
LESION = (512, 512, 1280, 1536)  # x0, y0, x1, y1 of the "_0" lesion
SLIVER = (0, 0, 64, 512)  # a "Tumor" polygon covering 12.5% of cell (0, 0): below 20%
HOLE = (600, 600, 700, 700)  # "_2" exclusion inside the lesion
SLIDES = {  # relative path: (seed, tumour)
    "training/tumor/tumor_001.tif": (1, True),
    "training/normal/normal_001.tif": (2, False),
    "testing/images/test_001.tif": (3, True),
    "testing/images/test_002.tif": (4, False),
}


def rect(box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


POLYGONS = [("_0", rect(LESION)), ("Tumor", rect(SLIVER)), ("_2", rect(HOLE))]


# Beer-Lambert optical densities of haematoxylin and eosin (unit vectors, a common reference)
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, cells: int, low: float, high: float) -> np.ndarray:
    """A SIZE x SIZE field in [low, high]: a coarse random grid, upsampled bilinearly."""
    grid = rng.uniform(low, high, (cells + 1, cells + 1))
    pos = np.linspace(0, cells, SIZE, endpoint=False)
    i, f = pos.astype(int), pos - pos.astype(int)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # (SIZE, cells + 1)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def slide_array(seed: int, tumour: bool) -> np.ndarray:
    """Background, an H&E-stained tissue block and (tumour slides) a denser, darker lesion.

    Tissue is rendered from haematoxylin and eosin concentrations that vary smoothly and per
    pixel, so a Macenko stain fit finds its two stains (notebook 03 fits them on these patches).
    """
    rng = np.random.default_rng(seed)
    conc_h = _smooth_field(rng, 16, 0.35, 0.9) + rng.uniform(0, 0.25, (SIZE, SIZE))
    conc_e = _smooth_field(rng, 16, 0.3, 0.8) + rng.uniform(0, 0.25, (SIZE, SIZE))
    if tumour:
        x0, y0, x1, y1 = LESION
        conc_h[y0:y1, x0:x1] *= 1.8
    od = conc_h[..., None] * _STAINS[0] + conc_e[..., None] * _STAINS[1]
    tissue = 255.0 * np.exp(-od)
    img = np.full((SIZE, SIZE, 3), 238.0)
    img[:TISSUE_Y, :TISSUE_X] = tissue[:TISSUE_Y, :TISSUE_X]
    img += rng.integers(-4, 5, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_slide(path: Path, arr: np.ndarray) -> None:
    """A tiled pyramidal TIFF (3 levels, 256 tiles, deflate): openslide's generic-tiff driver."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            level = np.ascontiguousarray(arr[:: 2**k, :: 2**k])
            tif.write(level, tile=(256, 256), compression="zlib", photometric="rgb",
                      subfiletype=0 if k == 0 else 1)


def write_xml(path: Path, polygons) -> None:
    """ASAP annotation XML with one polygon per (group, points) pair."""
    path.parent.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (group, pts) in enumerate(polygons):
        coords = "".join(
            f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts)
        )
        items.append(
            f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" '
            f'Color="#F4FA58"><Coordinates>{coords}</Coordinates></Annotation>'
        )
    path.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>' + "".join(items)
        + '</Annotations><AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#00ff00">'
        "<Attributes /></Group></AnnotationGroups></ASAP_Annotations>"
    )


def write_download(src: Path) -> dict[str, np.ndarray]:
    """Write the slides and annotations under `src`; return each slide's pixels by file name."""
    arrays = {}
    for rel, (seed, tumour) in SLIDES.items():
        arr = slide_array(seed, tumour)
        write_slide(src / rel, arr)
        arrays[Path(rel).name] = arr
        if tumour:
            group = rel.split("/")[0]
            write_xml(src / group / "lesion_annotations" / f"{Path(rel).stem}.xml", POLYGONS)
    return arrays


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/synthetic_wsi.py <folder to write the download into>")
    write_download(Path(sys.argv[1]))
    print(f"wrote {len(SLIDES)} synthetic CAMELYON16 slides under {sys.argv[1]}")
