"""Pretrained weights: pinned timm tags, what a config needs, the offline cache, fetch, the CLI.

No test touches the network: the Hugging Face cache is a tmp folder (HF_HUB_CACHE) holding
fake entries in the hub's cache layout, and every download function is replaced by one that
fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pixelcam import cli, weights
from pixelcam.config import Config, load_config
from pixelcam.errors import ModelError
from pixelcam.models.backbones import KNOWN_BACKBONES, create_encoder
from pixelcam.models.sat import DEIT_NAME, build_sat
from pixelcam.models.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "params" / "paper"
NO_DATA = {"data_root": "synthetic", "glas.data_root": "synthetic",
           "camelyon16.data_root": "synthetic"}
# what the official code starts from (torchvision v1 weights; the original DeiT checkpoint)
PAPER_TAGS = {
    "resnet50": "resnet50.tv_in1k",
    "vgg16": "vgg16.tv_in1k",
    "inception_v3": "inception_v3.tv_in1k",
    DEIT_NAME: "deit_tiny_patch16_224.fb_in1k",
}


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a download was attempted: {args} {kwargs}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache, and no way to reach the network."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub
    import huggingface_hub.file_download
    import timm.models._builder
    import timm.models._hub

    for module in (huggingface_hub, huggingface_hub.file_download, timm.models._hub):
        monkeypatch.setattr(module, "hf_hub_download", _no_download)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", _no_download)
    return hub


def add_entry(hub: Path, tag: str, state: dict[str, torch.Tensor],
              filename: str = "model.safetensors") -> Path:
    """One cached timm weight file in huggingface_hub's layout (refs/main -> a snapshot)."""
    repo = hub / f"models--timm--{tag}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    path = snapshot / filename
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if filename.endswith(".safetensors"):
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def paper(name: str) -> Config:
    return load_config(PAPER / f"{name}.yaml", NO_DATA)


# --- tags -------------------------------------------------------------------------------------


def test_paper_backbones_resolve_to_the_official_weights() -> None:
    for backbone, tag in PAPER_TAGS.items():
        assert weights.pretrained_tag(backbone) == tag, backbone
    available = set(timm.list_pretrained())
    for backbone in (*KNOWN_BACKBONES, DEIT_NAME):
        assert weights.pretrained_tag(backbone) in available, backbone
    assert set(weights.PRETRAINED_TAGS.values()) <= available
    # not timm's default resnet50 weights (a1_in1k: another training recipe)
    assert timm.models.get_pretrained_cfg("resnet50").tag != "tv_in1k"
    # others: torchvision's tag where timm has one, else timm's default; a tag stays itself
    assert weights.pretrained_tag("resnet101") == "resnet101.tv_in1k"
    assert weights.pretrained_tag("efficientnet_lite0") == "efficientnet_lite0.ra_in1k"
    assert weights.pretrained_tag("resnet50.a1_in1k") == "resnet50.a1_in1k"
    with pytest.raises(ModelError, match="list_pretrained"):
        weights.pretrained_tag("resnet50.no_such_tag")


def test_cnn_builders_ask_timm_for_the_pinned_tag(cache: Path, monkeypatch) -> None:
    """VGG16/InceptionV3/ResNet-50 get their tag's weights from the cached file, by timm."""
    from pixelcam.models import backbones

    calls = []

    def record(name: str, **kwargs: object) -> None:
        calls.append((name, kwargs))
        raise RuntimeError("stop here")

    monkeypatch.setattr(backbones.timm, "create_model", record)
    for backbone in ("resnet50", "vgg16", "inception_v3"):
        path = add_entry(cache, PAPER_TAGS[backbone], {"x": torch.zeros(1)})
        with pytest.raises(ModelError, match=f"cached timm weights {PAPER_TAGS[backbone]}"):
            create_encoder(backbone, pretrained="timm")
        name, kwargs = calls[-1]
        assert name == PAPER_TAGS[backbone] and kwargs["pretrained"] is True
        assert kwargs["pretrained_cfg_overlay"] == {"file": str(path)}


# --- what a config needs ---------------------------------------------------------------------


