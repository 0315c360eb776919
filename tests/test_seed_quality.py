"""Seed precision: where the pseudo-labels land against the masks, counted exactly."""

import math

import torch

from pixelcam.seed_quality import seed_precision


def _drawn(seeds, mask):
    return {"seeds": torch.tensor(seeds), "mask": None if mask is None else torch.tensor(mask)}


def test_seed_precision_counts_hits_over_images_with_masks():
    mask = [[1, 1, 0, 0]]
    # FG seeds at columns 0 (on) and 2 (off); BG seed at 3 (off the object): 1/2 FG, 1/1 BG
    a = _drawn([[1, -1, 1, 0]], mask)
    # FG on, BG on the object: 1/1 FG, 0/1 BG
    b = _drawn([[1, 0, -1, -1]], mask)
    # an image without a mask counts for nothing
    c = _drawn([[1, 1, 1, 1]], None)
    out = seed_precision([a, b, c])
    assert out["FG seeds on objects %"] == 100.0 * 2 / 3
    assert out["BG seeds off objects %"] == 100.0 * 1 / 2
    assert out["object pixels %"] == 50.0


def test_seed_precision_without_masks_is_nan():
    out = seed_precision([_drawn([[1, 0]], None)])
    assert all(math.isnan(v) for v in out.values())


def test_seeds_are_drawn_as_the_trainer_draws_them(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from pixelcam.config import load_config
    from pixelcam.pipelines import get_baseline
    from pixelcam.seed_quality import cam_precision, draw_seeds, seed_grid, seed_precision_table

    def row_cam(table):
        return {k: table.loc["LayerCAM", k] for k in table.columns if "CAM" in k}

    cfg = load_config(None, {
        "synthetic_n_train": 6, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
        "synthetic_n_valpx_per_class": 1, "synthetic_width": 48, "synthetic_height": 40,
        "image_size": 32, "resize_size": 40, "backbone": "resnet18", "pretrained": "false",
        "epochs": 1, "batch_size": 4, "device": "cpu", "n_fg": 3, "n_bg": 2,
        "cache_dir": str(tmp_path)})
    base = get_baseline(cfg, log=lambda s: None)
    drawn = draw_seeds(base, cfg)
    assert len(drawn) == 6
    for d in drawn:  # n_fg FG and n_bg BG seeds per image, at the evaluation size
        assert d["seeds"].shape == d["cam"].shape == (32, 32)
        assert int((d["seeds"] == 1).sum()) == 3 and int((d["seeds"] == 0).sum()) == 2
        assert d["mask"] is not None  # the synthetic train split has masks
    # the same params draw the same seeds
    again = draw_seeds(base, cfg)
    assert all(torch.equal(a["seeds"], b["seeds"]) for a, b in zip(drawn, again))
    table = seed_precision_table({"LayerCAM": base}, cfg)
    assert list(table.columns) == ["FG seeds on objects %", "BG seeds off objects %",
                                   "object pixels %", "top 1% CAM on objects %",
                                   "top 5% CAM on objects %", "bottom 20% CAM off objects %"]
    assert row_cam(table) == {k: round(v, 1) for k, v in cam_precision(drawn).items()}
    row = table.loc["LayerCAM"]
    assert 0 <= row["FG seeds on objects %"] <= 100 and 0 < row["object pixels %"] < 100
    assert row["FG seeds on objects %"] == round(seed_precision(drawn)["FG seeds on objects %"], 1)
    fig = seed_grid({"LayerCAM": base}, cfg, per_class=1)
    assert len(fig.axes) == 2


def test_cam_precision_scores_the_cams_top_and_bottom():
    from pixelcam.seed_quality import cam_precision

    # 10 pixels each; ranks by CAM, with a tie at the bottom of the first image
    cam_a = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.0, 0.0]])
    mask_a = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1, 0]])
    cam_b = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]])
    mask_b = torch.tensor([[0, 0, 1, 0, 0, 0, 0, 0, 0, 1]])
    drawn = [{"cam": cam_a, "mask": mask_a}, {"cam": cam_b, "mask": mask_b},
             {"cam": cam_b, "mask": None}]  # no mask: not counted
    out = cam_precision(drawn, top=(0.1, 0.3), bottom=0.2)
    assert list(out) == ["top 10% CAM on objects %", "top 30% CAM on objects %",
                         "bottom 20% CAM off objects %"]
    # top 1 pixel: a's 0.9 (on), b's 1.0 (on) -> 2/2
    assert out["top 10% CAM on objects %"] == 100.0
    # top 3: a on, off, on; b on, off, off -> 3/6
    assert out["top 30% CAM on objects %"] == 50.0
    # bottom 2: a's tied zeros in raster order (index 8 on, 9 off); b's 0.0, 0.1 (both off) -> 3/4
    assert out["bottom 20% CAM off objects %"] == 75.0


def test_cam_precision_without_masks_is_nan():
    from pixelcam.seed_quality import cam_precision

    out = cam_precision([{"cam": torch.ones(2, 2), "mask": None}])
    assert len(out) == 3 and all(math.isnan(v) for v in out.values())


def test_bg_region_share_follows_the_seeder():
    from pixelcam.config import load_config
    from pixelcam.train import bg_region_share

    assert bg_region_share(load_config(None, {"seeder": "pb", "min_p": 0.2})) == 0.2
    assert bg_region_share(load_config(None, {"seeder": "th", "th_min_p": 0.4})) == 0.4
