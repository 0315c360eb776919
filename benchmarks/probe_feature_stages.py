"""How well could a pixel head on F separate glands, given perfect seeds?

A logistic-regression probe per stage of the frozen ImageNet EfficientNet-Lite0 encoder
(`pretrained: package`, output stride 16): fit on the train split's pixels (masks averaged to the
stage's grid, a cell is gland when at least half of it is), scored as PxAP on a validation split
with the probe's map upsampled to the image size. It bounds what a pixel head on that stage could
learn from perfect seeds; the real-cpu profile's `feature_stage: 3` comes from it
(docs/real-data.md). Needs a GlaS data root with train masks:

    PIXELCAM_GLAS_ROOT=/data/glas-dev .venv/bin/python benchmarks/probe_feature_stages.py
    ... probe_feature_stages.py --image-size 448 --split valcl     # glands seen twice as large
    ... probe_feature_stages.py --run <cache>/runs/baseline-<key>   # a trained run's F (B-LOC)

With `--run` the probe reads the run's own F (its encoder after training, at the run's image
size unless --image-size says otherwise): how much gland information training left in F.
"""

from __future__ import annotations

import argparse
import os
import sys

import timm
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from pixelcam.builders import dataset
from pixelcam.config import load_config
from pixelcam.evaluate import eval_loader
from pixelcam.models.backbones import package_weights
from pixelcam.store import load_run

STAGES = ("blocks.2", "blocks.4", "blocks.5", "blocks.6", "bn2")


def stage_features(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    hooks = [net.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: found.__setitem__(name, out)) for name in STAGES]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return found


def probe_pxap(f_train: torch.Tensor, m_train: torch.Tensor, f_val: torch.Tensor,
               m_val: torch.Tensor) -> float:
    grid = f_train.shape[-2:]
    target = F.adaptive_avg_pool2d(m_train[:, None].float(), grid)[:, 0] >= 0.5
    pixels = f_train.permute(0, 2, 3, 1).reshape(-1, f_train.shape[1]).numpy()
    probe = LogisticRegression(max_iter=1000, C=0.1).fit(pixels, target.reshape(-1).numpy())
    val_pixels = f_val.permute(0, 2, 3, 1).reshape(-1, f_val.shape[1]).numpy()
    prob = torch.tensor(probe.predict_proba(val_pixels)[:, 1], dtype=torch.float32)
    maps = F.interpolate(prob.view(f_val.shape[0], 1, *f_val.shape[-2:]),
                         size=m_val.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return 100 * average_precision_score(m_val.reshape(-1).numpy(), maps.reshape(-1).numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=0,
                        help="evaluation size in px (default: 224, or the run's)")
    parser.add_argument("--split", default="valpx", help="split the probe is scored on")
    parser.add_argument("--run", default="", help="a trained run's folder: probe its B-LOC F")
    args = parser.parse_args(argv)
    root = os.environ.get("PIXELCAM_GLAS_ROOT")
    if not root:
        print("set PIXELCAM_GLAS_ROOT to a GlaS data root with train masks", file=sys.stderr)
        return 2
    if args.run:
        run = load_run(args.run)
        size = args.image_size or run.config.image_size
        encoder = run.load_model("b-loc", torch.device("cpu")).encoder
        extract = lambda x: {"F (trained)": encoder(x)}  # noqa: E731
    else:
        size = args.image_size or 224
        net = timm.create_model("efficientnet_lite0", num_classes=0, global_pool="",
                                output_stride=16)
        state = {k: v for k, v in package_weights("efficientnet_lite0").items()
                 if not k.startswith("classifier")}
        net.load_state_dict(state)
        net.eval()
        extract = lambda x: stage_features(net, x)  # noqa: E731
    cfg = load_config(None, {"data_root": root, "image_size": size,
                             "resize_size": max(256, size), "device": "cpu"})
    splits = {}
    for split in ("train", args.split):
        ds = dataset(cfg, split, train_masks=True)
        batch = next(iter(eval_loader(ds, len(ds))))
        with torch.no_grad():
            splits[split] = (extract(batch["image"]), batch["mask"])
    (f_train, m_train), (f_val, m_val) = splits["train"], splits[args.split]
    for name, feats in f_train.items():
        pxap = probe_pxap(feats, m_train, f_val[name], m_val)
        print(f"{name:11s} {feats.shape[1]:5d} channels {tuple(feats.shape[-2:])} "
              f"{args.split} PxAP {pxap:.1f} ({size} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
