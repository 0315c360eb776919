"""Time to a full-size localisation map per image (Table 11's measure), ours vs pytorch-grad-cam.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_maps.py`). Writes
outputs/benchmarks/maps.json and prints a table. All timings come from one process, one run, so
the ratios compare like with like; the absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pixelcam.evaluate import resolve_device
from pixelcam.maps import compute_maps
from pixelcam.models.model import build_model
from pixelcam.provenance import device_name, versions
from pixelcam.timing import wall_times


def _gradcam_runner(kind: str, model: torch.nn.Module, x: torch.Tensor, label: int):
    """pytorch-grad-cam on the same model: it hooks the encoder's output (our F)."""
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            return self.inner(inp).logits

    wrapped = Logits(model)
    cls = {"layercam": LayerCAM, "gradcampp": GradCAMPlusPlus}[kind]
    cam = cls(model=wrapped, target_layers=[model.encoder])
    targets = [ClassifierOutputTarget(label)]
    return lambda: cam(input_tensor=x, targets=targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="outputs/benchmarks/maps.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.backbone, pixel_head="linear").to(device).eval()
    x = torch.randn(1, 3, args.size, args.size, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    size = (args.size, args.size)

    def forward():
        with torch.no_grad():
            model(x)

    cases = {"forward": forward}
    from pixelcam.maps import MAPS

    for method in ("pixelcam", "layercam", "gradcampp"):
        if method in MAPS:
            cases[method] = lambda m=method: compute_maps(m, model, x, y, size=size)
    for kind in ("layercam", "gradcampp"):
        cases[f"pytorch-grad-cam {kind}"] = _gradcam_runner(kind, model, x, 0)

    ms = {name: 1000 * statistics.median(wall_times(fn, device, args.repeats))
          for name, fn in cases.items()}
    base = ms["forward"]
    rows = {name: {"ms": round(t, 2), "x_forward": round(t / base, 3)} for name, t in ms.items()}
    for kind in ("layercam", "gradcampp"):
        if kind in ms:
            rows[kind]["x_pytorch_grad_cam"] = round(ms[kind] / ms[f"pytorch-grad-cam {kind}"], 3)
    result = {
        "benchmark": "map extraction, one image", "backbone": args.backbone,
        "input": [1, 3, args.size, args.size], "repeats": args.repeats,
        "device": device_name(device), "threads": torch.get_num_threads(),
        "versions": versions(), "results": rows,
        "goals": {"pixelcam_x_forward_max": 1.1, "gradient_maps_x_forward_max": 3.0,
                  "gradient_maps_x_pytorch_grad_cam_max": 1.0},
        "paper_a6000_ms": {"pixelcam": 8.4, "layercam": 37.9, "gradcampp": 40.9},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'case':32s} {'ms':>9s} {'x forward':>10s} {'x grad-cam':>11s}")
    for name, row in rows.items():
        print(f"{name:32s} {row['ms']:9.2f} {row['x_forward']:10.3f} "
              f"{row.get('x_pytorch_grad_cam', float('nan')):11.3f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
