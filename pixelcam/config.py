"""Typed run configuration: flat YAML params, validated, with stable hashes for the run cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pixelcam.datasets import DATASETS, missing_root_error
from pixelcam.errors import ConfigError
from pixelcam.methods import METHODS

# What a training is: every key of these groups goes into its run key, whole (a baseline's key
# leaves out the PixelCAM phase's group, the U-Net's also the WSOL head's, as neither reads them)
HASHED_GROUPS = ("data", "model", "wsol", "optimisation", "pixelcam")
# What only the runtime or a notebook reads: never in a run key
UNHASHED_GROUPS = ("runtime", "notebook")


def key(group: str, default: Any = dataclasses.MISSING, *,
        factory: Any = dataclasses.MISSING) -> Any:
    """A Config field in `group` (one of HASHED_GROUPS or UNHASHED_GROUPS)."""
    return field(default=default, default_factory=factory, metadata={"group": group})


@dataclass(frozen=True)
class Config:
    """Every knob of a PixelCAM experiment; params files set a subset, the rest keep these defaults.

    Defaults are the paper's / official code's settings (docs/official-code.md);
    the quick profile overrides them for a CPU. Each key belongs to one group (`key`): the
    hashed groups define a training, the others only how it runs or what a notebook shows.
    """

    # --- data -----------------------------------------------------------------------------
    # the paper dataset this run stands for (its columns in the tables); with data_root
    # "synthetic" it also picks the embedded look-alike (GlaS-like glands, CAMELYON16-like nodes)
    dataset: str = key("data", "glas")
    # folder image ids are relative to; "synthetic" = the embedded default; "" = take it from the
    # environment variable PIXELCAM_<DATASET>_ROOT (e.g. PIXELCAM_GLAS_ROOT), else an error
    data_root: str = key("data", "synthetic")
    # folder with train/valcl/valpx/test; "" = <data_root>/folds/fold-0
    fold_dir: str = key("data", "")
    synthetic_n_train: int = key("data", 60)
    synthetic_n_valcl: int = key("data", 16)
    synthetic_n_test: int = key("data", 40)
    synthetic_n_valpx_per_class: int = key("data", 3)
    synthetic_width: int = key("data", 192)
    synthetic_height: int = key("data", 160)
    synthetic_seed: int = key("data", 0)
    image_size: int = key("data", 224)  # crop size (train) and evaluation size
    # train images are resized to this square before the random crop
    resize_size: int = key("data", 256)
    train_crop: int = key("data", 0)  # side of the random train crop; 0 = image_size (the protocol)
    color_jitter: bool = key("data", True)

    # --- model ----------------------------------------------------------------------------
    backbone: str = key("model", "resnet50")
    pretrained: str = key("model", "false")  # false | timm | <path to a local weight file>
    output_stride: int = key("model", 8)
    # which of timm's feature stages is F for EfficientNet/MobileNet backbones: -1 = the last
    # (EfficientNets: the activated head conv), 3 = EfficientNet-Lite0's blocks.4 (112 channels)
    feature_stage: int = key("model", -1)
    num_classes: int = key("model", 2)
    spatial_dropout: float = key("wsol", 0.1)
    support_background: bool = key("wsol", True)
    method: str = key("wsol", "layercam")  # the WSOL baseline whose CAMs seed PixelCAM
    # official: weights sum(G^2 ReLU(G)) (the alpha division of the official code is a no-op;
    # what produced the paper's numbers) | paper: alpha = G^2 / (2G^2 + sum A G^3)
    gradcampp_variant: str = key("model", "official")

    # --- optimisation (both phases) -------------------------------------------------------
    epochs: int = key("optimisation", 1000)
    batch_size: int = key("optimisation", 32)
    lr: float = key("optimisation", 1e-3)
    # last stage + heads at lr * ratio (opt__lr_classifier_ratio)
    head_lr_ratio: float = key("optimisation", 10.0)
    momentum: float = key("optimisation", 0.9)
    nesterov: bool = key("optimisation", True)
    weight_decay: float = key("optimisation", 1e-4)
    step_size: int = key("optimisation", 5)
    gamma: float = key("optimisation", 0.1)
    lr_floor: float = key("optimisation", 1e-6)
    seed: int = key("optimisation", 0)
    amp: bool = key("optimisation", True)  # mixed precision on CUDA only; CPU always fp32

    # --- PixelCAM phase -------------------------------------------------------------------
    pixelcam_epochs: int = key("pixelcam", 0)  # 0 = same as epochs
    # base lr of the PixelCAM phase (its last stage and heads at x head_lr_ratio); 0 = lr, as
    # the official code. The pixel head starts random on a trained encoder: a lower lr keeps the
    # encoder's features and the B-LOC curve steady (real-cpu profile)
    pixelcam_lr: float = key("pixelcam", 0.0)
    pixel_head: str = key("pixelcam", "linear")  # linear | multi_layer
    seeder: str = key("pixelcam", "pb")  # pb (probability-based) | th (Otsu threshold)
    n_fg: int = key("pixelcam", 5)
    n_bg: int = key("pixelcam", 5)
    # PB reads sl_ng_min_p (0.2) in the official code, not the README's 0.4
    min_p: float = key("pixelcam", 0.2)
    # TH's lowest-CAM BG region: the official TH reads sl_min_p, 0.4 in the official command
    th_min_p: float = key("pixelcam", 0.4)
    # official: uniform in the lowest-min_p region | paper: ~ 1-CAM
    bg_mode: str = key("pixelcam", "official")
    lam: float = key("pixelcam", 1.0)
    # baseline checkpoint whose CAMs seed PixelCAM (Table 14)
    cam_checkpoint: str = key("pixelcam", "b-loc")
    # baseline checkpoint PixelCAM starts from (official README)
    init_checkpoint: str = key("pixelcam", "b-cl")
    low_res: bool = key("pixelcam", False)  # True: CE at feature resolution on a downsampled CAM
    # "" = pseudo-labels from the baseline trained on this dataset; glas | camelyon16 = from the
    # baseline trained on that (external) dataset, which also initialises PixelCAM (Table 18)
    cam_source: str = key("pixelcam", "")
    # all | positive (CAMELYON with neg_samples_partial False)
    pixel_loss_rows: str = key("pixelcam", "all")


    # --- runtime: where and how a run executes (not hashed: never changes a trained model) ---
    # checkpoint whose test numbers are the headline (official default)
    select: str = key("runtime", "b-loc")
    eval_batch_size: int = key("runtime", 64)
    device: str = key("runtime", "auto")  # auto | cpu | cuda | cuda:N
    # torch.compile the training forward: faster steps after a one-off compile; same results up to
    # float tolerance (fused kernels round differently), hence not hashed
    compile: bool = key("runtime", False)
    num_workers: int = key("runtime", 0)
    # decoded, resized images of a training's train/valcl/valpx splits kept in memory when they
    # fit in this many MB (GlaS at 256 px: ~20 MB); 0 = decode every image at every read
    image_cache_mb: int = key("runtime", 2048)
    # the resume state (state.pt, and the B-LOC/B-CL weights found since the last write) is
    # written at most once per this many seconds, and always after the last epoch and on SIGTERM;
    # 0 = after every epoch. A SIGKILL loses at most this much training
    state_every_s: float = key("runtime", 60.0)
    # write that resume state at all: off where no run is ever resumed (a preflight empties its
    # cache at each start), which spares writing about twice the model per run. The B-LOC/B-CL
    # weights go to disk at the same points either way, and a SIGTERM still writes the state
    resume_state: bool = key("runtime", True)
    # read every run from the run cache and never train one (a run that is not finished is an
    # error): the reports job of `pixelcam reports --submit`, after the training jobs
    cached_only: bool = key("runtime", False)
    cache_dir: str = key("runtime", ".cache/pixelcam")

    # --- notebooks: which rows, sweeps and figures (not hashed: each run is hashed alone) -----
    # Table 1's rows trained once per seed (comma-separated, e.g. "0,1,2"; "" = just `seed`): the
    # tables show mean ± std over seeds. Each per-seed run is hashed with its own `seed`, so this
    # key is not hashed and seed 0's run is the single-seed run of seed 0.
    seeds: str = key("notebook", "")
    figure_images: int = key("notebook", 4)  # images per class in map grids
    # which rows a table trains and shows (comma-separated baselines; NEGEV; the U-Net bound)
    table_methods: str = key("notebook", "layercam")
    table_negev: bool = key("notebook", False)
    table_unet: bool = key("notebook", False)
    # datasets a notebook covers (comma-separated; "" = just `dataset`)
    datasets: str = key("notebook", "")
    # dataset name -> the keys that differ on that dataset (e.g. epochs, data_root); a params
    # file writes them as a mapping under the dataset's name (`glas:`, `camelyon16:`)
    per_dataset: dict[str, dict[str, Any]] = key("notebook", factory=dict)
    # notebook sweeps (comma-separated values) and figure settings
    # notebook 10's sweep (Tables 7-10); its params files name the backbones
    backbones: str = key("notebook", "")
    n_values: str = key("notebook", "1,5,10,20")
    lam_values: str = key("notebook", "1,0.5,0.1,0.01,0.001")
    stain_levels: int = key("notebook", 10)
    # a frozen stain-levels JSON; "" = fit once and keep in the cache
    stain_levels_file: str = key("notebook", "")
    # bootstrap resamples of the test set for the paired t-test
    ttest_resamples: int = key("notebook", 29)
    tsne_images: int = key("notebook", 3)  # images per class in the t-SNE figures
    tsne_pixels: int = key("notebook", 400)  # pixel features per image in a t-SNE panel
    # timed passes per Table 11 row (median), after 2 warm-up passes
    timing_repeats: int = key("notebook", 10)

    def __post_init__(self) -> None:
        _check_choices(self)

    @property
    def map_method(self) -> str:
        """The name of the baseline's map function (a key of pixelcam.maps.MAPS)."""
        return METHODS[self.method].map_name(self)

    @property
    def dataset_names(self) -> list[str]:
        """The datasets a notebook covers, in the paper's column order."""
        names = [d.strip() for d in self.datasets.split(",") if d.strip()]
        return names or [self.dataset]

    def for_dataset(self, name: str) -> Config:
        """This config on another dataset, with that dataset's overrides applied."""
        if name not in DATASETS:
            raise ConfigError(f"dataset {name!r} is not valid: use one of {', '.join(DATASETS)}")
        changes = dict(self.per_dataset.get(name, {}))
        if changes.get("data_root") == "":  # PIXELCAM_<NAME>_ROOT was unset at load time
            raise missing_root_error(name)
        if METHODS[self.method].input_size:  # a fixed input (SAT) is kept on every dataset
            changes.pop("image_size", None)
            changes.pop("resize_size", None)
        return self.replace(dataset=name, **changes)

    @property
    def seed_list(self) -> list[int]:
        """The seeds Table 1's rows are trained with: `seeds`, or just `seed` when it is empty."""
        return parse_seeds(self.seeds) or [self.seed]

    @property
    def methods(self) -> list[str]:
        """The baselines of a table, in the paper's row order."""
        return [m.strip() for m in self.table_methods.split(",") if m.strip()]

    @property
    def phase_lr(self) -> float:
        """The PixelCAM phase's base lr: `pixelcam_lr`, or `lr` when it is 0."""
        return self.pixelcam_lr or self.lr

    @property
    def total_pixelcam_epochs(self) -> int:
        return self.pixelcam_epochs or self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return load_config(None, {**self.to_dict(), **changes}, check_datasets=False)


