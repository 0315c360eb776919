"""Procedural H&E-like histology with masks: the embedded datasets that need no download.

Two domains, so that out-of-distribution and stain-shift experiments have a source and a target
that differ the way GlaS and CAMELYON16 do (tissue, classes, what the mask marks, and colour).

``domain="glas"`` (GlaS-like). Both classes contain glands (as in GlaS, the localisation target
is the gland whatever the class), so a classifier has to learn *what the glands look like*, not
whether they are there:

* benign (0): round/elliptic glands of similar size, well separated, one basal row of small regular
  nuclei, few stroma nuclei;
* malignant (1): irregular outlines (Fourier-perturbed radius), crowded and partly fused glands,
  stratified large dark pleomorphic nuclei, debris in the lumens, more stroma (inflammatory) nuclei.

``domain="camelyon16"`` (CAMELYON16-like lymph node patches). The mask is the metastasis:

* normal (0): dense small round dark lymphocytes over pale pink stroma, pale sinus-like channels
  with a few histiocytes, fat vacuoles here and there; no foreground (an all-zero mask);
* tumor (1): the same node with one to three smooth irregular metastatic regions covering 10-60%
  of the patch, made of cohesive nests of large pale (vesicular) pleomorphic nuclei with nucleoli
  and more eosinophilic cytoplasm; the mask is exactly that region.

Colour follows Beer-Lambert: optical density OD = c_H * h + c_E * e (+ a small background), RGB =
255 * exp(-OD), with the stain vectors taken from the spec: a stain shift is a change of the spec.
Each domain has its own default stain pair (CAMELYON16-like: a more purple haematoxylin and a pinker
eosin than the Ruifrok-Johnston pair of GlaS-like).
Everything is drawn from numpy Generators derived from (seed, image index): the same spec gives
byte-identical PNGs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from pixelcam.atomic import write_text
from pixelcam.data.folds import ENCODING_FILE, Record, write_split
from pixelcam.errors import ConfigError, DataError

# Bump when the rendering changes: it is part of the digest, so cached datasets are regenerated.
GENERATOR_VERSION = 2
# Ruifrok & Johnston optical-density vectors of haematoxylin and eosin (rows; normalised on use).
H_OD = (0.65, 0.70, 0.29)
E_OD = (0.07, 0.99, 0.11)
# CAMELYON16-like pair: the haematoxylin absorbs less red and more blue (purple rather than blue),
# the eosin absorbs more blue (pink-red rather than magenta), roughly as stain vectors estimated
# on lymph-node slides compare with the Ruifrok-Johnston ones.
CAMELYON_H_OD = (0.56, 0.72, 0.41)
CAMELYON_E_OD = (0.22, 0.80, 0.56)
CLASS_NAMES = ("benign", "malignant")  # GlaS-like; see DOMAINS for every domain
ENCODING = {"benign": 0, "malignant": 1}
DOMAINS: dict[str, dict] = {
    "glas": {"class_names": CLASS_NAMES, "stain_matrix": (H_OD, E_OD)},
    "camelyon16": {"class_names": ("normal", "tumor"),
                   "stain_matrix": (CAMELYON_H_OD, CAMELYON_E_OD)},
}
FOLD_DIR = Path("folds") / "fold-0"
MANIFEST = "MANIFEST.json"
_VALPX_STREAM = 1  # spawn key of the split-selection rng; images use (0, index)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the synthetic dataset; its digest names the cached copy."""

    n_train: int = 60
    n_valcl: int = 16
    n_test: int = 40
    n_valpx_per_class: int = 3
    width: int = 192
    height: int = 160
    seed: int = 0
    # None = the domain's own pair (DOMAINS); set after construction to the resolved matrix, so
    # dataclasses.replace(spec, domain=...) keeps the old colours: pass stain_matrix=None with it.
    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    domain: str = "glas"

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or self.domain not in DOMAINS:
            raise ConfigError(
                f"synthetic domain {self.domain!r} is not known: use one of {sorted(DOMAINS)}"
            )
        if self.stain_matrix is None:
            object.__setattr__(self, "stain_matrix", DOMAINS[self.domain]["stain_matrix"])
        names = ("n_train", "n_valcl", "n_test", "n_valpx_per_class", "width", "height", "seed")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"synthetic {name} must be an integer, got {value!r}")
        for name, low in (("n_train", 2), ("n_test", 2), ("n_valpx_per_class", 1),
                          ("width", 32), ("height", 32), ("seed", 0)):
            if getattr(self, name) < low:
                raise ConfigError(
                    f"synthetic {name}={getattr(self, name)} is too small: use a value >= {low}"
                )
        if self.n_valcl // 2 < self.n_valpx_per_class:
            raise ConfigError(
                f"synthetic n_valcl={self.n_valcl} cannot hold n_valpx_per_class="
                f"{self.n_valpx_per_class} images per class: use n_valcl >= "
                f"{2 * self.n_valpx_per_class}"
            )
        try:
            matrix = tuple(tuple(float(v) for v in row) for row in self.stain_matrix)
        except (TypeError, ValueError):
            matrix = ()
        ok = (
            len(matrix) == 2
            and all(len(row) == 3 for row in matrix)
            and all(math.isfinite(v) and v >= 0 for row in matrix for v in row)
            and all(sum(v * v for v in row) > 0 for row in matrix)
        )
        if not ok:
            raise ConfigError(
                f"synthetic stain_matrix {self.stain_matrix!r} must be two rows (H, E) of three "
                "non-negative optical densities, e.g. "
                f"{[list(row) for row in DOMAINS[self.domain]['stain_matrix']]}"
            )
        # YAML gives lists; tuples keep the spec hashable and its digest independent of the source.
        object.__setattr__(self, "stain_matrix", matrix)

    @property
    def class_names(self) -> tuple[str, str]:
        """Names of labels 0 and 1 in this domain."""
        return DOMAINS[self.domain]["class_names"]

    @property
    def encoding(self) -> dict[str, int]:
        """``{class_name: label}`` as written to encoding.yaml."""
        return {name: label for label, name in enumerate(self.class_names)}

    def to_dict(self) -> dict:
        """Plain-JSON form, for the manifest and the digest.

        The default domain is left out so GlaS-like specs keep the digest (cache name) and the
        manifest bytes they had before domains existed; every other domain is part of both.
        """
        out = dataclasses.asdict(self)
        out["stain_matrix"] = [list(row) for row in self.stain_matrix]
        if out["domain"] == "glas":
            del out["domain"]
        return out

    def digest(self) -> str:
        """Stable short hash of all fields (and the generator version) that names the cache dir."""
        payload = {"spec": self.to_dict(), "generator_version": GENERATOR_VERSION}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian random field: the base of every texture."""
    # Smooth fields are drawn on a coarse grid and upsampled: same look, a fraction of the cost.
    step = max(1, int(sigma // 3))
    coarse = (shape[0] // step + 2, shape[1] // step + 2)
    field = gaussian_filter(rng.standard_normal(coarse), sigma / step, mode="wrap")
    if step > 1:
        field = zoom(field, step, order=1)
    field = field[: shape[0], : shape[1]]
    std = field.std()
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


@dataclass
class _Gland:
    cy: float
    cx: float
    angle: float
    a: float  # semi-axis along `angle`
    b: float
    amps: np.ndarray  # Fourier amplitudes of the outline, harmonics 2..K+1
    phases: np.ndarray
    lumen: float  # lumen radius as a fraction of the outline
    lumen_amps: np.ndarray
    lumen_phases: np.ndarray

    @property
    def reach(self) -> float:
        return max(self.a, self.b) * (1.0 + float(np.abs(self.amps).sum()))


def _harmonics(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    k = np.arange(2, 2 + len(amps), dtype=np.float32)
    shape = (-1,) + (1,) * theta.ndim
    terms = amps.reshape(shape) * np.cos(k.reshape(shape) * theta + phases.reshape(shape))
    return 1.0 + terms.sum(axis=0)


def _gland_coords(g: _Gland, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rho, theta): rho < 1 inside the outline, rho < g.lumen * L(theta) inside the lumen."""
    dx, dy = xx - g.cx, yy - g.cy
    c, s = math.cos(g.angle), math.sin(g.angle)
    un = (dx * c + dy * s) / g.a
    vn = (-dx * s + dy * c) / g.b
    theta = np.arctan2(vn, un)
    rho = np.hypot(un, vn) / _harmonics(theta, g.amps, g.phases)
    return rho, theta


