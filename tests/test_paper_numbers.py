"""The transcribed paper tables must match the paper's text, number for number."""

from pathlib import Path

import pytest

from pixelcam.report import paper_table

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pixelcam-paper.txt"
# the paper's table rows spell a few names differently from ours
SPELLING = {"GradCAM w/": "GradCAM++ w/", "NEGEVBelharbi": "NEGEV "}


def _rows(text: str, caption: str) -> dict[str, list[float | None]]:
    """Map 'row name' -> its trailing numbers, for the table block that ends at `caption`."""
    stop = text.index(caption)
    start = text.rfind("WSOL", 0, text.rfind("\\uparrow", 0, stop))
    rows = {}
    for line in text[text.rfind("\n", 0, start):stop].splitlines():
        for old, new in SPELLING.items():
            line = line.replace(old, new)
        tokens = line.split()
        values = []
        while tokens and (tokens[-1] == "n/a" or tokens[-1].replace(".", "", 1).isdigit()):
            tok = tokens.pop()
            values.insert(0, None if tok == "n/a" else float(tok))
        if values:
            rows[" ".join(tokens)] = values
    return rows


@pytest.mark.parametrize("table,caption", [("table1", "Table 1:"), ("table6", "Table 6:")])
def test_transcribed_tables_match_the_paper(table, caption):
    assert PAPER.is_file(), f"the paper text is expected at {PAPER} (shared/ beside the checkout)"
    paper_rows = _rows(PAPER.read_text(), caption)
    ours = paper_table(table)["rows"]
    assert len(ours) == len(paper_rows)
    for method, values in ours.items():
        name = method.replace(" + ", " w/ ")
        # the row whose name starts with ours and does not go on with " w/" (a combination)
        hits = [v for k, v in paper_rows.items()
                if k.startswith(name) and not k[len(name):].lstrip().startswith("w/")]
        assert len(hits) == 1, (method, list(paper_rows))
        assert hits[0] == list(values.values()), method