_GROUPS: dict[str, str] = {f.name: f.metadata.get("group", "") for f in fields(Config)}


def profiles(root: str | Path = ".") -> list[str]:
    """The profiles of a project: the folders of `<root>/params/` that hold params files."""
    folder = Path(root) / "params"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and notebook_params(p)) \
        if folder.is_dir() else []


def notebook_params(folder: str | Path) -> list[Path]:
    """The notebook params files of a profile's folder (its `_base.yaml` is not one)."""
    return sorted(p for p in Path(folder).glob("*.yaml") if not p.name.startswith("_"))


CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": tuple(DATASETS),
    "cam_source": ("", *DATASETS),
    "method": tuple(METHODS),
    "gradcampp_variant": ("official", "paper"),
    "pixel_head": ("linear", "multi_layer"),
    "seeder": ("pb", "th"),
    "bg_mode": ("official", "paper"),
    "cam_checkpoint": ("b-loc", "b-cl"),
    "init_checkpoint": ("b-loc", "b-cl"),
    "select": ("b-loc", "b-cl"),
    "pixel_loss_rows": ("all", "positive"),
}

HASH_VERSION = 4  # bump when training code changes what a config produces


# (low, high, low inclusive, high inclusive) for every bounded number; None = unbounded
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, True), "batch_size": (1, None, True, True),
    "eval_batch_size": (1, None, True, True), "image_size": (16, None, True, True),
    "resize_size": (16, None, True, True), "num_classes": (2, None, True, True),
    "n_fg": (0, None, True, True), "n_bg": (0, None, True, True),
    "pixelcam_epochs": (0, None, True, True), "seed": (0, None, True, True),
    "num_workers": (0, None, True, True), "image_cache_mb": (0, None, True, True),
    "state_every_s": (0.0, None, True, True), "figure_images": (1, None, True, True),
    "step_size": (1, None, True, True), "lr": (0.0, None, False, True),
    "head_lr_ratio": (0.0, None, False, True), "momentum": (0.0, 1.0, True, False),
    "weight_decay": (0.0, None, True, True), "gamma": (0.0, 1.0, False, True),
    "lr_floor": (0.0, None, True, True), "spatial_dropout": (0.0, 1.0, True, False),
    "min_p": (0.0, 1.0, False, True), "th_min_p": (0.0, 1.0, False, True),
    "lam": (0.0, None, True, True), "pixelcam_lr": (0.0, None, True, True),
    "train_crop": (0, None, True, True),
    "synthetic_n_train": (2, None, True, True), "synthetic_n_valcl": (2, None, True, True),
    "synthetic_n_test": (2, None, True, True),
    "synthetic_n_valpx_per_class": (1, None, True, True),
    "synthetic_width": (32, None, True, True), "synthetic_height": (32, None, True, True),
    "synthetic_seed": (0, None, True, True),
    "stain_levels": (1, None, True, True), "ttest_resamples": (0, None, True, True),
    "tsne_images": (1, None, True, True), "tsne_pixels": (10, None, True, True),
    "timing_repeats": (1, None, True, True),
}