def test_required_weights_of_paper_params() -> None:
    assert weights.required_weights(paper("01_main_tables")) == [
        "resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k"]
    assert weights.required_weights(paper("10_backbones")) == [
        "resnet50.tv_in1k", "vgg16.tv_in1k", "inception_v3.tv_in1k"]
    assert weights.required_weights(paper("03_stain_shift")) == ["resnet50.tv_in1k"]
    assert weights.profile_weights("paper", ROOT) == [
        "resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k", "vgg16.tv_in1k",
        "inception_v3.tv_in1k"]
    # pretrained other than timm needs nothing; quick and smoke need nothing
    assert weights.required_weights(paper("01_main_tables").replace(pretrained="false")) == []
    assert weights.profile_weights("quick", ROOT) == []
    assert weights.profile_weights("smoke", ROOT) == []


def test_required_weights_rules() -> None:
    base = Config(pretrained="timm", backbone="resnet18")
    assert Config().backbones == ""  # only notebook 10's params name a sweep
    assert weights.required_weights(base) == ["resnet18.tv_in1k"]
    sat_only = base.replace(method="sat", table_methods="sat")
    assert weights.required_weights(sat_only) == ["deit_tiny_patch16_224.fb_in1k"]
    # the U-Net upper bound runs on the backbone even when the table has only SAT
    assert weights.required_weights(sat_only.replace(table_unet=True)) == [
        "resnet18.tv_in1k", "deit_tiny_patch16_224.fb_in1k"]
    # a per-dataset block may turn pretrained weights on for one dataset only
    mixed = load_config(None, {"pretrained": "false", "datasets": "glas,camelyon16",
                               "camelyon16.pretrained": "timm", "camelyon16.backbone": "resnet34"})
    assert weights.required_weights(mixed) == ["resnet34.tv_in1k"]


def test_notebook_10_params_name_their_backbones() -> None:
    for profile in ("quick", "smoke", "paper"):
        cfg = load_config(ROOT / "params" / profile / "10_backbones.yaml", NO_DATA)
        assert cfg.backbones == "vgg16,inception_v3", profile


# --- the offline cache -------------------------------------------------------------------------


def test_hub_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert weights.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights.hub_cache_dir() == tmp_path / "hub"


def _one_line_naming(exc: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, (part, text)
    return text


def test_empty_cache_stops_with_one_line(cache: Path) -> None:
    cfg = paper("01_main_tables")
    assert weights.missing_weights(cfg) == ["resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k"]
    with pytest.raises(ModelError) as exc:
        weights.check_weights(cfg, "paper")
    text = _one_line_naming(exc, "resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k",
                            "pixelcam weights fetch --profile paper", str(cache))
    assert "pretrained: <a local weight file>" in text
    configs = list(weights.profile_configs("paper", ROOT).values())
    with pytest.raises(ModelError) as exc:
        weights.check_profile_weights(configs, "paper")
    _one_line_naming(exc, "vgg16.tv_in1k", "inception_v3.tv_in1k", "--profile paper")
    weights.check_profile_weights([paper("01_main_tables").replace(pretrained="false")], "paper")

    # model building never downloads: the same one line, before anything is built
    with pytest.raises(ModelError) as exc:
        build_sat(pretrained="timm")
    _one_line_naming(exc, "deit_tiny_patch16_224.fb_in1k", "pixelcam weights fetch")
    for build in (lambda: create_encoder("resnet18", pretrained="timm"),
                  lambda: UNet("resnet18", pretrained="timm")):
        with pytest.raises(ModelError) as exc:
            build()
        _one_line_naming(exc, "resnet18.tv_in1k", "pixelcam weights fetch")


def test_cached_weights_load_without_network(cache: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet18")
    path = add_entry(cache, "resnet18.tv_in1k", source.state_dict())
    assert weights.cached_weights_file("resnet18.tv_in1k") == path
    cfg = Config(pretrained="timm", backbone="resnet18", table_unet=True)
    assert weights.required_weights(cfg) == ["resnet18.tv_in1k"]
    assert weights.missing_weights(cfg) == []
    weights.check_weights(cfg)

    expected = source.state_dict()
    encoder = create_encoder("resnet18", pretrained="timm")  # output stride 8, same weights
    for key, value in encoder.net.state_dict().items():
        assert torch.equal(value, expected[key]), key
    unet = UNet("resnet18", pretrained="timm")
    for key, value in unet.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_cached_bin_file_is_found(cache: Path) -> None:
    """Repos without safetensors: timm falls back to pytorch_model.bin, so does the lookup."""
    path = add_entry(cache, "resnet34.tv_in1k", {"x": torch.zeros(1)}, "pytorch_model.bin")
    assert weights.cached_weights_file("resnet34.tv_in1k") == path


def test_sat_loads_cached_deit_without_network(cache: Path) -> None:
    torch.manual_seed(2)
    deit = timm.create_model(DEIT_NAME)  # with its 1000-way head, as the real checkpoint
    add_entry(cache, "deit_tiny_patch16_224.fb_in1k", deit.state_dict())
    model = build_sat(pretrained="timm")
    own = model.encoder.vit.state_dict()
    expected = deit.state_dict()
    assert set(expected) - set(own) == {"head.weight", "head.bias"}  # the classifier is dropped
    for key, value in own.items():
        assert torch.equal(value, expected[key]), key


def test_sat_loads_a_local_weight_file(tmp_path: Path, cache: Path) -> None:
    torch.manual_seed(3)
    deit = timm.create_model(DEIT_NAME)
    path = tmp_path / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in deit.state_dict().items()}, str(path))
    model = build_sat(pretrained=str(path))
    expected = deit.state_dict()
    for key, value in model.encoder.vit.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(ModelError, match="no packaged weights"):
        build_sat(pretrained="package")


