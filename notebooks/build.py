"""The source of the report notebooks: `python notebooks/build.py` writes every NN_*.ipynb.

Notebooks are committed without outputs; editing them here keeps the twelve consistent (same
parameters cell, same first and last cells), and tests/test_notebooks.py checks that the
committed files equal what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

PARAMETERS = '''# Parameters: papermill replaces these. `params` overrides keys of params/<profile>/{name}.yaml
# (flat keys, or "camelyon16.epochs"-style keys for one dataset).
profile = "quick"
params = {{}}
output_dir = "outputs/interactive/{name}"'''

START = '''from IPython.display import Markdown, display

from pixelcam import experiments as ex
from pixelcam.notebook import start
from pixelcam.report import DATASET_NAMES, data_note{imports}

cfg, started = start("{name}", profile, params)'''

FINISH = '''path = write_results(output_dir, cfg, started, metrics=metrics, headline=headline,
                     runs=named_runs)
display(Markdown(f"Results written to `{path}`."))
display(Markdown(provenance_markdown(path)))'''


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


def notebook(name: str, title: str, intro: str, body: list[nbformat.NotebookNode],
             imports: str = "") -> nbformat.NotebookNode:
    imports = ", write_results, provenance_markdown" + imports
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [md(f"# {title}\n\n{intro.strip()}"),
                code(PARAMETERS.format(name=name), tags=["parameters"]),
                code(START.format(name=name, imports=imports)),
                *body,
                md("## Results and provenance"),
                code(FINISH)]
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding gives identical files
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


QUICK_NOTE = """The **quick** profile runs on the embedded synthetic look-alikes of GlaS and CAMELYON16 on a
CPU: its numbers are not comparable to the paper's; they show that each experiment runs end to
end. The **paper** profile runs the same cells on the real data with the paper's settings. The
**real-cpu** profile runs notebooks 01 and 05–08 on the real GlaS on a CPU in under an hour
(EfficientNet-Lite0 with packaged ImageNet weights, seeds 0, 1, 2; README, "See the claim on real
data without a GPU")."""

_VARIANTS_CELL = '''# (label suffix, params changes) of each PixelCAM variant
settings = VARIANTS
variants, TABLE = {}, {}
for name in cfg.dataset_names:
    dcfg = cfg.for_dataset(name)
    variants[name] = ex.method_variants(dcfg, cfg.methods, settings)
    TABLE[name] = ex.variant_table(variants[name], dcfg, "TABLE")
    display(Markdown(f"### TITLE{DATASET_NAMES[name]}\\n{data_note(dcfg)}"), TABLE[name])'''


def variants_cell(table: str, variants: str, title: str = "") -> nbformat.NotebookNode:
    """The first cell of notebooks 04, 07, 08: each method's baseline and PixelCAM variants."""
    return code(_VARIANTS_CELL.replace("TABLE", table).replace("VARIANTS", variants)
                .replace("TITLE", title))


_SWEEP_CELL = '''variants, TABLE = {}, {}
for name in cfg.dataset_names:
    dcfg = cfg.for_dataset(name)
    variants[name] = ex.variant_runs(dcfg, cfg.method, VARIANTS)
    TABLE[name] = ex.variant_table(variants[name], dcfg, "TABLE")
    display(Markdown(f"### {DATASET_NAMES[name]}\\n{data_note(dcfg)}"), TABLE[name])'''


def sweep_cell(table: str, variants: str) -> nbformat.NotebookNode:
    """The first cell of notebooks 05, 06: one PixelCAM run per value of a params list."""
    return code(_SWEEP_CELL.replace("TABLE", table).replace("VARIANTS", variants))


# last cells of the sweeps (FRAMES: the table's variable, TABLE: its name)
_SWEEP_FINISH = '''metrics, headline, named_runs = {}, {}, {}
for name, rows in variants.items():
    metrics[f"TABLE@{name}"] = FRAMES[name].reset_index().to_dict(orient="records")
    for label, run in rows:
        named_runs[f"{name} / {label}"] = run
    best = FRAMES[name]["PxAP run"].iloc[1:].idxmax()
    headline[f"{DATASET_NAMES[name]} best {best} PxAP"] = FRAMES[name].loc[best, "PxAP run"]'''
_PAIR_FINISH = '''metrics, headline, named_runs = {}, {}, {}
for name, rows in variants.items():
    metrics[f"TABLE@{name}"] = FRAMES[name].reset_index().to_dict(orient="records")
    for label, run in rows:
        named_runs[f"{name} / {label}"] = run
        if "PixelCAM" in label:
            headline[f"{DATASET_NAMES[name]} {label} PxAP"] = FRAMES[name].loc[label, "PxAP run"]'''

NOTEBOOKS: dict[str, tuple] = {}

NOTEBOOKS["01_main_tables"] = (
    "01 · Main results: Tables 1, 2, 4, 6 and Figures 2, 3, 6, 11–14",
    f"""
Each WSOL baseline of `table_methods` (DeepMIL, GradCAM++, LayerCAM, SAT), the same baseline
+ PixelCAM, + NEGEV (two-step) and the fully supervised U-Net, on every dataset of `datasets`,
trained and evaluated with the protocol of the paper (official-code-notes.md, sections 3–5): the
baseline's B-LOC CAMs of the train split seed PixelCAM, which starts from the baseline's B-CL
weights; test numbers are those of the `select` checkpoint (B-LOC). Every table puts the paper's
number beside this run's, with the difference. With `seeds` (e.g. `0,1,2`) every row of Tables
1 and 2 is trained once per seed: Table 1 shows the mean ± standard deviation over seeds and
every seed's number, Table 2 adds a paired t-test over seeds; the other tables and the figures
show the first seed's models. The paper reports single runs.

{QUICK_NOTE}
""",
    [
        code('''# every row once per seed of `seeds` (trains what the run cache does not hold yet)
seeded_runs = ex.dataset_runs(cfg, all_seeds=True)
runs = {name: ex.first_seed(rows) for name, rows in seeded_runs.items()}  # Tables 4, 6, figures'''),
        md("## Table 1: localisation (PxAP) and classification (CL) accuracy on the test set"),
        code('''table1, table1_seeds = {}, {}
for name, rows in seeded_runs.items():
    dcfg = cfg.for_dataset(name)
    table1[name], table1_seeds[name] = main_table(rows, dcfg), ex.seed_table(rows, dcfg)
    display(Markdown(f"### {DATASET_NAMES[name]}\\n{data_note(dcfg)}{ex.seed_note(dcfg)}"), table1[name])
    if len(dcfg.seed_list) > 1:
        display(Markdown("Every seed's number, then their mean and standard deviation (ddof = 1):"),
                table1_seeds[name])'''),
        md("""## Table 2: paired t-tests, baseline vs PixelCAM (localisation)

The paper's t and p fit 28 degrees of freedom (official-code-notes.md 5.5): *resampled* runs
`scipy.stats.ttest_rel` on the pooled PxAP of `ttest_resamples` seeded bootstrap resamples of
the test set (29 give df = 28), the same resamples for both models; *per image* uses each test
image's own AP (images with foreground); both compare the first seed's models. *over seeds*
pairs each seed's test PxAP of the baseline and of its PixelCAM model (df = seeds - 1; empty with
one seed): how the gain holds across trainings. t > 0: PixelCAM localises better."""),
        code('''table2 = {}
for name, rows in seeded_runs.items():
    table2[name] = ex.ttest_table(rows, cfg.for_dataset(name))
    display(Markdown(f"### {DATASET_NAMES[name]}"), table2[name])'''),
        md("""## Table 6: pixel rates at the best-mIoU threshold

The paper's operating point is the test set's own mIoU-best threshold (an oracle, as in the
official code); the rows *valpx threshold* use the threshold tuned on the pixel-labelled
validation images instead."""),
        code('''table6 = {}
for name, rows in runs.items():
    table6[name] = rates_table(rows, cfg.for_dataset(name))
    display(Markdown(f"### {DATASET_NAMES[name]}"), table6[name])'''),
        md("""## Table 4 and Figures 3, 6: FG/BG separability J of the pixel features

J = tr(S_B)/tr(S_W) per test image on the encoder's features F, with the ground-truth mask
brought to F's grid (a cell is FG when at least half of it is); undefined ("-", NaN) for images
without foreground, such as CAMELYON16 normal patches."""),
        code('''table4 = {}
for name, rows in runs.items():
    table4[name], per_image = ex.separability_table(rows, cfg.for_dataset(name), "table4", name)
    display(Markdown(f"### {DATASET_NAMES[name]}"), table4[name], separability_hist(per_image))'''),
        md("## Figures 2, 11–14: maps on test images (each baseline without and with PixelCAM)"),
        code('''for name, rows in runs.items():
    display(Markdown(f"### {DATASET_NAMES[name]}"))
    display(map_grid([r for r in rows if r.kind in ("baseline", "pixelcam")], cfg.for_dataset(name)))'''),
        md("""## Where the seeds land: pseudo-labels drawn from each baseline's CAMs

PixelCAM learns only what its seeds teach. Each baseline's stored train CAMs (`cam_checkpoint`)
go through the configured seeder as the trainer draws them (`n_fg` FG and `n_bg` BG pixels per
image); where the train split has masks (GlaS does; they are never used for training) the table
counts the FG seeds that fall on glands and the BG seeds that fall off them. *object pixels %*
is the chance level of an FG seed. The figure shows the seeds on a few train images (FG red
circles, BG cyan squares, mask outline white) over the CAM they were drawn from."""),
        code('''for name, rows in runs.items():
    dcfg = cfg.for_dataset(name)
    baselines = {method_label(r): r for r in rows if r.kind == "baseline"}
    display(Markdown(f"### {DATASET_NAMES[name]}"), seed_precision_table(baselines, dcfg),
            seed_grid(baselines, dcfg))'''),
        md("## Model selection: validation curves of both phases (B-LOC and B-CL)"),
        code('''for name, rows in runs.items():
    display(Markdown(f"### {DATASET_NAMES[name]}"))
    display(history_plot([r for r in rows if r.kind in ("baseline", "pixelcam")]))'''),
        code('''metrics, headline, named_runs = {}, {}, {}
for name, rows in seeded_runs.items():
    n_seeds = len(cfg.for_dataset(name).seed_list)
    for table, frames in (("table1", table1), ("table2", table2), ("table4", table4),
                          ("table6", table6)) + ((("table1 seeds", table1_seeds),) if n_seeds > 1 else ()):
        metrics[f"{table}@{name}"] = frames[name].reset_index().to_dict(orient="records")
    for row in ("LayerCAM", "LayerCAM + PixelCAM"):
        if row in table1_seeds[name].index:
            mean = f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""
            headline[f"{DATASET_NAMES[name]} {row} PxAP{mean}"] = table1_seeds[name].loc[row, "PxAP mean"]
    named_runs.update(ex.seed_named_runs(rows, name))'''),
    ],
    ", main_table, rates_table, map_grid, history_plot, method_label\n"
    "from pixelcam.figures import separability_hist\n"
    "from pixelcam.seed_quality import seed_grid, seed_precision_table",
)

NOTEBOOKS["02_ood"] = (
    "02 · Out of distribution: Table 3, Table 5 and Figures 7, 8, 15–18",
    f"""
The models of notebook 01 (reused from the run cache), trained on one dataset and evaluated on
the other's test split with the same checkpoint rules: CAMELYON16 → GlaS and GlaS → CAMELYON16.
Table columns name the target dataset. The paper does not say whether GlaS → CAMELYON16 used
the full CAMELYON16 test split or the 500-image fold-6 subset (official-code-notes.md 5.7); the
kit uses the test split of the target's `fold_dir`.

{QUICK_NOTE}
""",
    [
        md("## Table 3: PxAP and CL on the target test set"),
        code('''sources = [name for name in ("camelyon16", "glas") if name in cfg.dataset_names]
# the models of notebook 01, trained on each source dataset (reused from the run cache)
source_runs = {source: ex.dataset_runs(cfg.replace(datasets=source))[source] for source in sources}
table3 = {}
for source in sources:
    target = ex.other_dataset(source)
    table3[source] = ex.ood_table(cfg, source, source_runs[source])
    display(Markdown(f"### {DATASET_NAMES[source]} → {DATASET_NAMES[target]}\\n"
                     f"{data_note(cfg.for_dataset(target))}"), table3[source])'''),
        md("## Table 5 and Figures 7, 8: separability J of the pixel features on the target"),
        code('''table5 = {}
for source in sources:
    target = ex.other_dataset(source)
    table5[source], per_image = ex.separability_table(source_runs[source], cfg.for_dataset(target),
                                                      "table5", target)
    display(Markdown(f"### {DATASET_NAMES[source]} → {DATASET_NAMES[target]}"), table5[source],
            separability_hist(per_image))'''),
        md("## Figures 15–18: maps of the source models on target test images"),
        code('''for source in sources:
    target = ex.other_dataset(source)
    display(Markdown(f"### {DATASET_NAMES[source]} → {DATASET_NAMES[target]}"))
    display(map_grid([r for r in source_runs[source] if r.kind in ("baseline", "pixelcam")],
                     cfg.for_dataset(target)))'''),
        code('''metrics, headline, named_runs = {}, {}, {}
for source in sources:
    target = ex.other_dataset(source)
    metrics[f"table3 {source}->{target}"] = table3[source].reset_index().to_dict(orient="records")
    metrics[f"table5 {source}->{target}"] = table5[source].reset_index().to_dict(orient="records")
    for row in ("LayerCAM", "LayerCAM + PixelCAM"):
        if row in table3[source].index:
            headline[f"{DATASET_NAMES[source]}→{DATASET_NAMES[target]} {row} PxAP"] = \\
                table3[source].loc[row, "PxAP run"]
    named_runs.update({f"{source} / {method_label(r)}": r for r in source_runs[source]})'''),
    ],
    ", map_grid, method_label\nfrom pixelcam.figures import separability_hist",
)

NOTEBOOKS["03_stain_shift"] = (
    "03 · Stain shift: Figures 4, 5, 9, 10",
    f"""
The test images of each dataset re-stained with stain styles of the *other* dataset (Macenko,
torchstain): candidate target images are fitted, ordered by the distance of their stain matrix
to the source's mean stain matrix, and `stain_levels` of them kept, from level 1 (closest) to
level 10 (farthest); level 0 is the original test set. The chosen targets and matrices are
frozen in a JSON (`stain_levels_file` reuses one, so the benchmark is the same on every machine);
images whose own stain fit fails fall back to the source's mean stain and are counted.
LayerCAM and LayerCAM + PixelCAM (`method`) are evaluated at every level.

{QUICK_NOTE}
""",
    [
        code('''curves, levels_info, named_runs = {}, {}, {}
for name in cfg.dataset_names:
    dcfg = ex.config_for_method(cfg.for_dataset(name), cfg.method)
    pair = ex.get_or_train(dcfg)
    curves[name], manifest = ex.stain_shift(dcfg, [pair["baseline"], pair["pixelcam"]])
    levels_info[name] = manifest
    # the frozen levels, beside the report: pass it as stain_levels_file to reuse them anywhere
    ex.stain_levels_for(dcfg).save(f"{output_dir}/stain-levels-{name}.json")
    named_runs.update({f"{name} / {method_label(r)}": r for r in pair.values()})'''),
        md("## Figures 4, 5 (GlaS) and 9, 10 (CAMELYON16): CL and PxAP over stain levels"),
        code('''for name, df in curves.items():
    display(Markdown(f"### {DATASET_NAMES[name]} test set, {DATASET_NAMES[ex.other_dataset(name)]} stains\\n"
                     f"{data_note(cfg.for_dataset(name))}"))
    display(stain_curves(df))
    display(df.pivot_table(index="level", columns=["metric", "method"], values="value").round(1))'''),
        md("## The stain levels: targets, distances, fallbacks, and one test image per level"),
        code('''for name, manifest in levels_info.items():
    display(Markdown(f"### {DATASET_NAMES[name]}"))
    display(ex.stain_level_table(manifest))
    display(ex.stain_strip(manifest, cfg.for_dataset(name)))'''),
        code('''metrics, headline = {}, {}
for name, df in curves.items():
    metrics[f"stain {name}"] = df.to_dict(orient="records")
    worst = df[df.level == df.level.max()]
    for method in worst.method.unique():
        value = worst[(worst.method == method) & (worst.metric == "PxAP")].value.iloc[0]
        headline[f"{DATASET_NAMES[name]} level {df.level.max()} {method} PxAP"] = value'''),
    ],
    ", method_label\nfrom pixelcam.figures import stain_curves",
)

_ABLATION_INTRO = """
{what} Every variant is a PixelCAM model trained on the same baseline (reused from the run cache
when notebook 01 already trained it), so only the varied setting differs.

""" + QUICK_NOTE

NOTEBOOKS["04_ablation_depth"] = (
    "04 · Ablation: depth of the pixel classifier (Tables 12, 13)",
    _ABLATION_INTRO.format(what="A linear pixel head (the paper's default) against a multi-layer one "
                           "(three 1x1 convolutions, halving the width each time), in "
                           "distribution (Table 12) and out of distribution (Table 13)."),
    [
        variants_cell("table12", "ex.DEPTH_VARIANTS", "Table 12, "),
        code("table13 = {}"),
        code('''for name, rows in variants.items():
    target = ex.other_dataset(name)
    tcfg = cfg.for_dataset(target)
    entries = [(label, ex.scores(ex.evaluate_on(run, tcfg, cfg.select))) for label, run in rows]
    table13[name] = ex.comparison(entries, "table13", target)
    display(Markdown(f"### Table 13, {DATASET_NAMES[name]} → {DATASET_NAMES[target]}"), table13[name])'''),
        code('''metrics, headline, named_runs = {}, {}, {}
for name, rows in variants.items():
    metrics[f"table12@{name}"] = table12[name].reset_index().to_dict(orient="records")
    metrics[f"table13 {name}->{ex.other_dataset(name)}"] = table13[name].reset_index().to_dict(orient="records")
    for label, run in rows:
        named_runs[f"{name} / {label}"] = run
        if "PixelCAM" in label:
            headline[f"{DATASET_NAMES[name]} {label} PxAP"] = table12[name].loc[label, "PxAP run"]'''),
    ],
)

NOTEBOOKS["05_ablation_n"] = (
    "05 · Ablation: number n of pseudo-labelled pixels (Table 16)",
    _ABLATION_INTRO.format(what="n foreground and n background pixels are sampled per image at every "
                           "step (`n_values`), with the CAMs of `method` (GradCAM++ in the paper)."),
    [
        sweep_cell("table16", "ex.n_variants(cfg)"),
        code(_SWEEP_FINISH.replace("FRAMES", "table16").replace("TABLE", "table16")),
    ],
)

NOTEBOOKS["06_ablation_lambda"] = (
    "06 · Ablation: weight λ of the pixel loss (Table 17)",
    _ABLATION_INTRO.format(what="The total loss is image CE + λ · partial pixel CE (`lam_values`), "
                           "with LayerCAM CAMs as pseudo-labels, as in the paper."),
    [
        sweep_cell("table17", "ex.lam_variants(cfg)"),
        code(_SWEEP_FINISH.replace("FRAMES", "table17").replace("TABLE", "table17")),
    ],
)

NOTEBOOKS["07_ablation_model_selection"] = (
    "07 · Ablation: pseudo-labels from B-LOC or B-CL CAMs (Table 14)",
    _ABLATION_INTRO.format(what="PixelCAM seeded by the CAMs of the baseline's B-LOC checkpoint (best "
                           "valpx PxAP, the default) or of its B-CL checkpoint (best valcl "
                           "accuracy)."),
    [
        variants_cell("table14", "ex.SELECTION_VARIANTS"),
        code(_PAIR_FINISH.replace("FRAMES", "table14").replace("TABLE", "table14")),
    ],
)

NOTEBOOKS["08_ablation_sampling"] = (
    "08 · Ablation: threshold (TH) vs probability (PB) pixel sampling (Table 15)",
    _ABLATION_INTRO.format(what="TH: seeds drawn uniformly inside the Otsu foreground of the CAM "
                           "(eroded) and in its lowest region; PB (default): foreground seeds "
                           "drawn with probability proportional to the CAM."),
    [
        variants_cell("table15", "ex.SAMPLING_VARIANTS"),
        code(_PAIR_FINISH.replace("FRAMES", "table15").replace("TABLE", "table15")),
    ],
)

NOTEBOOKS["09_complexity"] = (
    "09 · Complexity: time to a full-size map and parameter counts (Table 11)",
    """
Each method's model (untrained weights: timing and size do not depend on them) produces the
full-size map of one random RGB image of `image_size` x `image_size`; the time is the median of
10 runs after two warm-up runs, on `device`. The paper timed an NVIDIA RTX A6000: absolute
times differ across machines, the ratios between rows are what compare. Parameter counts must
match the paper exactly (Table 11 prints 5,528,651 for SAT + PixelCAM, a typo for 5,528,653).
""",
    [
        code('''table11 = ex.complexity_table(cfg)
display(Markdown(f"Backbone **{cfg.backbone}** (SAT: DeiT-Tiny), {cfg.image_size}x{cfg.image_size}, "
                 f"device **{ex.resolve_device(cfg.device)}**."), table11)'''),
        code('''ax = table11["time run (ms)"].plot.barh(figsize=(7, 4), title="Time to a full-size map (ms)")
ax.invert_yaxis()
ax.set_xlabel("ms per image (this machine)")
ax.figure.tight_layout()'''),
        code('''metrics = {"table11": table11.reset_index().to_dict(orient="records")}
headline = {row: table11.loc[row, "time run (ms)"] for row in ("LayerCAM", "LayerCAM + PixelCAM")
            if row in table11.index}
named_runs = {}'''),
    ],
)

NOTEBOOKS["10_backbones"] = (
    "10 · Other backbones: VGG16 and InceptionV3 (Tables 7–10)",
    f"""
Table 1's experiment (baselines of `table_methods`, + NEGEV, + PixelCAM) on each backbone of
`backbones`: VGG16 (Tables 7, 9) and InceptionV3 (Tables 8, 10), with the paired t-tests of
baseline vs PixelCAM. With `seeds`, every row once per seed, as in notebook 01: mean ± standard
deviation over seeds, every seed's number and a paired t-test over seeds.

{QUICK_NOTE}
""",
    [
        code('''TABLES = {"vgg16": ("table7", "table9"), "inception_v3": ("table8", "table10")}
results, named_runs = {}, {}
for backbone in [b.strip() for b in cfg.backbones.split(",") if b.strip()]:
    bcfg = cfg.replace(backbone=backbone)
    main, tests = TABLES.get(backbone, ("table7", "table9"))
    for name, rows in ex.dataset_runs(bcfg, all_seeds=True).items():  # once per seed of `seeds`
        dcfg = bcfg.for_dataset(name)
        results[(backbone, name)] = (main_table(rows, dcfg, table=main),
                                     ex.ttest_table(rows, dcfg, table=tests),
                                     ex.seed_table(rows, dcfg))
        named_runs.update(ex.seed_named_runs(rows, f"{backbone} {name}"))
        display(Markdown(f"### {backbone}, {DATASET_NAMES[name]} ({main}, {tests})\\n"
                         f"{data_note(dcfg)}{ex.seed_note(dcfg)}"), *results[(backbone, name)][:2])
        if len(dcfg.seed_list) > 1:
            display(results[(backbone, name)][2])'''),
        code('''metrics, headline = {}, {}
for (backbone, name), (main, tests, seeds) in results.items():
    n_seeds = len(cfg.for_dataset(name).seed_list)
    metrics[f"{backbone} {name} PxAP/CL"] = main.reset_index().to_dict(orient="records")
    metrics[f"{backbone} {name} t-test"] = tests.reset_index().to_dict(orient="records")
    if n_seeds > 1:
        metrics[f"{backbone} {name} seeds"] = seeds.reset_index().to_dict(orient="records")
    for row in main.index:
        if row.endswith("PixelCAM"):
            mean = f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""
            headline[f"{backbone} {DATASET_NAMES[name]} {row} PxAP{mean}"] = seeds.loc[row, "PxAP mean"]'''),
    ],
    ", main_table, method_label",
)

NOTEBOOKS["11_external_pseudo_labels"] = (
    "11 · Pseudo-labels from a model trained on the other dataset (Table 18)",
    f"""
*Same*: PixelCAM seeded by the CAMs of a `method` baseline trained on the same dataset (the
default protocol). *External*: the baseline trained on the other dataset computes the CAMs of
this dataset's train images and initialises PixelCAM (no baseline training on this dataset); its
own row is that external baseline evaluated here. The paper does not say which weights
initialise the external PixelCAM; the kit uses the external baseline's `init_checkpoint`.

{QUICK_NOTE}
""",
    [
        code('''table18 = ex.external_table(cfg, cfg.method)
display(table18)'''),
        code('''metrics = {"table18": table18.reset_index().to_dict(orient="records")}
flat = table18.reset_index()
headline = {f"{DATASET_NAMES[d]} {source} {m} PxAP": v for d, source, m, v in
            zip(flat["Dataset"], flat["Pseudo-labels"], flat["Method"], flat["PxAP run"])
            if "PixelCAM" in m}
named_runs = {}'''),
    ],
)

NOTEBOOKS["12_feature_tsne"] = (
    "12 · t-SNE of FG/BG pixel features (Figures 19–24)",
    f"""
For `tsne_images` test images per class, the pixel features F of the baseline (first row) and of
the same baseline + PixelCAM (second row), embedded with t-SNE (a seeded, class-balanced sample
of at most `tsne_pixels` pixels per image; FG red, BG blue); the last row shows PixelCAM's pixel
logits of the same pixels. Standard setup (Figs 19–21), then the OOD models on the other
dataset's images (Figs 22–24). Normal CAMELYON16 patches have no foreground and are skipped, as
in the paper.

{QUICK_NOTE}
""",
    [
        code('''def classes(name):
    return [0, 1] if name == "glas" else [1]  # CAMELYON16 normal patches: no FG


named_runs = {}
for source in cfg.dataset_names:
    rows = ex.dataset_runs(cfg.replace(datasets=source))[source]
    named_runs.update({f"{source} / {method_label(r)}": r for r in rows})
    for target in [source, ex.other_dataset(source)]:
        setup = "standard" if target == source else f"OOD {DATASET_NAMES[source]} → {DATASET_NAMES[target]}"
        for base, pix in ex.pairs(rows):
            for label in classes(target):
                columns = ex.tsne_columns((base, pix), cfg.for_dataset(target), [label])
                display(Markdown(f"### {method_label(base)}, {setup}: "
                                 f"{CLASS_NAMES[target][label]} {DATASET_NAMES[target]} images"))
                display(tsne_grid(columns))'''),
        code('''metrics, headline = {}, {}'''),
    ],
    ", CLASS_NAMES, method_label\nfrom pixelcam.figures import tsne_grid",
)


def build() -> dict[str, nbformat.NotebookNode]:
    return {name: notebook(name, title, intro, body, imports)
            for name, (title, intro, body, *rest) in NOTEBOOKS.items()
            for imports in [rest[0] if rest else ""]}


def main() -> int:
    for name, nb in build().items():
        nbformat.write(nb, HERE / f"{name}.ipynb")
    print(f"wrote {len(NOTEBOOKS)} notebooks into {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
