"""The paper's experiments, one module per section: which runs a table needs, and its numbers.

Notebooks import this package as `ex` and call what it gathers here; every trained model comes
from the run store (pixelcam.pipelines), so a run that two notebooks share is trained once.
"""

from pixelcam.builders import data_key, data_paths, dataset, model_for, with_data_of
from pixelcam.datasets import partner as other_dataset
from pixelcam.evaluate import resolve_device
from pixelcam.evaluations import cached_on, evaluate_on
from pixelcam.experiments.ablations import (
    DEPTH_VARIANTS,
    SAMPLING_VARIANTS,
    SELECTION_VARIANTS,
    lam_variants,
    method_variants,
    n_variants,
    parse_values,
    variant_runs,
    variant_table,
)
from pixelcam.experiments.complexity import complexity_table, count_parameters
from pixelcam.experiments.external import external_runs, external_table
from pixelcam.experiments.main_tables import (
    dataset_runs,
    pairs,
    seed_named_runs,
    seed_ttest,
    ttest_table,
)
from pixelcam.experiments.map_figures import map_grid, run_maps
from pixelcam.experiments.ood import ood_rows, ood_table
from pixelcam.experiments.separability import separability_on, separability_table
from pixelcam.experiments.stain import stain_level_table, stain_levels_for, stain_shift, stain_strip
from pixelcam.experiments.tsne import tsne_columns
from pixelcam.methods import row_label
from pixelcam.pipelines import (
    config_for_method,
    get_baseline,
    get_or_train,
    get_pixelcam,
    table_runs,
)
from pixelcam.report import (
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
    run_seed,
    scores,
    seed_note,
    seed_table,
)
from pixelcam.store import Run

__all__ = [
    "CLASS_NAMES", "DEPTH_VARIANTS", "METHOD_NAMES", "METRIC_NAMES", "SAMPLING_VARIANTS",
    "SELECTION_VARIANTS", "Run", "by_row", "cached_on", "comparison", "complexity_table",
    "config_for_method", "count_parameters", "data_key", "data_paths", "dataset",
    "dataset_runs", "evaluate_on", "external_runs", "external_table", "first_seed",
    "format_mean_std", "get_baseline", "get_or_train", "get_pixelcam", "lam_variants",
    "map_grid", "method_label", "method_variants", "model_for", "n_variants", "ood_rows",
    "ood_table", "other_dataset", "pairs", "paper_rows", "paper_table", "parse_values",
    "resolve_device", "row_label", "run_maps", "run_seed", "scores", "seed_named_runs",
    "seed_note", "seed_table", "seed_ttest", "separability_on", "separability_table",
    "stain_level_table", "stain_levels_for", "stain_shift", "stain_strip", "table_runs",
    "tsne_columns", "ttest_table", "variant_runs", "variant_table", "with_data_of",
]