def _check_range(cfg: Config, key: str) -> None:
    low, high, low_in, high_in = RANGES[key]
    value = getattr(cfg, key)
    ok = math.isfinite(value)  # NaN and infinities are never valid
    if low is not None:
        ok = ok and (value >= low if low_in else value > low)
    if high is not None:
        ok = ok and (value <= high if high_in else value < high)
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(
            f"{key}={value} is out of range: use a value in {'[' if low_in else '('}{lo}, "
            f"{hi}{']' if high_in else ')'}"
        )


def parse_seeds(text: str) -> list[int]:
    """`seeds` ("0,1,2") as ints: non-negative, no repeats; "" gives [] (= just `seed`)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isascii() and p.isdigit() for p in parts) or len(set(map(int, parts))) < len(
            parts):
        raise ConfigError(
            f"seeds={text!r} is not valid: use distinct non-negative integers separated by "
            "commas, e.g. seeds: 0,1,2 (or \"\" for just `seed`)")
    return [int(p) for p in parts]


def _check_choices(cfg: Config) -> None:
    parse_seeds(cfg.seeds)
    for key, valid in CHOICES.items():
        value = getattr(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid: use one of {', '.join(valid)}")
    for key in RANGES:
        _check_range(cfg, key)
    if cfg.output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride={cfg.output_stride} is not valid: use 8, 16 or 32")
    if cfg.resize_size < cfg.image_size:
        raise ConfigError(
            f"resize_size={cfg.resize_size} is smaller than image_size={cfg.image_size}: "
            "the random crop needs resize_size >= image_size"
        )
    if cfg.synthetic_n_valcl < 2 * cfg.synthetic_n_valpx_per_class:
        raise ConfigError(
            f"synthetic_n_valcl={cfg.synthetic_n_valcl} cannot hold "
            f"synthetic_n_valpx_per_class={cfg.synthetic_n_valpx_per_class} images per class: "
            f"use synthetic_n_valcl >= {2 * cfg.synthetic_n_valpx_per_class}"
        )
    for name in cfg.methods:
        if name not in CHOICES["method"]:
            raise ConfigError(
                f"table_methods names {name!r}: use a comma-separated list of "
                f"{', '.join(CHOICES['method'])}"
            )
    method = METHODS[cfg.method]
    if method.input_size and cfg.image_size != method.input_size:
        n = method.input_size
        raise ConfigError(
            f"method {cfg.method} runs {method.architecture} on {n}x{n} crops: set image_size: "
            f"{n} (got {cfg.image_size}) and resize_size: {method.resize_size}"
        )


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    """Accept what YAML or a `-p key=value` override gives, refuse anything ambiguous."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, bool):  # YAML turns `pretrained: false` into a bool
            return str(value).lower()
        if isinstance(value, (str, int, float)):
            return str(value)
    elif typing.get_origin(kind) is dict:  # per_dataset: dataset name -> its block
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return {name: _coerce_block(_dataset_name(name, source), block or {}, source)
                    for name, block in value.items()}
    raise ConfigError(
        f"{source}: {key}={value!r} should be of type {kind.__name__}"
    )


