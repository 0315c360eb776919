import dataclasses
from pathlib import Path

import pytest

from pixelcam import config as config_module
from pixelcam.config import (
    HASHED_GROUPS,
    UNHASHED_GROUPS,
    Config,
    baseline_key,
    group_of,
    keys_in,
    load_config,
    params_hash,
    parse_override,
    pixelcam_key,
    training_dict,
    unet_key,
    ungrouped_keys,
    valid_keys,
)
from pixelcam.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.lr, cfg.batch_size, cfg.n_fg, cfg.n_bg, cfg.min_p, cfg.lam) == (
        1e-3, 32, 5, 5, 0.2, 1.0)
    assert (cfg.cam_checkpoint, cfg.init_checkpoint, cfg.select) == ("b-loc", "b-cl", "b-loc")
    assert cfg.total_pixelcam_epochs == cfg.epochs == 1000


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("epochs: 3\npretrained: false\nlr: 1\nbackbone: resnet18\n")
    cfg = load_config(f, {"epochs": "7", "color_jitter": "false"})
    assert cfg.epochs == 7 and cfg.pretrained == "false" and cfg.lr == 1.0
    assert cfg.color_jitter is False and cfg.backbone == "resnet18"


def test_unknown_key_lists_valid_keys(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg and "'epoch'" in msg
    assert all(k in msg for k in valid_keys())


@pytest.mark.parametrize("key,value", [("epochs", "three"), ("lr", [1]), ("color_jitter", 2),
                                       ("batch_size", 1.5)])
def test_wrong_type_is_an_error(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(None, {key: value})


@pytest.mark.parametrize("changes,match", [({"bg_mode": "x"}, "bg_mode"), ({"epochs": 0}, "epochs"),
                                           ({"image_size": 300}, "resize_size"),
                                           ({"min_p": 0}, "min_p")])
def test_bad_values(changes, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, changes)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="flat mapping"):
        load_config(bad)


def test_hashes_share_the_baseline_across_pixelcam_settings():
    a = load_config(None, {"epochs": 3})
    b = a.replace(lam=0.1, n_fg=1, device="cpu", num_workers=4)
    assert baseline_key(a) == baseline_key(b)
    assert pixelcam_key(a) != pixelcam_key(b)
    assert pixelcam_key(a) == pixelcam_key(a.replace(device="cpu", figure_images=9))
    assert baseline_key(a) != baseline_key(a.replace(seed=1))
    assert params_hash(a) == params_hash(load_config(None, {"epochs": 3}))
    # pixelcam_epochs 0 means "as epochs": the same run as spelling it out
    assert pixelcam_key(a) == pixelcam_key(a.replace(pixelcam_epochs=3))
    # the same for pixelcam_lr 0 ("as lr"); another PixelCAM lr keeps the baseline
    assert pixelcam_key(a) == pixelcam_key(a.replace(pixelcam_lr=a.lr))
    slow = a.replace(pixelcam_lr=a.lr / 10)
    assert pixelcam_key(slow) != pixelcam_key(a) and baseline_key(slow) == baseline_key(a)


def test_parse_override():
    assert parse_override("epochs=3") == ("epochs", 3)
    assert parse_override("lam=0.1") == ("lam", 0.1)
    assert parse_override("backbone=resnet18") == ("backbone", "resnet18")
    with pytest.raises(ConfigError):
        parse_override("epochs")


def test_table_methods_and_map_names():
    cfg = load_config(None, {"table_methods": "deepmil, gradcampp,layercam", "method": "gradcampp"})
    assert cfg.methods == ["deepmil", "gradcampp", "layercam"]
    assert cfg.map_method == "gradcampp_official"  # what produced the paper's numbers
    assert cfg.replace(gradcampp_variant="paper").map_method == "gradcampp"
    assert baseline_key(cfg) == baseline_key(cfg.replace(table_methods="sat", table_unet=True))
    with pytest.raises(ConfigError, match="table_methods"):
        load_config(None, {"table_methods": "layercam,gradcam"})
    with pytest.raises(ConfigError, match="image_size: 224"):
        load_config(None, {"method": "sat", "image_size": 128, "resize_size": 144})


def test_config_for_method_gives_sat_its_input_size():
    from pixelcam.pipelines import config_for_method

    cfg = load_config(None, {"image_size": 128, "resize_size": 144})
    assert (config_for_method(cfg, "sat").image_size, config_for_method(cfg, "sat").resize_size) \
        == (224, 256)
    assert config_for_method(cfg, "deepmil").image_size == 128


def test_per_dataset_blocks_and_dotted_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("datasets: glas,camelyon16\nepochs: 8\ncamelyon16:\n  epochs: 20\n"
                    "  low_res: true\n")
    cfg = load_config(path, {"glas.lam": 0.5})
    assert cfg.dataset_names == ["glas", "camelyon16"]
    cam = cfg.for_dataset("camelyon16")
    assert (cam.dataset, cam.epochs, cam.low_res) == ("camelyon16", 20, True)
    glas = cfg.for_dataset("glas")
    assert (glas.dataset, glas.epochs, glas.lam) == ("glas", 8, 0.5)
    # blocks are not hashed themselves: what a block sets is hashed once applied
    assert baseline_key(cfg) == baseline_key(cfg.replace(camelyon16={"epochs": 3}))
    assert baseline_key(cam) != baseline_key(glas)
    with pytest.raises(ConfigError, match="camelyon16.datasets is not a key"):
        load_config(None, {"camelyon16": {"datasets": "glas"}})
    with pytest.raises(ConfigError, match="glas.epoch is not a key"):
        load_config(None, {"glas.epoch": 3})
    with pytest.raises(ConfigError, match="datasets names 'kidney'"):
        load_config(None, {"datasets": "glas,kidney"})


def test_missing_data_root_fails_at_once_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("PIXELCAM_GLAS_ROOT", raising=False)
    monkeypatch.delenv("PIXELCAM_CAMELYON16_ROOT", raising=False)
    with pytest.raises(ConfigError, match="pixelcam data prepare glas .*PIXELCAM_GLAS_ROOT"):
        load_config(None, {"data_root": ""})
    monkeypatch.setenv("PIXELCAM_GLAS_ROOT", str(tmp_path))
    assert load_config(None, {"data_root": ""}).data_root == str(tmp_path)
    # the second dataset of a notebook is checked up front too
    with pytest.raises(ConfigError, match="PIXELCAM_CAMELYON16_ROOT"):
        load_config(None, {"data_root": "", "datasets": "glas,camelyon16",
                           "camelyon16": {"data_root": ""}})


def test_external_pseudo_labels_change_the_pixelcam_hash_only():
    cfg = load_config(None, {"datasets": "glas,camelyon16"})
    ext = cfg.replace(cam_source="camelyon16")
    assert baseline_key(ext) == baseline_key(cfg)
    assert pixelcam_key(ext) != pixelcam_key(cfg)
    # naming the run's own dataset is the default protocol: one spelling, one hash
    assert pixelcam_key(cfg.replace(cam_source="glas")) == pixelcam_key(cfg)
    # the external baseline's own settings are part of the hash
    assert pixelcam_key(ext) != pixelcam_key(ext.replace(camelyon16={"epochs": 3}))


def test_a_dataset_block_does_not_resize_sat():
    cfg = load_config(None, {"datasets": "glas,camelyon16", "method": "sat", "image_size": 224,
                             "resize_size": 256,
                             "camelyon16": {"image_size": 96, "resize_size": 112, "epochs": 3}})
    cam = cfg.for_dataset("camelyon16")
    assert (cam.image_size, cam.resize_size, cam.epochs) == (224, 256, 3)
    cnn = cfg.replace(method="layercam").for_dataset("camelyon16")
    assert (cnn.image_size, cnn.resize_size) == (96, 112)


PAPER_PARAMS = sorted((Path(__file__).resolve().parents[1] / "params" / "paper").glob("[!_]*.yaml"))


@pytest.fixture
def no_root_env(monkeypatch):
    monkeypatch.delenv("PIXELCAM_GLAS_ROOT", raising=False)
    monkeypatch.delenv("PIXELCAM_CAMELYON16_ROOT", raising=False)
    return monkeypatch


def _roots(cfg):
    return {name: cfg.for_dataset(name).data_root for name in cfg.dataset_names}


@pytest.mark.parametrize("path", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_data_roots_from_the_environment(path, no_root_env, tmp_path):
    no_root_env.setenv("PIXELCAM_GLAS_ROOT", str(tmp_path / "glas"))
    no_root_env.setenv("PIXELCAM_CAMELYON16_ROOT", str(tmp_path / "c16"))
    cfg = load_config(path)
    assert cfg.data_root == str(tmp_path / "glas")
    assert _roots(cfg) == {"glas": str(tmp_path / "glas"), "camelyon16": str(tmp_path / "c16")}


@pytest.mark.parametrize("path", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_data_roots_from_dataset_overrides(path, no_root_env):
    cfg = load_config(path, {"glas.data_root": "/d/glas", "camelyon16.data_root": "/d/c16"})
    assert cfg.data_root == "/d/glas"
    assert _roots(cfg) == {"glas": "/d/glas", "camelyon16": "/d/c16"}
    # one dataset from the command line, the other from its environment variable
    no_root_env.setenv("PIXELCAM_CAMELYON16_ROOT", "/env/c16")
    cfg = load_config(path, {"glas.data_root": "/d/glas"})
    assert _roots(cfg) == {"glas": "/d/glas", "camelyon16": "/env/c16"}
    # a Config rebuilt with other values keeps each dataset's own root
    assert _roots(cfg.replace(seed=3)) == {"glas": "/d/glas", "camelyon16": "/env/c16"}


@pytest.mark.parametrize("path", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_data_root_top_level_override(path, no_root_env):
    # -p data_root=<folder> is the root of every dataset that has no root of its own
    cfg = load_config(path, {"data_root": "/d/glas", "datasets": "glas"})
    assert cfg.data_root == "/d/glas" and _roots(cfg) == {"glas": "/d/glas"}
    cfg = load_config(path, {"data_root": "/d/glas", "camelyon16.data_root": "/d/c16"})
    assert _roots(cfg) == {"glas": "/d/glas", "camelyon16": "/d/c16"}


@pytest.mark.parametrize("path", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_data_roots_missing_name_the_dataset_and_the_fix(path, no_root_env):
    with pytest.raises(ConfigError, match=r"no data for glas: .*PIXELCAM_GLAS_ROOT.*"
                                          r"-p glas.data_root=<folder>"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"no data for camelyon16: .*PIXELCAM_CAMELYON16_ROOT"):
        load_config(path, {"glas.data_root": "/d/glas"})


def test_an_environment_root_is_never_inherited_by_the_other_dataset(no_root_env):
    no_root_env.setenv("PIXELCAM_GLAS_ROOT", "/env/glas")
    cfg = load_config(None, {"data_root": ""})  # a GlaS-only run: CAMELYON16 is not needed
    assert cfg.data_root == "/env/glas"
    with pytest.raises(ConfigError, match="no data for camelyon16"):
        cfg.for_dataset("camelyon16")
    with pytest.raises(ConfigError, match="no data for camelyon16"):
        cfg.replace(seed=1).for_dataset("camelyon16")


def test_seeds_parse_and_default_to_seed(tmp_path):
    assert load_config(None, {}).seed_list == [0]  # "" = just `seed`: today's single run
    assert load_config(None, {"seed": 4}).seed_list == [4]
    path = tmp_path / "p.yaml"
    path.write_text("seeds: 0,1,2\n")  # YAML reads this as the string "0,1,2"
    assert load_config(path).seed_list == [0, 1, 2]
    assert load_config(None, {"seeds": " 2, 0 ,"}).seed_list == [2, 0]  # order kept
    assert load_config(None, {"seeds": 3}).seed_list == [3]  # `-p seeds=3` gives an int
    assert load_config(None, {"seeds": parse_override("seeds=0,1")[1]}).seed_list == [0, 1]


@pytest.mark.parametrize("value", ["0,0", "-1", "0,a", "1.5", "0;1", "0,1,1"])
def test_bad_seeds_name_the_value_and_the_fix(value):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"seeds": value})
    msg = str(err.value)
    assert f"seeds={value!r}" in msg and "seeds: 0,1,2" in msg and "\n" not in msg


def test_seeds_are_not_hashed_each_seed_is():
    cfg = load_config(None, {"epochs": 3})
    many = cfg.replace(seeds="0,1,2")
    for key in (baseline_key, pixelcam_key):
        assert key(many) == key(cfg)  # the seed-0 run of a multi-seed profile is today's run
        assert key(many.replace(seed=1)) == key(cfg.replace(seed=1)) != key(cfg)


def test_switching_datasets_never_carries_one_datasets_overrides_to_the_other():
    """Notebook 11 builds the other dataset's baseline from a config already switched to one
    dataset: CAMELYON16's 20 epochs must not become GlaS's."""
    cfg = load_config(None, {"epochs": 1000, "data_root": "synthetic",
                             "datasets": "glas,camelyon16",
                             "camelyon16": {"epochs": 20, "low_res": True}})
    glas = cfg.for_dataset("glas")
    assert (glas.epochs, glas.low_res) == (1000, False)
    assert cfg.for_dataset("camelyon16").for_dataset("glas") == glas
    assert glas.for_dataset("camelyon16") == cfg.for_dataset("camelyon16")
    assert cfg.for_dataset("camelyon16").epochs == 20


def test_profiles_keep_their_shared_keys_in_one_base_file():
    """Each profile's notebooks share `_base.yaml`; a notebook file holds only what it changes
    (no key repeated with the base's value), and reads as the base with its keys on top."""
    import yaml

    from pixelcam.config import BASE_FILE, notebook_params, profiles, read_params

    root = Path(__file__).resolve().parents[1]
    for profile in profiles(root):
        folder = root / "params" / profile
        base = yaml.safe_load((folder / BASE_FILE).read_text())
        for path in notebook_params(folder):
            own = yaml.safe_load(path.read_text()) or {}
            repeated = [k for k, v in own.items() if k in base and base[k] == v]
            assert not repeated, f"{path}: repeats {repeated} of {BASE_FILE}"
            assert read_params(path) == {**base, **own} or set(own) & {"glas", "camelyon16"}


def test_a_block_entry_of_a_notebook_file_replaces_only_that_entry(tmp_path):
    from pixelcam.config import BASE_FILE, read_params

    (tmp_path / BASE_FILE).write_text("epochs: 3\ncamelyon16: {epochs: 2, low_res: true}\n")
    (tmp_path / "01_x.yaml").write_text("lr: 0.1\ncamelyon16: {epochs: 5}\n")
    assert read_params(tmp_path / "01_x.yaml") == {
        "epochs": 3, "lr": 0.1, "camelyon16": {"epochs": 5, "low_res": True}}
    assert load_config(tmp_path / "01_x.yaml").for_dataset("camelyon16").epochs == 5


def test_every_key_is_in_a_hashed_or_an_unhashed_group():
    """A new Config key must say whether it defines a training: an ungrouped one fails here."""
    ungrouped = ungrouped_keys()
    assert ungrouped == [], (f"Config keys {ungrouped} have no group: declare them with "
                             "key(<group>, default), a group of HASHED_GROUPS or UNHASHED_GROUPS")
    assert not set(HASHED_GROUPS) & set(UNHASHED_GROUPS)
    assert {group_of(f.name) for f in dataclasses.fields(Config)} == {
        *HASHED_GROUPS, *UNHASHED_GROUPS}


@dataclasses.dataclass(frozen=True)
class _WithUngroupedKey(Config):
    new_knob: int = 3  # declared without key(): in no group


def test_the_group_check_catches_a_key_without_a_group():
    assert ungrouped_keys(_WithUngroupedKey) == ["new_knob"]


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("name", keys_in(*HASHED_GROUPS))
def test_each_hashed_key_changes_the_pixelcam_run_key(name):
    cfg = load_config(None, {})
    raw = training_dict(cfg)
    changed = dict(raw, **{name: _changed(raw[name])})
    assert changed != raw
    # the digest the run key is made of changes with every hashed key
    assert config_module._digest(changed) != config_module._digest(raw)


@pytest.mark.parametrize("name", keys_in(*UNHASHED_GROUPS))
def test_no_unhashed_key_is_in_a_run_key(name):
    cfg = load_config(None, {})
    assert name not in training_dict(cfg)
    assert set(training_dict(cfg)) == set(keys_in(*HASHED_GROUPS))


def test_a_baseline_key_leaves_out_the_pixelcam_phase_and_the_unet_the_wsol_head():
    cfg = load_config(None, {})
    assert baseline_key(cfg) == baseline_key(cfg.replace(lam=0.5, seeder="th", n_fg=2))
    assert pixelcam_key(cfg) != pixelcam_key(cfg.replace(lam=0.5))
    assert unet_key(cfg) == unet_key(cfg.replace(method="deepmil", spatial_dropout=0.2))
    assert unet_key(cfg) != unet_key(cfg.replace(epochs=3))
    for name in ("eval_batch_size", "figure_images", "table_methods", "device", "seeds"):
        assert group_of(name) in UNHASHED_GROUPS


def test_per_dataset_overrides_are_one_mapping_keyed_by_dataset(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("datasets: glas,camelyon16\ncamelyon16:\n  epochs: 7\n")
    cfg = load_config(path)
    assert cfg.per_dataset["camelyon16"]["epochs"] == 7
    assert cfg.for_dataset("camelyon16").epochs == 7 and cfg.for_dataset("glas").epochs == 1000
    assert cfg.replace(seed=1).per_dataset == cfg.per_dataset  # survives a round trip
    with pytest.raises(ConfigError, match="per_dataset names 'kather'"):
        load_config(None, {"per_dataset": {"kather": {"epochs": 2}}})
