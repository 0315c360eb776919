"""The paper's experiments as functions: which runs a table needs, and the numbers it shows.

Notebooks call these and plot; every trained model comes from the run cache (pixelcam.runs), so
a run that two notebooks share is trained once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pixelcam.config import DATASETS, Config
from pixelcam.evaluate import resolve_device
from pixelcam.metrics import paired_ttest
from pixelcam.models.cams import compute_maps
from pixelcam.progress import note
from pixelcam.report import (  # noqa: F401 - notebooks reach these through `ex.`
    CLASS_NAMES,
    METHOD_NAMES,
    METRIC_NAMES,
    by_row,
    comparison,
    first_seed,
    format_mean_std,
    method_label,
    paper_rows,
    paper_table,
    row_label,
    run_seed,
    scores,
    seed_note,
    seed_table,
)
from pixelcam.runs import (  # noqa: F401
    Run,
    cached_on,
    config_for_method,
    data_key,
    data_paths,
    dataset,
    evaluate_on,
    get_baseline,
    get_or_train,
    get_pixelcam,
    model_for,
    table_runs,
    with_data_of,
)
from pixelcam.timing import wall_times

Log = Callable[[str], None]


def other_dataset(name: str) -> str:
    """The OOD partner of a dataset (GlaS <-> CAMELYON16)."""
    return next(d for d in DATASETS if d != name)


def dataset_runs(cfg: Config, log: Log = note, *, all_seeds: bool = False
                 ) -> dict[str, list[Run]]:
    """Table 1's runs for every dataset the notebook covers, in the paper's row order.

    The runs of the first seed of `seeds` (`seed` when `seeds` is empty); with `all_seeds`,
    every row once per seed of `seeds`, seed-major (all rows of the first seed, then the next),
    the list `main_table`, `seed_table` and `ttest_table` aggregate over seeds.
    """
    out = {}
    for name in cfg.dataset_names:
        dcfg = cfg.for_dataset(name)
        seeds = dcfg.seed_list if all_seeds else dcfg.seed_list[:1]
        out[name] = [run for _, run in table_runs(dcfg, log, seeds)]
    return out


def seed_named_runs(runs: list[Run], prefix: str) -> dict[str, Run]:
    """results.json names of a seed-major run list: "<prefix> / <row>" for the first seed (the
    names a single-seed report uses), "<prefix> / <row> (seed <s>)" for the other seeds."""
    first = run_seed(runs[0]) if runs else 0
    return {f"{prefix} / {method_label(r)}" + ("" if run_seed(r) == first
                                                else f" (seed {run_seed(r)})"): r
            for r in runs}


def pairs(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """(baseline, PixelCAM) run pairs of the same method and seed, in row order (seed-major
    when the runs cover several seeds)."""
    runs = list(runs)
    by_key = {(method_label(r), run_seed(r)): r for r in runs}
    return [(r, by_key[(f"{method_label(r)} + PixelCAM", run_seed(r))]) for r in runs
            if r.kind == "baseline" and (f"{method_label(r)} + PixelCAM", run_seed(r)) in by_key]


def _ttest(xa: list[float], xb: list[float]) -> dict[str, Any]:
    """paired_ttest(xa, xb) on the pairs without NaN; NaN t and p below 2 pairs."""
    keep = [(u, v) for u, v in zip(xa, xb) if not (math.isnan(u) or math.isnan(v))]
    if len(keep) >= 2:
        return paired_ttest([u for u, _ in keep], [v for _, v in keep])
    return {"t": float("nan"), "p": float("nan"), "df": len(keep) - 1}


def seed_ttest(pairs_: list[tuple[Run, Run]], checkpoint: str) -> dict[str, Any]:
    """Paired t-test over seeds: each seed's PixelCAM test PxAP against its baseline's
    (`scipy.stats.ttest_rel`, PixelCAM first: t > 0 means PixelCAM is better; df = seeds - 1;
    NaN with one seed)."""
    return _ttest([p.test(checkpoint)["pxap"] for _, p in pairs_],
                  [b.test(checkpoint)["pxap"] for b, _ in pairs_])


# --- Table 2 (and 9, 10): paired t-tests ---------------------------------------------------

def ttest_table(runs: list[Run], cfg: Config, table: str = "table2",
                checkpoint: str | None = None) -> pd.DataFrame:
    """Baseline vs PixelCAM localisation: the paper's t and p beside this run's three tests.

    *resampled*: pooled PxAP on the same `ttest_resamples` bootstrap resamples of the test set
    for both models (29 resamples give the paper's df = 28); *per image*: the AP of each test
    image with foreground (df = images - 1); both on the first seed's pair. *over seeds*: each
    seed's test PxAP, paired by seed (df = seeds - 1; NaN with one seed). All are two-sided
    `scipy.stats.ttest_rel`, with PixelCAM first so that t > 0 means PixelCAM is better, as in
    the paper. `runs` may hold every row once per seed (`dataset_runs(cfg, all_seeds=True)`).
    """
    checkpoint = checkpoint or cfg.select
    paper = paper_rows(table, cfg.dataset)
    by_method: dict[str, list[tuple[Run, Run]]] = {}
    for base, pix in pairs(runs):
        by_method.setdefault(method_label(base), []).append((base, pix))
    rows = []
    for label, seeded in by_method.items():
        base, pix = seeded[0]
        ref = paper.get(label, {})
        row: dict[str, Any] = {"Method": label, "t paper": ref.get("t"), "p paper": ref.get("p")}
        a, b = pix.test(checkpoint), base.test(checkpoint)
        for name, res in (("resampled", _ttest(a.get("resampled_pxap", []),
                                               b.get("resampled_pxap", []))),
                          ("per image", _ttest(a["per_image"]["ap"], b["per_image"]["ap"])),
                          ("over seeds", seed_ttest(seeded, checkpoint))):
            row[f"t {name}"] = round(res["t"], 2)
            row[f"p {name}"] = float(f"{res['p']:.2g}")
            row[f"df {name}"] = res["df"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("Method")


# --- Table 3: out of distribution ----------------------------------------------------------

def ood_rows(cfg: Config, source: str, runs: list[Run] | None = None, log: Log = note
             ) -> tuple[str, list[tuple[Run, dict[str, Any]]]]:
    """Every Table 1 run trained on `source`, evaluated on the other dataset's test split."""
    target = other_dataset(source)
    tcfg = cfg.for_dataset(target)
    if runs is None:
        runs = dataset_runs(cfg.replace(datasets=source), log)[source]
    out = []
    for run in runs:
        if run.kind == "unet":  # Table 3 has no U-Net row
            continue
        out.append((run, evaluate_on(run, tcfg, cfg.select, log=log)))
    return target, out


def ood_table(cfg: Config, source: str, runs: list[Run] | None = None, log: Log = note
              ) -> pd.DataFrame:
    """Table 3 for one direction: PxAP and CL on the target test set (paper columns = target)."""
    target, rows = ood_rows(cfg, source, runs, log)
    return comparison([(method_label(run), scores(res)) for run, res in rows], "table3", target)


# --- Tables 4, 5: class separability J -----------------------------------------------------

def separability_on(run: Run, data: Config, checkpoint: str, split: str = "test"
                    ) -> pd.DataFrame:
    """J per test image of one run's pixel features (cached beside the run)."""
    from pixelcam.analysis import separability

    def compute(model, loader, device):
        return separability(model, loader, device).to_dict(orient="list")

    return pd.DataFrame(cached_on(run, data, checkpoint, split, "separability-", compute))


def separability_table(runs: list[Run], data: Config, table: str, prefix: str,
                       checkpoint: str | None = None
                       ) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Mean J over normal, cancer and all test images, paper beside run; and J per image."""
    from pixelcam.analysis import separability_summary

    checkpoint = checkpoint or data.select
    paper = paper_rows(table, prefix)
    rows, per_image = [], {}
    for base, pix in pairs(runs):
        for run in (base, pix):
            label = method_label(run)
            df = separability_on(run, data, checkpoint)
            per_image[label] = df["j"]
            summary = separability_summary(df, ("normal", "cancer"))  # the paper's columns
            row: dict[str, Any] = {"Method": label}
            for key in ("normal", "cancer", "all"):
                row[f"{key} paper"] = paper.get(label, {}).get(key)
                value = summary[key]
                row[f"{key} run"] = None if np.isnan(value) else round(float(value), 3)
            rows.append(row)
    return pd.DataFrame(rows).set_index("Method"), per_image


# --- ablations: one baseline, PixelCAM variants --------------------------------------------

# (label suffix, params changes) of the PixelCAM variants of notebooks 04, 07 and 08
DEPTH_VARIANTS = [("linear", {"pixel_head": "linear"}),
                  ("multi-layer", {"pixel_head": "multi_layer"})]
SELECTION_VARIANTS = [("B-LOC CAM", {"cam_checkpoint": "b-loc"}),
                      ("B-CL CAM", {"cam_checkpoint": "b-cl"})]
SAMPLING_VARIANTS = [("TH", {"seeder": "th"}), ("PB", {"seeder": "pb"})]


def n_variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Notebook 05's sweep: n FG and n BG seeds for each n of `n_values`."""
    return [(f"n={v}", {"n_fg": v, "n_bg": v}) for v in parse_values(cfg.n_values, int)]


def lam_variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Notebook 06's sweep: each pixel-loss weight of `lam_values`."""
    return [(f"lambda={v:g}", {"lam": v}) for v in parse_values(cfg.lam_values, float)]


def variant_runs(cfg: Config, method: str, variants: list[tuple[str, dict[str, Any]]],
                 log: Log = note) -> list[tuple[str, Run]]:
    """The baseline of `method`, then a PixelCAM run per (label, params changes)."""
    mcfg = config_for_method(cfg, method)
    base = get_baseline(mcfg, log)
    out = [(method_label(base), base)]
    for label, changes in variants:
        out.append((label, get_pixelcam(mcfg.replace(**changes), log, base)))
    return out


def method_variants(cfg: Config, methods: list[str], variants: list[tuple[str, dict[str, Any]]],
                    log: Log = note) -> list[tuple[str, Run]]:
    """Per method: its baseline, then "<Method> + PixelCAM (<suffix>)" per (suffix, changes)."""
    rows: list[tuple[str, Run]] = []
    for method in methods:
        label = METHOD_NAMES[method]
        rows += variant_runs(cfg, method, [(f"{label} + PixelCAM ({suffix})", changes)
                                           for suffix, changes in variants], log)
    return rows


def variant_table(rows: list[tuple[str, Run]], cfg: Config, table: str,
                  paper_label: dict[str, str] | None = None) -> pd.DataFrame:
    """PxAP and CL of labelled runs beside the paper's table."""
    entries = [(label, scores(run.test(cfg.select))) for label, run in rows]
    return comparison(entries, table, cfg.dataset, paper_label=paper_label)


def parse_values(text: str, kind: type) -> list[Any]:
    """A comma-separated params value ("1,5,10") as numbers."""
    return [kind(v) for v in text.split(",") if v.strip()]


# --- Table 18: pseudo-labels from a model trained on the other dataset ---------------------

def external_runs(cfg: Config, method: str = "layercam", log: Log = note
                  ) -> dict[str, tuple[dict[str, Run], Run, Run]]:
    """Per dataset: its own baseline and PixelCAM, the other dataset's baseline, and PixelCAM
    trained on that baseline's pseudo-labels."""
    out = {}
    for name in cfg.dataset_names:
        dcfg = config_for_method(cfg.for_dataset(name), method)
        other = other_dataset(name)
        out[name] = (get_or_train(dcfg, log), get_baseline(dcfg.for_dataset(other), log),
                     get_pixelcam(dcfg.replace(cam_source=other), log))
    return out


def external_table(cfg: Config, method: str = "layercam", log: Log = note) -> pd.DataFrame:
    """Same vs external pseudo-labels for every dataset the notebook covers."""
    rows = []
    for name, (same, external_base, external) in external_runs(cfg, method, log).items():
        dcfg = config_for_method(cfg.for_dataset(name), method)
        for run, res, source in (
            (same["baseline"], same["baseline"].test(cfg.select), "same"),
            (same["pixelcam"], same["pixelcam"].test(cfg.select), "same"),
            (external_base, evaluate_on(external_base, dcfg, cfg.select, log=log), "external"),
            (external, external.test(cfg.select), "external"),
        ):
            table = comparison([(method_label(run), scores(res))], "table18", f"{name}_{source}")
            table.insert(0, "Pseudo-labels", source)
            table.insert(0, "Dataset", name)
            rows.append(table)
    return pd.concat(rows)


# --- Figures 4, 5, 9, 10: stain shift --------------------------------------------------------

def stain_levels_for(cfg: Config, log: Log = note):
    """The frozen stain levels of cfg's dataset restained with the other dataset's styles."""
    from pixelcam.data.stain import StainLevels, fit_stain_levels

    if cfg.stain_levels_file:
        return StainLevels.load(cfg.stain_levels_file)
    target = cfg.for_dataset(other_dataset(cfg.dataset))
    s_root, s_fold = data_paths(cfg)
    t_root, t_fold = data_paths(target)
    name = f"levels-{data_key(cfg, 'train')}-{data_key(target, 'train')}-{cfg.stain_levels}.json"
    path = Path(cfg.cache_dir) / "stain" / name
    if path.exists():
        return StainLevels.load(path)
    levels = fit_stain_levels(s_root, s_fold, t_root, t_fold, n_levels=cfg.stain_levels,
                              seed=cfg.seed)
    levels.save(path)
    log(f"[stain] fitted {len(levels.levels)} levels from {levels.n_candidates} candidates "
        f"({levels.n_failed} failed) into {path}")
    return levels


def stain_shift(cfg: Config, runs: list[Run], log: Log = note
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """CL and PxAP of each run on cfg's test set restained to every level (0 = original)."""
    from pixelcam.data.stain import write_restained_split

    levels = stain_levels_for(cfg, log)
    root, fold = data_paths(cfg)
    out_dir = Path(cfg.cache_dir) / "stain" / f"test-{data_key(cfg, 'test')}-{levels.digest()[:12]}"
    manifest = write_restained_split(root, fold, "test", levels, out_dir)
    datas = [(0, cfg)] + [
        (entry["level"], cfg.replace(data_root=str(entry["data_root"]),
                                     fold_dir=str(entry["fold_dir"])))
        for entry in manifest["levels"]]
    rows = []
    for run in runs:
        for level, data in datas:
            res = evaluate_on(run, data, cfg.select, log=log)
            for metric, value in scores(res).items():
                rows.append({"level": level, "method": method_label(run),
                             "metric": METRIC_NAMES[metric], "value": value})
    return pd.DataFrame(rows), manifest


def stain_level_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """Per level: the target image, its distance to the source stain, images that fell back."""
    rows = [{"level": e["level"], "target image": e.get("target_image_id", ""),
             "distance": e.get("distance"), "images": e["n_images"],
             "fallbacks": e["n_fallback"]} for e in manifest["levels"]]
    return pd.DataFrame(rows).set_index("level")


def stain_strip(manifest: dict[str, Any], cfg: Config, index: int = 0):
    """One test image at level 0 (original) and at every stain level."""
    import matplotlib.pyplot as plt
    from PIL import Image

    root, fold = data_paths(cfg)
    record = dataset(cfg, "test").records[index]
    paths = [root / record.image_id] + [Path(e["data_root"]) / record.image_id
                                        for e in manifest["levels"]]
    fig, axes = plt.subplots(1, len(paths), figsize=(1.6 * len(paths), 1.9), squeeze=False)
    for level, (ax, path) in enumerate(zip(axes[0], paths)):
        with Image.open(path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(f"level {level}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)  # shown once, where the caller displays it, not again at the end of the cell
    return fig


# --- Table 11: complexity -------------------------------------------------------------------

def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def complexity_table(cfg: Config, repeats: int | None = None) -> pd.DataFrame:
    """Time to a full-size map for one random image, and parameter counts, per Table 11 row.

    Timings are medians over `repeats` (default: cfg.timing_repeats) after two warm-up passes,
    on cfg's device; the paper's were taken on an RTX A6000 GPU, so only the ratios between
    rows compare.
    """
    device = resolve_device(cfg.device)
    repeats = cfg.timing_repeats if repeats is None else repeats
    paper = paper_table("table11")["rows"]
    rows = []
    size = (cfg.image_size, cfg.image_size)
    for method in cfg.methods:
        mcfg = config_for_method(cfg, method)
        kinds = ["baseline"] + (["negev"] if cfg.table_negev and method != "sat" else []) + [
            "pixelcam"]
        for kind in kinds:
            model = model_for(kind, mcfg).to(device).eval()
            map_method = {"baseline": mcfg.map_method, "pixelcam": "pixelcam",
                          "negev": "negev"}[kind]
            msize = (mcfg.image_size, mcfg.image_size)  # SAT: DeiT-Tiny's 224x224
            rows.append(_time_row(kind, mcfg, model, map_method, msize, device, repeats, paper))
    if cfg.table_unet:
        model = model_for("unet", cfg).to(device).eval()
        rows.append(_time_row("unet", cfg, model, "unet", size, device, repeats, paper))
    return pd.DataFrame(rows).set_index("Method")


def _time_row(kind: str, cfg: Config, model: torch.nn.Module, map_method: str,
              size: tuple[int, int], device: torch.device, repeats: int,
              paper: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(1, 3, *size, generator=gen).to(device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    times = wall_times(lambda: compute_maps(map_method, model, x, y, size=size), device, repeats)
    label = row_label(kind, cfg.method)
    ref = paper.get(label, {})
    return {"Method": label, "time paper (ms)": ref.get("time_ms"),
            "time run (ms)": round(1000 * float(np.median(times)), 1),
            "params paper": ref.get("params"), "params run": count_parameters(model)}


# --- Figures 19-24: t-SNE of pixel features --------------------------------------------------

def tsne_columns(pair: tuple[Run, Run], data: Config, labels: list[int],
                 checkpoint: str | None = None) -> dict[str, dict[str, Any]]:
    """For the first `tsne_images` test images of each class in `labels`: the baseline's and
    PixelCAM's pixel-feature embeddings (and PixelCAM's pixel logits), keyed by image name."""
    from pixelcam.analysis import pixel_embedding
    from pixelcam.report import pick_images

    checkpoint = checkpoint or data.select
    device = resolve_device(data.device)
    base, pix = pair
    out: dict[str, dict[str, Any]] = {}
    models = {"baseline": base.load_model(checkpoint, device),
              "pixelcam": pix.load_model(checkpoint, device)}
    for which, run in (("baseline", base), ("pixelcam", pix)):
        label = method_label(run)
        ds = dataset(with_data_of(run.config, data), "test")
        all_labels = [r.label for r in ds.records]
        chosen = [i for i in pick_images(all_labels, data.tsne_images) if all_labels[i] in labels]
        for i in chosen:
            item = ds[i]
            name = f"{CLASS_NAMES[data.dataset][all_labels[i]]} #{i}"
            with torch.no_grad():
                emb = pixel_embedding(models[which], item["image"].to(device), item["mask"],
                                      max_pixels=data.tsne_pixels, seed=data.seed)
            out.setdefault(name, {})[label] = emb
    return out