BLOCK_FORBIDDEN = frozenset({"dataset", "datasets", "per_dataset", *DATASETS})


def _dataset_name(name: str, source: str) -> str:
    if name not in DATASETS:
        raise ConfigError(f"{source}: per_dataset names {name!r}: use one of "
                          f"{', '.join(DATASETS)}")
    return name


def _coerce_block(name: str, block: Mapping[str, Any], source: str) -> dict[str, Any]:
    types_ = _field_types()
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in BLOCK_FORBIDDEN or key not in types_:
            valid = [k for k in valid_keys() if k not in BLOCK_FORBIDDEN]
            raise ConfigError(
                f"{source}: {name}.{key} is not a key a per-dataset block can set; valid keys "
                f"are: {', '.join(valid)}")
        out[key] = _coerce(f"{name}.{key}", value, types_[key], source)
    return out


def _resolve_data_roots(values: dict[str, Any], source: str) -> None:
    """Give every dataset a concrete data root before the Config exists.

    A per-dataset block's non-empty `data_root` wins for its dataset; the top-level one applies to
    the datasets without a block entry. "" (in a block, or at the top for the datasets without an
    entry) means the environment variable PIXELCAM_<DATASET>_ROOT of *that* dataset, so one
    dataset's folder is never inherited by the other. The resolved roots are written into the
    blocks; a dataset whose variable is unset keeps "" there, and using it raises the fix
    (`Config.for_dataset`). The top-level `data_root` becomes the root of `dataset`.
    """
    top = values.get("data_root", Config.data_root)
    blocks = values.setdefault("per_dataset", {})
    for name, info in DATASETS.items():
        block = blocks.get(name, {})
        if block.get("data_root") or ("data_root" not in block and top != ""):
            continue  # explicit for this dataset, or inherits an explicit top-level root
        blocks[name] = {**block, "data_root": os.environ.get(info.env_var, "")}
    name = values.get("dataset", Config.dataset)
    if name not in DATASETS:
        return  # Config's own check names the valid datasets
    root = blocks.get(name, {}).get("data_root") or top
    if not root:
        raise missing_root_error(name, source)
    values["data_root"] = root


