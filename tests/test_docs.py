"""The documentation: the site builds in strict mode (a broken link, a missing anchor or a page
outside the navigation fails), and the README stays a first screen that links the docs."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_without_a_warning(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    built = {p.name for p in (tmp_path / "site").glob("*.html")}
    pages = {p.with_suffix(".html").name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= built


def test_readme_is_a_first_screen_that_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert not re.search(r"\b[0-9a-f]{7}\b", readme), "a commit hash in the README"
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"docs/{page.name}" in readme, page.name
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", readme):
        assert (ROOT / target).is_file(), target


def test_no_file_of_the_kit_points_users_to_notes_they_do_not_have():
    """The development notes on the official code are not shipped: the kit's own page
    (docs/official-code.md) replaces every reference to them."""
    name = "official-code" + "-notes"
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("params/*/*.yaml")]
    for folder in ("pixelcam", "notebooks", "docs", "benchmarks", "tests"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yaml", ".ipynb",
                                                                          ".md"}]
    assert [str(p) for p in files if name in p.read_text(encoding="utf-8")] == []
