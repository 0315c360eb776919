"""One table of every benchmark figure with its target and ratio, from outputs/benchmarks/*.json.

Run: `make bench` calls it after the benchmarks (or `.venv/bin/python benchmarks/summary.py`).
Each bench_*.py writes a "summary" list of rows (figure, value, unit, target, met, ratio,
ratio_of); older files without one (maps.json) are read from their results and goals. Figures
from different files come from different processes: only the ratios inside one file are
measured side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _maps_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for bench_maps.py's JSON, which records goals rather than a summary."""
    res, goals = data.get("results", {}), data.get("goals", {})
    rows = []
    if "pixelcam" in res:
        x = res["pixelcam"]["x_forward"]
        limit = goals.get("pixelcam_x_forward_max", 1.1)
        rows.append({"figure": "PixelCAM map extraction", "value": res["pixelcam"]["ms"],
                     "unit": "ms", "target": f"<= {limit}x forward", "met": x <= limit,
                     "ratio": x, "ratio_of": "x forward"})
    for kind in ("layercam", "gradcampp"):
        if kind in res and "x_pytorch_grad_cam" in res[kind]:
            x = res[kind]["x_pytorch_grad_cam"]
            limit = goals.get("gradient_maps_x_pytorch_grad_cam_max", 1.0)
            rows.append({"figure": f"{kind} map extraction", "value": res[kind]["ms"],
                         "unit": "ms", "target": f"<= {limit}x pytorch-grad-cam",
                         "met": x <= limit, "ratio": x, "ratio_of": "x pytorch-grad-cam"})
    return rows


def rows_of(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(file-level context, summary rows) of one benchmark JSON; no rows if it has none."""
    data = json.loads(path.read_text())
    context = {"device": data.get("device", "?"), "threads": data.get("threads", "?"),
               "load_average": data.get("load_average")}
    if isinstance(data.get("summary"), list):
        return context, data["summary"]
    if data.get("benchmark", "").startswith("map extraction"):
        return context, _maps_rows(data)
    return context, []


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="outputs/benchmarks")
    args = parser.parse_args()

    files = sorted(Path(args.dir).glob("*.json"))
    if not files:
        print(f"no benchmark results in {args.dir}: run `make bench` first")
        return
    table = []
    for path in files:
        context, rows = rows_of(path)
        load = context["load_average"]
        load_text = f", load {load[0]:.1f}" if load else ""
        print(f"{path.name}: {context['device']}, {context['threads']} thread(s){load_text}")
        for row in rows:
            ratio = "-" if row.get("ratio") is None else f"{_fmt(row['ratio'])} {row['ratio_of']}"
            met = {True: "yes", False: "NO", None: "-"}[row.get("met")]
            value = f"{_fmt(row['value'])} {row.get('unit', '')}".strip()
            table.append((path.stem, row["figure"], value, row.get("target", ""), ratio, met))
    if not table:
        print("no summary rows found")
        return
    headers = ("topic", "figure", "measured", "target", "ratio", "met")
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    line = "  ".join(f"{{:{w}s}}" for w in widths)
    print()
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print(line.format(*row))


if __name__ == "__main__":
    main()