def _complete_blocks(values: dict[str, Any]) -> None:
    """Give each dataset block the top-level value of every key another block overrides.

    `for_dataset` applies one block on top of the flat config it is called on; without this, a
    config already switched to one dataset would carry that dataset's overrides (CAMELYON16's 20
    epochs, its `low_res`) to the other: `cfg.for_dataset("camelyon16").for_dataset("glas")`
    trained a GlaS baseline for 20 epochs (notebook 11's external pseudo-labels). With complete
    blocks, switching datasets always gives what `for_dataset` on the top-level config gives.
    `data_root` is left to _resolve_data_roots.
    """
    defaults = {f.name: f.default for f in fields(Config)}
    given = values.get("per_dataset", {})
    blocks = {name: dict(given.get(name, {})) for name in DATASETS}
    keys = set().union(*blocks.values()) - {"data_root"}
    for name, block in blocks.items():
        missing = {k: values.get(k, defaults.get(k)) for k in keys if k not in block}
        if missing or name in given:
            values.setdefault("per_dataset", {})[name] = {**block, **missing}


def valid_keys() -> list[str]:
    return [f.name for f in fields(Config)]


BASE_FILE = "_base.yaml"  # in a profile's folder: the keys every notebook file of it shares


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"params file {path} is not UTF-8 text: save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"params file {path} is not valid YAML: {first}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"params file {path} must be a flat mapping of key: value")
    return loaded


