"""Which EfficientNet-Lite0 stage separates glands from the rest, before any training?

A logistic-regression probe per stage of the frozen ImageNet encoder (`pretrained: package`,
output stride 16, 224 px): fit on the train split's pixels (masks averaged to the stage's grid,
a cell is gland when at least half of it is), scored as PxAP on valpx with the probe's map
upsampled to 224. It bounds what a pixel head on that stage could learn from perfect seeds; the
real-cpu profile's `feature_stage: 3` comes from it (README, "See the claim on real data without
a GPU"). Needs a GlaS data root with train masks:

    PIXELCAM_GLAS_ROOT=/data/glas-dev .venv/bin/python benchmarks/probe_feature_stages.py
"""

from __future__ import annotations

import os
import sys

import timm
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from pixelcam.config import load_config
from pixelcam.evaluate import eval_loader
from pixelcam.models.backbones import package_weights
from pixelcam.runs import dataset

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


def main() -> int:
    root = os.environ.get("PIXELCAM_GLAS_ROOT")
    if not root:
        print("set PIXELCAM_GLAS_ROOT to a GlaS data root with train masks", file=sys.stderr)
        return 2
    cfg = load_config(None, {"data_root": root, "image_size": 224, "device": "cpu"})
    net = timm.create_model("efficientnet_lite0", num_classes=0, global_pool="",
                            output_stride=16)
    state = {k: v for k, v in package_weights("efficientnet_lite0").items()
             if not k.startswith("classifier")}
    net.load_state_dict(state)
    net.eval()
    splits = {}
    for split in ("train", "valpx"):
        ds = dataset(cfg, split, train_masks=True)
        batch = next(iter(eval_loader(ds, len(ds))))
        splits[split] = (stage_features(net, batch["image"]), batch["mask"])
    for name in STAGES:
        (f_train, m_train), (f_val, m_val) = ((f[name], m) for f, m in
                                              (splits["train"], splits["valpx"]))
        grid = f_train.shape[-2:]
        target = F.adaptive_avg_pool2d(m_train[:, None].float(), grid)[:, 0] >= 0.5
        pixels = f_train.permute(0, 2, 3, 1).reshape(-1, f_train.shape[1]).numpy()
        probe = LogisticRegression(max_iter=1000, C=0.1).fit(pixels, target.reshape(-1).numpy())
        val_pixels = f_val.permute(0, 2, 3, 1).reshape(-1, f_val.shape[1]).numpy()
        prob = torch.tensor(probe.predict_proba(val_pixels)[:, 1], dtype=torch.float32)
        maps = F.interpolate(prob.view(f_val.shape[0], 1, *f_val.shape[-2:]),
                             size=m_val.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        pxap = 100 * average_precision_score(m_val.reshape(-1).numpy(), maps.reshape(-1).numpy())
        print(f"{name:9s} {f_train.shape[1]:5d} channels {tuple(grid)} valpx PxAP {pxap:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