def _gland_point(g: _Gland, rho: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (y, x) of the points with the given (rho, theta): inverse of _gland_coords."""
    r = rho * _harmonics(theta, g.amps, g.phases)
    un, vn = g.a * r * np.cos(theta), g.b * r * np.sin(theta)
    c, s = math.cos(g.angle), math.sin(g.angle)
    return g.cy + un * s + vn * c, g.cx + un * c - vn * s


def _class_params(label: int, s: float) -> dict:
    if label == 0:
        return {
            "radius": (0.13 * s, 0.155 * s), "size_jitter": 0.06, "aspect": (1.0, 1.35),
            "amp": 0.025, "n_harm": 3, "sep": 1.08, "lumen": (0.42, 0.55), "lumen_amp": 0.03,
            "coverage": (0.25, 0.40),
        }
    return {
        "radius": (0.09 * s, 0.17 * s), "size_jitter": 0.0, "aspect": (1.0, 1.9),
        "amp": 0.16, "n_harm": 5, "sep": 0.55, "lumen": (0.22, 0.45), "lumen_amp": 0.18,
        "coverage": (0.35, 0.50),
    }


def _place_glands(
    rng: np.random.Generator, label: int, h: int, w: int, yy: np.ndarray, xx: np.ndarray
) -> tuple[list[_Gland], list[np.ndarray], list[np.ndarray]]:
    s = float(min(h, w))
    p = _class_params(label, s)
    target = rng.uniform(*p["coverage"])
    base_r = rng.uniform(*p["radius"])
    glands: list[_Gland] = []
    rhos: list[np.ndarray] = []
    thetas: list[np.ndarray] = []
    covered = np.zeros((h, w), dtype=bool)
    for _ in range(300):
        if covered.mean() >= target:
            break
        if p["size_jitter"] > 0:  # benign: one size per image, small jitter
            r = base_r * rng.uniform(1 - p["size_jitter"], 1 + p["size_jitter"])
        else:  # malignant: pleomorphic glands
            r = rng.uniform(*p["radius"])
        aspect = rng.uniform(*p["aspect"])
        decay = 1.0 / np.arange(1, p["n_harm"] + 1)
        g = _Gland(
            cy=rng.uniform(0.05 * h, 0.95 * h),
            cx=rng.uniform(0.05 * w, 0.95 * w),
            angle=rng.uniform(0, math.pi),
            a=r * math.sqrt(aspect),
            b=r / math.sqrt(aspect),
            amps=(p["amp"] * decay * rng.uniform(0.5, 1.0, p["n_harm"])).astype(np.float32),
            phases=rng.uniform(0, 2 * math.pi, p["n_harm"]).astype(np.float32),
            lumen=rng.uniform(*p["lumen"]),
            lumen_amps=(p["lumen_amp"] * decay * rng.uniform(0.5, 1.0, p["n_harm"])).astype(
                np.float32
            ),
            lumen_phases=rng.uniform(0, 2 * math.pi, p["n_harm"]).astype(np.float32),
        )
        # Benign glands keep clear of each other; malignant ones may overlap (fusion).
        if any(
            math.hypot(g.cy - o.cy, g.cx - o.cx) < p["sep"] * (g.reach + o.reach) for o in glands
        ):
            continue
        rho, theta = _gland_coords(g, yy, xx)
        glands.append(g)
        rhos.append(rho)
        thetas.append(theta)
        covered |= rho < 1.0
    return glands, rhos, thetas


def _stamp_nuclei(
    h: int,
    w: int,
    cy: np.ndarray,
    cx: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    angle: np.ndarray,
    density: np.ndarray,
    irregular: np.ndarray,
    phase: np.ndarray,
    hollow: np.ndarray | None = None,
) -> np.ndarray:
    """Haematoxylin map of N elliptic nuclei, evaluated on an (N, K, K) patch stack at once.

    `hollow` (0..1) pales the interior of each nucleus and keeps its rim: vesicular nuclei.
    """
    out = np.zeros((h, w), dtype=np.float32)
    if len(cy) == 0:
        return out
    half = math.ceil(float(np.maximum(ra, rb).max() * (1 + irregular.max()))) + 1
    off = np.arange(-half, half + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    py = np.rint(cy).astype(np.int64)[:, None, None] + oy
    px = np.rint(cx).astype(np.int64)[:, None, None] + ox
    dy = py - cy[:, None, None]
    dx = px - cx[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    un = (dx * c + dy * s) / ra[:, None, None]
    vn = (-dx * s + dy * c) / rb[:, None, None]
    theta = np.arctan2(vn, un)
    d = np.hypot(un, vn) / (1 + irregular[:, None, None] * np.cos(2 * theta + phase[:, None, None]))
    value = density[:, None, None] * np.clip((1.15 - d) / 0.35, 0.0, 1.0)
    if hollow is not None:
        value = value * (1.0 - hollow[:, None, None] * np.clip((0.8 - d) / 0.3, 0.0, 1.0))
    keep = (py >= 0) & (py < h) & (px >= 0) & (px < w) & (value > 0)
    # Maximum, not sum: touching nuclei must not look twice as dark.
    np.maximum.at(out, (py[keep], px[keep]), value[keep].astype(np.float32))
    return out


def _nuclei_table() -> dict[str, list[np.ndarray]]:
    return {k: [] for k in ("cy", "cx", "ra", "rb", "angle", "density", "irregular", "phase")}


def _add(table: dict[str, list[np.ndarray]], **cols: np.ndarray | float) -> None:
    n = len(np.atleast_1d(cols["cy"]))
    for k, v in cols.items():
        table[k].append(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy())


def _sample_points(
    rng: np.random.Generator, region: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """n points drawn uniformly inside a boolean region (sub-pixel positions)."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0 or n <= 0:
        return np.zeros(0), np.zeros(0)
    pick = rng.integers(0, len(ys), n)
    return ys[pick] + rng.uniform(-0.5, 0.5, n), xs[pick] + rng.uniform(-0.5, 0.5, n)


def render_image(
    rng: np.random.Generator, label: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one (H, W, 3) uint8 image and its (H, W) bool mask for class `label` of spec.domain."""
    if label not in (0, 1):
        names = spec.class_names
        raise ConfigError(
            f"synthetic label must be 0 ({names[0]}) or 1 ({names[1]}) in domain "
            f"{spec.domain!r}, got {label!r}"
        )
    if spec.domain == "camelyon16":
        return _render_camelyon(rng, label, spec)
    return _render_glas(rng, label, spec)


def _to_rgb(
    rng: np.random.Generator, c_h: np.ndarray, c_e: np.ndarray, spec: SyntheticSpec
) -> np.ndarray:
    """Beer-Lambert: stain concentrations -> optical density with the spec's stains -> RGB."""
    h, w = c_h.shape
    stains = np.asarray(spec.stain_matrix, dtype=np.float32)
    stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
    od = c_h[..., None] * stains[0] + c_e[..., None] * stains[1] + 0.03
    od = od + 0.015 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return np.clip(np.rint(255.0 * np.exp(-np.clip(od, 0.0, None))), 0, 255).astype(np.uint8)


def _render_glas(
    rng: np.random.Generator, label: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray]:
    h, w = spec.height, spec.width
    s = float(min(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    malignant = label == 1

    glands, rhos, thetas = _place_glands(rng, label, h, w, yy, xx)
    if glands:
        rho = np.stack(rhos)
        theta = np.stack(thetas)
        lumen_edge = np.stack(
            [g.lumen * _harmonics(t, g.lumen_amps, g.lumen_phases) for g, t in zip(glands, theta)]
        )
        mask = (rho < 1.0).any(axis=0)
        lumen = (rho < lumen_edge).any(axis=0)
    else:  # cannot happen with the class parameters, kept so tiny images never crash
        mask = np.zeros((h, w), dtype=bool)
        lumen = mask.copy()
    epithelium = mask & ~lumen
    stroma = ~mask

    # Soft region weights: the boundaries of real tissue are not pixel-sharp.
    w_lumen = gaussian_filter(lumen.astype(np.float32), 0.8)
    w_epi = gaussian_filter(epithelium.astype(np.float32), 0.8)
    w_stroma = np.clip(1.0 - w_lumen - w_epi, 0.0, 1.0)

    # Stroma: eosinophilic collagen fibres following a slowly turning direction field.
    direction = rng.uniform(0, math.pi) + 0.9 * _smooth_noise(rng, (h, w), 0.35 * s)
    wavelength = max(3.0, 0.07 * s)
    phase = (xx * np.cos(direction) + yy * np.sin(direction)) * (2 * math.pi / wavelength)
    phase += 2.5 * _smooth_noise(rng, (h, w), 0.08 * s)
    strength = np.clip(0.7 + 0.3 * _smooth_noise(rng, (h, w), 0.1 * s), 0.2, 1.0)
    fibres = (0.5 + 0.5 * np.sin(phase)) ** 2 * strength
    looseness = np.clip(0.75 + 0.25 * _smooth_noise(rng, (h, w), 0.15 * s), 0.3, 1.0)
    fine = _smooth_noise(rng, (h, w), 0.8)
    stroma_e = (0.22 + 0.30 * fibres + 0.03 * fine) * looseness
    stroma_h = 0.05 + 0.015 * fine

    epi_tex = _smooth_noise(rng, (h, w), 1.5)
    epi_e = 0.50 + 0.06 * epi_tex + (0.08 if malignant else 0.0)
    epi_h = (0.22 if malignant else 0.14) + 0.03 * epi_tex
    lumen_e = 0.06 + 0.04 * np.clip(_smooth_noise(rng, (h, w), 0.05 * s), 0, None)
    lumen_h = 0.02

    c_e = w_stroma * stroma_e + w_epi * epi_e + w_lumen * lumen_e
    c_h = w_stroma * stroma_h + w_epi * epi_h + w_lumen * lumen_h

    # Nuclei.
    r_n = max(0.9, 0.016 * s)
    table = _nuclei_table()
    for g in glands:
        mean_r = 0.5 * (g.a + g.b)
        if malignant:  # stratified: nuclei fill much of the epithelium, several rows
            n = int(1.7 * math.pi * 2 * mean_r * 0.8 / (2.0 * r_n))
            t = rng.uniform(0.1, 0.95, n)
            th = rng.uniform(-math.pi, math.pi, n)
        else:  # one basal row, evenly spaced
            n = int(math.pi * 2 * mean_r * 0.85 / (2.3 * r_n))
            th = np.linspace(-math.pi, math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi)
            th = (th + rng.normal(0, 0.3 / max(n, 1), n) + math.pi) % (2 * math.pi) - math.pi
            t = np.clip(rng.normal(0.72, 0.04, n), 0.5, 0.92)
        edge = g.lumen * _harmonics(th, g.lumen_amps, g.lumen_phases)
        rho_n = edge + t * (1.0 - edge)
        ny, nx = _gland_point(g, rho_n, th)
        radial = np.arctan2(ny - g.cy, nx - g.cx)
        if malignant:
            _add(table, cy=ny, cx=nx, ra=r_n * rng.uniform(1.5, 2.3, n),
                 rb=r_n * rng.uniform(1.0, 1.6, n), angle=rng.uniform(0, math.pi, n),
                 density=rng.uniform(1.25, 1.7, n), irregular=rng.uniform(0.08, 0.3, n),
                 phase=rng.uniform(0, 2 * math.pi, n))
        else:  # elongated along the radius, like palisading colonic nuclei
            _add(table, cy=ny, cx=nx, ra=r_n * rng.uniform(1.35, 1.55, n),
                 rb=r_n * rng.uniform(0.8, 0.95, n), angle=radial,
                 density=rng.uniform(0.95, 1.1, n), irregular=0.03,
                 phase=rng.uniform(0, 2 * math.pi, n))

    stroma_px = float(stroma.sum())
    n_fibro = round(stroma_px * (0.0012 if not malignant else 0.0016))
    fy, fx = _sample_points(rng, stroma, n_fibro)
    iy = np.clip(np.rint(fy).astype(np.int64), 0, h - 1)
    ix = np.clip(np.rint(fx).astype(np.int64), 0, w - 1)
    f_dir = direction[iy, ix]
    _add(table, cy=fy, cx=fx, ra=r_n * rng.uniform(1.8, 2.6, n_fibro),
         rb=r_n * rng.uniform(0.45, 0.6, n_fibro), angle=f_dir + math.pi / 2,
         density=rng.uniform(0.8, 1.0, n_fibro), irregular=0.05,
         phase=rng.uniform(0, 2 * math.pi, n_fibro))
    n_lymph = round(stroma_px * (0.0006 if not malignant else 0.0035))
    ly, lx = _sample_points(rng, stroma, n_lymph)
    _add(table, cy=ly, cx=lx, ra=r_n * rng.uniform(0.8, 1.0, n_lymph),
         rb=r_n * rng.uniform(0.75, 0.95, n_lymph), angle=rng.uniform(0, math.pi, n_lymph),
         density=rng.uniform(1.3, 1.6, n_lymph), irregular=0.05,
         phase=rng.uniform(0, 2 * math.pi, n_lymph))
    if malignant:  # "dirty necrosis": nuclear debris in the lumens
        n_debris = round(float(lumen.sum()) * 0.01)
        dy, dx = _sample_points(rng, lumen, n_debris)
        _add(table, cy=dy, cx=dx, ra=r_n * rng.uniform(0.4, 0.8, n_debris),
             rb=r_n * rng.uniform(0.3, 0.6, n_debris), angle=rng.uniform(0, math.pi, n_debris),
             density=rng.uniform(0.9, 1.4, n_debris), irregular=0.2,
             phase=rng.uniform(0, 2 * math.pi, n_debris))

    cols = {k: np.concatenate(v) if v else np.zeros(0) for k, v in table.items()}
    nuclei = _stamp_nuclei(h, w, **cols)
    chromatin = np.clip(0.85 + 0.15 * _smooth_noise(rng, (h, w), 0.6), 0.5, 1.2)
    nuc = gaussian_filter(nuclei, 0.5) * chromatin
    c_h = np.maximum(c_h, nuc)
    c_e = c_e * (1.0 - 0.6 * np.clip(nuc, 0.0, 1.0))
    return _to_rgb(rng, c_h, c_e, spec), mask


# --------------------------------------------------------------------------------------------
# CAMELYON16-like lymph node


def _jittered_grid(
    rng: np.random.Generator, h: int, w: int, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points on a grid of `spacing` with jitter: densely packed cells that rarely overlap."""
    gy = np.arange(spacing / 2, h, spacing)
    gx = np.arange(spacing / 2, w, spacing)
    py, px = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    py = py + rng.uniform(-0.3, 0.3, py.size) * spacing
    px = px + rng.uniform(-0.3, 0.3, px.size) * spacing
    return py, px


def _lookup(field: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    h, w = field.shape
    iy = np.clip(np.rint(py).astype(np.int64), 0, h - 1)
    ix = np.clip(np.rint(px).astype(np.int64), 0, w - 1)
    return field[iy, ix]


def _blob_rho(
    rng: np.random.Generator, n: int, h: int, w: int, yy: np.ndarray, xx: np.ndarray,
    centre: tuple[float, float], size: tuple[float, float], aspect: tuple[float, float],
    amp: float,
) -> np.ndarray:
    """(n, H, W) normalised radius of n Fourier-perturbed ellipses (< 1 inside each)."""
    s = float(min(h, w))
    out = np.empty((n, h, w), dtype=np.float32)
    n_harm = 4
    decay = 1.0 / np.arange(1, n_harm + 1)
    for k in range(n):
        r = rng.uniform(*size) * s
        asp = rng.uniform(*aspect)
        g = _Gland(
            cy=rng.uniform(centre[0], 1 - centre[0]) * h,
            cx=rng.uniform(centre[1], 1 - centre[1]) * w,
            angle=rng.uniform(0, math.pi), a=r * math.sqrt(asp), b=r / math.sqrt(asp),
            amps=(amp * decay * rng.uniform(0.5, 1.0, n_harm)).astype(np.float32),
            phases=rng.uniform(0, 2 * math.pi, n_harm).astype(np.float32),
            lumen=0.0, lumen_amps=np.zeros(0, np.float32), lumen_phases=np.zeros(0, np.float32),
        )
        out[k] = _gland_coords(g, yy, xx)[0]
    return out


def _metastasis_mask(
    rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """One to three smooth irregular blobs whose union covers 12-55% of the patch exactly."""
    s = float(min(h, w))
    n = int(rng.integers(1, 4))
    target = rng.uniform(0.12, 0.55)
    rho = _blob_rho(rng, n, h, w, yy, xx, centre=(0.15, 0.15), size=(0.6, 1.4),
                    aspect=(1.0, 1.8), amp=0.3).min(axis=0)
    # Ragged (but still smooth) invasion front; then a threshold that gives the drawn coverage.
    rho = rho * (1.0 + 0.12 * _smooth_noise(rng, (h, w), 0.06 * s))
    k = max(1, round(target * h * w))
    threshold = np.partition(rho.ravel(), k - 1)[k - 1]
    return rho <= threshold


def _render_camelyon(
    rng: np.random.Generator, label: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray]:
    h, w = spec.height, spec.width
    s = float(min(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r_n = max(0.9, 0.014 * s)

    mask = _metastasis_mask(rng, h, w, yy, xx) if label == 1 else np.zeros((h, w), dtype=bool)

    # Sinuses: meandering pale channels along the zero set of a smooth field, in part of the patch.
    width = 0.16 + 0.06 * _smooth_noise(rng, (h, w), 0.25 * s)
    gate = _smooth_noise(rng, (h, w), 0.3 * s) > rng.uniform(-0.6, 0.6)
    sinus = (np.abs(_smooth_noise(rng, (h, w), 0.1 * s)) < width) & gate & ~mask
    # Fat: zero to three round empty vacuoles with a thin membrane.
    n_fat = int(rng.choice([0, 0, 1, 1, 2, 3]))
    if n_fat:
        fat_rho = _blob_rho(rng, n_fat, h, w, yy, xx, centre=(0.0, 0.0), size=(0.05, 0.13),
                            aspect=(1.0, 1.3), amp=0.06).min(axis=0)
    else:
        fat_rho = np.full((h, w), np.inf, dtype=np.float32)
    fat = (fat_rho < 1.0) & ~mask
    sinus &= ~fat
    node = ~(mask | sinus | fat)

    w_t = gaussian_filter(mask.astype(np.float32), 0.8)
    w_s = gaussian_filter(sinus.astype(np.float32), 1.0)
    w_f = gaussian_filter(fat.astype(np.float32), 0.6)
    w_n = np.clip(1.0 - w_t - w_s - w_f, 0.0, 1.0)

    fine = _smooth_noise(rng, (h, w), 0.8)
    tex = _smooth_noise(rng, (h, w), 0.05 * s)
    node_e = 0.17 + 0.04 * tex + 0.02 * fine
    node_h = 0.07 + 0.015 * fine
    sinus_e = 0.07 + 0.05 * np.clip(tex, 0.0, None)  # a little lymph / proteinaceous fluid
    sinus_h = 0.02
    # Nests of tumour cells separated by thin fibrous septa; eosinophilic cytoplasm.
    septa = mask & (np.abs(_smooth_noise(rng, (h, w), 0.09 * s)) < 0.1)
    tumour_e = np.where(septa, 0.30, 0.40 + 0.06 * _smooth_noise(rng, (h, w), 1.5))
    tumour_h = np.where(septa, 0.05, 0.11 + 0.02 * fine)
    membrane = np.clip(1.0 - np.abs(fat_rho - 1.0) * (0.07 * s) / 0.8, 0.0, 1.0) * ~mask
    c_e = w_n * node_e + w_s * sinus_e + w_t * tumour_e + 0.28 * membrane
    c_h = w_n * node_h + w_s * sinus_h + w_t * tumour_h

    # Lymphocytes: small round dark nuclei, densely packed in the node, sparse elsewhere.
    py, px = _jittered_grid(rng, h, w, 2.5 * r_n)
    density = np.clip(0.8 + 0.15 * _smooth_noise(rng, (h, w), 0.2 * s), 0.4, 0.97)
    keep_p = np.where(node, density, 0.0) + 0.12 * sinus + 0.05 * (mask & ~septa)
    keep = rng.uniform(size=py.size) < _lookup(keep_p, py, px)
    py, px = py[keep], px[keep]
    n = py.size
    ra = r_n * rng.uniform(0.85, 1.05, n)
    small = _stamp_nuclei(h, w, py, px, ra, ra * rng.uniform(0.85, 1.0, n),
                          rng.uniform(0, math.pi, n), rng.uniform(1.45, 1.85, n),
                          np.full(n, 0.04), rng.uniform(0, 2 * math.pi, n))
    # Sinus histiocytes: a few larger pale nuclei (present in both classes).
    hy, hx = _sample_points(rng, sinus, round(float(sinus.sum()) * 0.004))
    n = hy.size
    ra = r_n * rng.uniform(1.3, 1.7, n)
    big = [(hy, hx, ra, ra * rng.uniform(0.6, 0.9, n), rng.uniform(0.6, 0.85, n),
            rng.uniform(0.1, 0.25, n), np.full(n, 0.3))]
    if label == 1:
        # Tumour cells: large pale pleomorphic vesicular nuclei in cohesive nests, with nucleoli.
        ty, tx = _jittered_grid(rng, h, w, 4.3 * r_n)
        inside = _lookup(mask & ~septa, ty, tx) & (rng.uniform(size=ty.size) < 0.92)
        ty, tx = ty[inside], tx[inside]
        n = ty.size
        ra = r_n * rng.uniform(1.6, 2.5, n)
        big.append((ty, tx, ra, ra * rng.uniform(0.65, 1.0, n), rng.uniform(0.75, 1.05, n),
                    rng.uniform(0.1, 0.3, n), rng.uniform(0.4, 0.7, n)))
        off = rng.uniform(0, 0.35, n) * ra
        turn = rng.uniform(0, 2 * math.pi, n)
        rn = np.full(n, max(0.6, 0.4 * r_n))
        small = np.maximum(small, _stamp_nuclei(
            h, w, ty + off * np.sin(turn), tx + off * np.cos(turn), rn, rn,
            np.zeros(n), rng.uniform(1.2, 1.6, n), np.zeros(n), np.zeros(n)))
    cols = [np.concatenate(c) for c in zip(*big)]
    cy, cx, ra, rb, dens, irr, hollow = cols
    n = cy.size
    large = _stamp_nuclei(h, w, cy, cx, ra, rb, rng.uniform(0, math.pi, n), dens, irr,
                          rng.uniform(0, 2 * math.pi, n), hollow=hollow)

    chromatin = np.clip(0.85 + 0.15 * _smooth_noise(rng, (h, w), 0.6), 0.5, 1.2)
    nuc = gaussian_filter(np.maximum(small, large), 0.5) * chromatin
    c_h = np.maximum(c_h, nuc)
    c_e = c_e * (1.0 - 0.6 * np.clip(nuc, 0.0, 1.0))
    return _to_rgb(rng, c_h, c_e, spec), mask


# --------------------------------------------------------------------------------------------
# dataset on disk


def _split_plan(spec: SyntheticSpec) -> list[tuple[str, list[int], list[int]]]:
    """(split, global image indices, labels); labels alternate so every split is balanced."""
    plan = []
    start = 0
    for split, n in (("train", spec.n_train), ("valcl", spec.n_valcl), ("test", spec.n_test)):
        indices = list(range(start, start + n))
        plan.append((split, indices, [k % 2 for k in range(n)]))
        start += n
    return plan


def _image_rng(spec: SyntheticSpec, index: int) -> np.random.Generator:
    # Own stream per image: an image does not change when other images are added or removed.
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0, index)))


def write_dataset(root: str | Path, spec: SyntheticSpec) -> Path:
    """Render the whole dataset into `root` in the fold format; MANIFEST.json last marks it done."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST
    if manifest.exists():  # a rewrite in progress must not look complete
        manifest.unlink()
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)

    records: dict[str, list[Record]] = {}
    for split, indices, labels in _split_plan(spec):
        recs = []
        for index, label in zip(indices, labels):
            image, mask = render_image(_image_rng(spec, index), label, spec)
            image_id = f"images/synth_{index:05d}.png"
            mask_path = f"masks/synth_{index:05d}.png"
            Image.fromarray(image).save(root / image_id, format="PNG")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_path, format="PNG")
            recs.append(Record(image_id, label, spec.width, spec.height, mask_path))
        records[split] = recs

    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(_VALPX_STREAM,)))
    chosen: set[str] = set()
    for label in (0, 1):
        pool = [r.image_id for r in records["valcl"] if r.label == label]
        picks = rng.choice(len(pool), size=spec.n_valpx_per_class, replace=False)
        chosen.update(pool[int(k)] for k in picks)
    records["valpx"] = [r for r in records["valcl"] if r.image_id in chosen]

    encoding = spec.encoding
    write_text(root / ENCODING_FILE, "".join(f"{k}: {v}\n" for k, v in encoding.items()))
    fold = root / FOLD_DIR
    for split in ("train", "valcl", "valpx", "test"):
        write_split(fold, split, records[split])

    payload = {
        "generator": "pixelcam.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "digest": spec.digest(),
        "spec": spec.to_dict(),
        "fold_dir": FOLD_DIR.as_posix(),
        "encoding": encoding,
        "counts": {split: len(recs) for split, recs in records.items()},
    }
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    return root


def _is_complete(root: Path, spec: SyntheticSpec) -> bool:
    path = root / MANIFEST
    if not path.is_file():
        return False
    try:
        digest = json.loads(path.read_text(encoding="utf-8")).get("digest")
    except (OSError, ValueError, AttributeError):
        digest = None
    if digest != spec.digest():
        raise DataError(
            f"{path} does not describe spec digest {spec.digest()} (found {digest!r}): "
            f"delete {root} and it will be regenerated"
        )
    return True


def ensure_dataset(cache_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Return `cache_dir/synthetic-<digest>`, generating it once; a crash never leaves a fake."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"synthetic-{spec.digest()}"
    if _is_complete(target, spec):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-synthetic-{spec.digest()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_dataset(tmp, spec)
        if target.exists() and not (target / MANIFEST).exists():
            # Not ours to keep: an incomplete directory never came from os.replace below.
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same dataset first: use it.
            if not _is_complete(target, spec):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
