"""Pretrained ImageNet weights in the local Hugging Face cache: which timm tag, which file, fetch.

`pretrained: timm` means the ImageNet weights of a pinned timm tag (PRETRAINED_TAGS: the
torchvision weights the official code starts from, and the original DeiT checkpoint for SAT),
read from the local Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub). Building a model never downloads: a weight missing from the cache
stops with one line that names it and the fix. `fetch_weights` (`pixelcam weights fetch`) is
the only place the kit downloads, meant for a machine with network that shares the cache (or
whose cache is copied) with the GPU nodes.

A bottom layer: the model builders read their files through it; which weights a params file
needs is `pixelcam.weights`, one layer up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import timm
from timm.models import get_pretrained_cfg

from pixelcam.errors import ModelError

# backbone -> the timm tag whose ImageNet weights `pretrained: timm` loads. The paper's backbones
# are pinned to what the official code loads: torchvision's weights for ResNet-50, VGG16 and
# InceptionV3 (timm's default resnet50 tag, a1_in1k, is another training recipe), the original
# DeiT checkpoint for SAT. Other backbones take torchvision's tag where timm has one, else
# timm's default tag (efficientnet_lite0, mobilenetv3_small_100: their only tag).
PRETRAINED_TAGS = {
    "resnet18": "resnet18.tv_in1k",
    "resnet34": "resnet34.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "vgg16": "vgg16.tv_in1k",
    "inception_v3": "inception_v3.tv_in1k",
    "deit_tiny_patch16_224": "deit_tiny_patch16_224.fb_in1k",
    "efficientnet_lite0": "efficientnet_lite0.ra_in1k",
    "mobilenetv3_small_100": "mobilenetv3_small_100.lamb_in1k",
}


def _pretrained_cfg(tag: str):  # -> timm PretrainedCfg | None
    try:
        return get_pretrained_cfg(tag)
    except RuntimeError:  # timm raises for an unknown tag of a known architecture
        return None


def pretrained_tag(name: str) -> str:
    """The timm tag (`arch.tag`) whose weights `pretrained: timm` loads for backbone `name`.

    A name that already carries a tag (`resnet50.a1_in1k`) is its own tag; a backbone outside
    PRETRAINED_TAGS takes timm's `<arch>.tv_in1k` where it exists, else timm's default tag.
    """
    name = str(name).strip()
    if name in PRETRAINED_TAGS:
        return PRETRAINED_TAGS[name]
    if "." in name:
        if _pretrained_cfg(name) is None:
            raise ModelError(
                f"timm has no pretrained weights tagged {name!r}; use a tag that "
                "`timm.list_pretrained()` lists (e.g. resnet50.tv_in1k) or a bare backbone name."
            )
        return name
    if f"{name}.tv_in1k" in timm.list_pretrained(f"{name}.tv_in1k"):
        return f"{name}.tv_in1k"
    default = _pretrained_cfg(name)
    if default is None or not default.tag:
        raise ModelError(
            f"timm has no pretrained weights for backbone {name!r}; set `pretrained: false` or "
            "`pretrained: <a local weight file>`."
        )
    return f"{name}.{default.tag}"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (huggingface_hub reads
    it once, at import): HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(os.path.expandvars(os.path.expanduser(env[var])))
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = env.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _hub_source(tag: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo id, revision, files timm would read in its order) of a tag's hub weights."""
    cfg = _pretrained_cfg(tag)
    if cfg is None:
        raise ModelError(
            f"timm has no pretrained weights tagged {tag!r}; use a tag that "
            "`timm.list_pretrained()` lists, e.g. resnet50.tv_in1k."
        )
    if not cfg.hf_hub_id:
        raise ModelError(
            f"timm's weights {tag!r} are not on the Hugging Face hub, so the kit cannot cache "
            "them; download them yourself and set `pretrained: <that file>`."
        )
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    # timm prefers the safetensors twin of the default file name (timm.models._hub)
    files = ("model.safetensors", filename) if filename == "pytorch_model.bin" else (filename,)
    return repo, revision or None, files


def cached_weights_file(tag: str) -> Path | None:
    """The cached file timm would read for `tag`, or None when the local cache lacks it."""
    from huggingface_hub import try_to_load_from_cache

    repo, revision, files = _hub_source(tag)
    for filename in files:
        found = try_to_load_from_cache(
            repo, filename, cache_dir=hub_cache_dir(), revision=revision
        )
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def missing_message(tags: Sequence[str], profile: str | None = None) -> str:
    """The one-line error for weights missing from the cache, with the command that fetches them."""
    if profile:
        command = f"pixelcam weights fetch --profile {profile}"
    else:
        command = "pixelcam weights fetch " + " ".join(f"--tag {t}" for t in tags)
    return (
        f"pretrained: timm needs {', '.join(tags)}, not in the local Hugging Face cache "
        f"{hub_cache_dir()} (runs never download): run `{command}` on a machine with network "
        "and the same cache (HF_HOME / HF_HUB_CACHE), or set `pretrained: <a local weight file>`."
    )


def timm_weights_file(tag: str) -> Path:
    """The cached weight file of `tag` for a model builder; ModelError (one line) when absent."""
    path = cached_weights_file(tag)
    if path is None:
        raise ModelError(missing_message([tag]))
    return path



def fetch_weights(tags: Iterable[str]) -> dict[str, str]:
    """Download each tag's weights into the standard Hugging Face cache, unless already there.

    Returns tag -> "cached" or "fetched". The only function of the kit that downloads; run it
    on a machine with network (`pixelcam weights fetch`).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    status: dict[str, str] = {}
    for tag in dict.fromkeys(tags):
        if cached_weights_file(tag) is not None:
            status[tag] = "cached"
            continue
        repo, revision, files = _hub_source(tag)
        cache = hub_cache_dir()
        for index, filename in enumerate(files):
            try:
                hf_hub_download(repo, filename, revision=revision, cache_dir=cache)
                break
            except RemoteEntryNotFoundError:
                if index + 1 < len(files):
                    continue  # timm falls back the same way (safetensors, then the .bin)
                raise ModelError(
                    f"the Hugging Face repo {repo} has none of {', '.join(files)} for {tag}; "
                    "pick another tag or set `pretrained: <a local weight file>`."
                ) from None
            except Exception as exc:  # network, proxy, offline mode, disk: one line for each
                text = " ".join(str(exc).split())
                detail = f": {text.split('. ')[0][:120]}" if text else ""
                raise ModelError(
                    f"cannot download {tag} ({repo}/{filename}) into {cache} "
                    f"({type(exc).__name__}{detail}); run `pixelcam weights fetch` on a machine "
                    "that reaches huggingface.co, with HF_HUB_OFFLINE unset."
                ) from exc
        status[tag] = "fetched"
    return status


__all__ = [
    "PRETRAINED_TAGS", "pretrained_tag", "hub_cache_dir", "cached_weights_file",
    "timm_weights_file", "missing_message", "fetch_weights",
]