def test_unet_loads_a_full_imagenet_file_on_a_feature_net(tmp_path: Path) -> None:
    """The U-Net's features_only encoder ignores the layers timm's feature wrapper drops."""
    torch.manual_seed(4)
    full = timm.create_model("efficientnet_lite0")
    torch.save(full.state_dict(), tmp_path / "lite0.pth")
    unet = UNet("efficientnet_lite0", pretrained=str(tmp_path / "lite0.pth"))
    expected = full.state_dict()
    for key, value in unet.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


# --- fetch and the CLI ---------------------------------------------------------------------------


def test_fetch_downloads_only_what_is_missing(cache: Path, monkeypatch) -> None:
    import huggingface_hub

    add_entry(cache, "resnet50.tv_in1k", {"x": torch.zeros(1)})
    fetched = []

    def fake_download(repo_id: str, filename: str, revision=None, cache_dir=None) -> str:
        assert Path(cache_dir) == cache and revision is None
        fetched.append((repo_id, filename))
        tag = repo_id.split("/", 1)[1]
        return str(add_entry(Path(cache_dir), tag, {"y": torch.ones(1)}, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    status = weights.fetch_weights(["resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k"])
    assert status == {"resnet50.tv_in1k": "cached", "deit_tiny_patch16_224.fb_in1k": "fetched"}
    assert fetched == [("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors")]
    assert weights.missing_weights(paper("01_main_tables")) == []

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelError) as exc:
        weights.fetch_weights(["vgg16.tv_in1k"])
    _one_line_naming(exc, "cannot download vgg16.tv_in1k", "huggingface.co", "OSError")


def test_cli_weights_list_and_fetch(cache: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    assert cli.main(["weights", "list", "--profile", "paper", "--root", str(ROOT)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == [
        "resnet50.tv_in1k", "deit_tiny_patch16_224.fb_in1k", "vgg16.tv_in1k",
        "inception_v3.tv_in1k"]
    assert all(ln.endswith("cached: no") for ln in lines[:4])
    assert lines[4] == f"cache: {cache}"
    assert lines[5].startswith("4 missing: `pixelcam weights fetch --profile paper`")

    add_entry(cache, "vgg16.tv_in1k", {"x": torch.zeros(1)})
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download",
        lambda repo_id, filename, revision=None, cache_dir=None: str(
            add_entry(Path(cache_dir), repo_id.split("/", 1)[1], {"y": torch.ones(1)}, filename)))
    assert cli.main(["weights", "fetch", "--profile", "paper", "--root", str(ROOT)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in out] == [
        ["resnet50.tv_in1k", "fetched:"], ["deit_tiny_patch16_224.fb_in1k", "fetched:"],
        ["vgg16.tv_in1k", "cached:"], ["inception_v3.tv_in1k", "fetched:"]]
    assert cli.main(["weights", "list", "--root", str(ROOT)]) == 0
    assert all(ln.endswith("cached: yes") for ln in capsys.readouterr().out.splitlines()[:4])

    assert cli.main(["weights", "list", "--profile", "quick", "--root", str(ROOT)]) == 0
    assert "needs no timm weights" in capsys.readouterr().out
    assert cli.main(["weights", "list", "--profile", "nope", "--root", str(ROOT)]) == 2
    assert "--profile one of paper, quick, real-cpu, smoke" in capsys.readouterr().err