def read_params(path: str | Path) -> dict[str, Any]:
    """A notebook's params file on top of its profile's `_base.yaml` (when there is one): its
    keys replace the base's, and its `glas:` / `camelyon16:` entries those of the base's block."""
    path = Path(path)
    base = path.with_name(BASE_FILE)
    values = _read_yaml(base) if base.is_file() and base != path else {}
    for key, value in _read_yaml(path).items():
        if key in DATASETS and isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                check_datasets: bool = True) -> Config:
    """Build a Config from a flat YAML file plus overrides; unknown keys, bad types are errors."""
    values: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(
                f"params file {path} does not exist: give a path under params/<profile>/")
        values.update(read_params(path))
    merged = [(k, v, source) for k, v in values.items()]
    merged += [(k, v, "overrides") for k, v in (overrides or {}).items()]
    types_ = _field_types()
    clean: dict[str, Any] = {}
    for key, value, src in merged:
        block, _, inner = key.partition(".")
        blocks = clean.setdefault("per_dataset", {})
        if inner and block in DATASETS:  # `-p camelyon16.epochs=20` edits one block entry
            update = _coerce_block(block, {inner: value}, src)
            blocks[block] = {**blocks.get(block, {}), **update}
            continue
        if key in DATASETS:  # a params file's `glas:` mapping: that dataset's whole block
            blocks[key] = _coerce(key, {key: value}, _field_types()["per_dataset"], src)[key]
            continue
        if key not in types_:
            raise ConfigError(
                f"{src}: unknown key {key!r}; valid keys are: {', '.join(valid_keys())}"
            )
        clean[key] = _coerce(key, value, types_[key], src)
    if clean.get("cam_source") == clean.get("dataset", Config.dataset):
        clean["cam_source"] = ""  # pseudo-labels from the same dataset: one spelling, one hash
    _complete_blocks(clean)
    _resolve_data_roots(clean, source)
    cfg = Config(**clean)
    if check_datasets:  # every dataset a notebook covers must be usable before it starts
        for name in cfg.dataset_names:
            if name not in DATASETS:
                raise ConfigError(f"{source}: datasets names {name!r}: use a comma-separated "
                                  f"list of {', '.join(DATASETS)}")
            if cfg.per_dataset.get(name, {}).get("data_root") == "":
                raise missing_root_error(name, source)
            cfg.for_dataset(name)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a `key=value` command-line override (value read as YAML: 3, 0.1, true, name)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _digest(payload: Mapping[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def group_of(name: str) -> str:
    """The group of a Config key (see `key`)."""
    return _GROUPS[name]


def keys_in(*groups: str) -> list[str]:
    """The Config keys of these groups, in declaration order."""
    return [name for name, group in _GROUPS.items() if group in groups]


def ungrouped_keys(cls: type = Config) -> list[str]:
    """The fields of a Config (sub)class declared without a group of HASHED_GROUPS or
    UNHASHED_GROUPS: each must say whether it defines a training (`key`)."""
    return [f.name for f in fields(cls)
            if f.metadata.get("group") not in (*HASHED_GROUPS, *UNHASHED_GROUPS)]


def training_dict(cfg: Config, *leave_out: str) -> dict[str, Any]:
    """The hashed keys of cfg (what defines its training), less the groups `leave_out`."""
    groups = [g for g in HASHED_GROUPS if g not in leave_out]
    return {k: getattr(cfg, k) for k in keys_in(*groups)}


def baseline_key(cfg: Config) -> str:
    """Hash of what a baseline depends on, so every notebook and PixelCAM variant shares it."""
    return _digest({"v": HASH_VERSION, "stage": "baseline", **training_dict(cfg, "pixelcam")})


def pixelcam_key(cfg: Config) -> str:
    d = training_dict(cfg)
    d["pixelcam_epochs"] = cfg.total_pixelcam_epochs
    d["pixelcam_lr"] = cfg.phase_lr
    if cfg.cam_source:  # external pseudo-labels: the other dataset's baseline is an input too
        d["cam_source_baseline"] = baseline_key(cfg.for_dataset(cfg.cam_source))
    return _digest({"v": HASH_VERSION, "stage": "pixelcam", **d})


def unet_key(cfg: Config) -> str:
    """The U-Net upper bound depends on data, backbone and optimisation, not on a WSOL method."""
    return _digest({"v": HASH_VERSION, "stage": "unet", **training_dict(cfg, "pixelcam", "wsol")})


NEGEV_VERSION = 2  # 2: the decoder's init is seeded (before, it took the process's RNG state)


def negev_key(cfg: Config) -> str:
    """NEGEV: the baseline it decodes plus the seeding settings."""
    return _digest({"v": HASH_VERSION, "stage": "negev", "negev": NEGEV_VERSION,
                    "pixelcam": pixelcam_key(cfg)})


def params_hash(cfg: Config) -> str:
    return _digest(cfg.to_dict())


__all__ = [
    "Config", "load_config", "parse_override", "valid_keys", "baseline_key", "pixelcam_key",
    "HASHED_GROUPS", "UNHASHED_GROUPS", "group_of", "keys_in", "training_dict",
    "unet_key", "negev_key",
    "params_hash", "parse_seeds", "CHOICES",
]
