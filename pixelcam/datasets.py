"""The registry of datasets: every other module asks it, none assumes which or how many.

A dataset is one entry: its names for tables and figures, the raw-download preparer behind
`pixelcam data prepare <name>`, its embedded synthetic look-alike (a domain of
`pixelcam.data.synthetic`), and the dataset its cross-dataset experiments pair it with (OOD,
stain shift, external pseudo-labels). Its per-dataset params overrides are a mapping under its
name in a params file (`glas:`), held by `Config.per_dataset`. Adding a dataset is one entry
here and its preparer (docs/development.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pixelcam.data.camelyon import prepare_camelyon16
from pixelcam.data.glas import prepare_glas
from pixelcam.errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    name: str  # the params value (`dataset`, `datasets`, `cam_source`, a per-dataset block)
    label: str  # the paper's column name
    class_names: Mapping[int, str]  # label -> name, in figures
    prepare: Callable[..., dict[str, Any]]  # (src, out, **options) -> manifest
    partner: str  # the other dataset of its OOD, stain-shift and external-label experiments
    synthetic_domain: str  # the look-alike that data_root: synthetic generates

    @property
    def env_var(self) -> str:
        """The environment variable a params file's `data_root: ""` reads."""
        return f"PIXELCAM_{self.name.upper()}_ROOT"


# in the paper's column order
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("glas", "GlaS", {0: "benign", 1: "malignant"}, prepare_glas,
            partner="camelyon16", synthetic_domain="glas"),
    Dataset("camelyon16", "CAMELYON16", {0: "normal", 1: "tumour"}, prepare_camelyon16,
            partner="glas", synthetic_domain="camelyon16"),
)}


def dataset_info(name: str) -> Dataset:
    """The dataset called `name`; ConfigError naming the valid ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"dataset {name!r} is not valid: use one of {', '.join(DATASETS)}") from None


def partner(name: str) -> str:
    """The dataset that `name`'s cross-dataset experiments pair it with."""
    return dataset_info(name).partner


def missing_root_error(name: str, source: str = "params") -> ConfigError:
    """The one-line fix for a dataset without a data root: prepare it, then point to it."""
    return ConfigError(
        f"{source}: no data for {name}: prepare it once with `pixelcam data prepare {name} "
        f"--src <the unpacked download> --out <folder>`, then `export "
        f"{DATASETS[name].env_var}=<folder>` or pass `-p {name}.data_root=<folder>`")


__all__ = ["DATASETS", "Dataset", "dataset_info", "partner", "missing_root_error"]
