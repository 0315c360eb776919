"""Which pretrained weights a params file or a profile needs, and whether the cache holds them.

The files themselves, their tags and the one download are `pixelcam.hub`; this module reads
params (`pixelcam.config`) and asks each method which architecture it loads
(`pixelcam.methods`), so a profile's missing weights stop the run before any notebook starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pixelcam.config import Config, load_config, notebook_params, profiles
from pixelcam.errors import ConfigError, ModelError
from pixelcam.hub import (
    PRETRAINED_TAGS,
    cached_weights_file,
    fetch_weights,
    hub_cache_dir,
    missing_message,
    pretrained_tag,
    timm_weights_file,
)
from pixelcam.methods import METHODS

# placeholder data roots: which weights a params file needs does not depend on its data
NO_DATA = {"data_root": "synthetic", "glas.data_root": "synthetic",
            "camelyon16.data_root": "synthetic"}


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def required_weights(cfg: Config) -> list[str]:
    """The timm tags `cfg` loads with `pretrained: timm`, over every dataset it covers.

    Per dataset: each method's architecture (`method` and `table_methods`: the backbone, or the
    method's own network such as SAT's DeiT-Tiny), the U-Net encoder (the backbone) with
    `table_unet`, and each backbone of the `backbones` sweep (notebook 10). Empty when
    `pretrained` is not `timm`.
    """
    tags: dict[str, None] = {}
    for name in cfg.dataset_names:
        dcfg = cfg.for_dataset(name)
        if dcfg.pretrained.strip().lower() != "timm":
            continue
        methods = [METHODS[m] for m in dict.fromkeys([*dcfg.methods, dcfg.method])]
        if dcfg.table_unet or any(m.timm_model is None for m in methods):
            tags[pretrained_tag(dcfg.backbone)] = None
        for method in methods:
            if method.timm_model is not None:
                tags[pretrained_tag(method.timm_model)] = None
        for backbone in _split(dcfg.backbones):
            tags[pretrained_tag(backbone)] = None
    return list(tags)


def missing_weights(cfg: Config) -> list[str]:
    """The tags of `required_weights(cfg)` that the local Hugging Face cache lacks."""
    return [tag for tag in required_weights(cfg) if cached_weights_file(tag) is None]


def check_profile_weights(configs: Iterable[Config], profile: str) -> None:
    """Stop before any notebook starts when a weight the configs need is not cached (one line)."""
    tags: dict[str, None] = {}
    for cfg in configs:
        tags.update(dict.fromkeys(missing_weights(cfg)))
    if tags:
        raise ModelError(missing_message(list(tags), profile))


def check_weights(cfg: Config, profile: str = "paper") -> None:
    """`check_profile_weights` for one config."""
    check_profile_weights([cfg], profile)


def profile_configs(profile: str, root: str | Path = ".") -> dict[str, Config]:
    """Every params file of `<root>/params/<profile>/`, by notebook name, with placeholder data
    roots (the weights a file needs do not depend on its data)."""
    folder = Path(root) / "params" / profile
    files = notebook_params(folder)
    if not files:
        there = ", ".join(profiles(root)) or "(none there)"
        raise ConfigError(
            f"profile {profile!r} has no params files in {folder}: give --profile one of "
            f"{there}, and --root the project folder that holds params/."
        )
    return {path.stem: load_config(path, NO_DATA) for path in files}


def profile_weights(profile: str, root: str | Path = ".") -> list[str]:
    """The union of `required_weights` over every params file of a profile, in first-use order."""
    tags: dict[str, None] = {}
    for cfg in profile_configs(profile, root).values():
        tags.update(dict.fromkeys(required_weights(cfg)))
    return list(tags)


__all__ = [
    "PRETRAINED_TAGS", "pretrained_tag", "hub_cache_dir", "cached_weights_file",
    "timm_weights_file", "missing_message", "required_weights", "missing_weights",
    "check_weights", "check_profile_weights", "profile_configs", "profile_weights",
    "fetch_weights",
]
