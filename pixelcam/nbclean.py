"""Keep notebooks reviewable: strip outputs, execution counts and editor metadata in place.

Run: `make clean-notebooks` (or `python -m pixelcam.nbclean notebooks/*.ipynb`). The notebooks
are the source of the reports; they are committed without outputs (a test fails on one), and
after this a diff shows only what a person changed. Kept: each cell's source, id and tags (the
`parameters` tag that papermill needs), and the notebook's kernelspec.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from pixelcam.atomic import write_text

KEPT_NOTEBOOK_METADATA = ("kernelspec",)


def outputs_of(nb: nbformat.NotebookNode) -> list[str]:
    """What a committed notebook must not hold: one line per cell with outputs or a count."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has execution count {cell.execution_count}")
    return found


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs, counts and editor metadata (a new object)."""
    nb = nbformat.from_dict(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEPT_NOTEBOOK_METADATA}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags")
        cell.metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def clean_file(path: Path) -> bool:
    """Clean one notebook in place (atomically); True if it changed."""
    original = path.read_text(encoding="utf-8")
    nb = nbformat.reads(original, as_version=4)
    text = nbformat.writes(clean(nb)) + "\n"
    if text == original:
        return False
    write_text(path, text)
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m pixelcam.nbclean NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    for name in argv:
        if clean_file(Path(name)):
            print(f"cleaned {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
