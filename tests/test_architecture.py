"""The package's shape: layers without cycles, and one place per method and per dataset."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from pixelcam.data.synthetic import DOMAINS
from pixelcam.datasets import DATASETS
from pixelcam.methods import METHODS

PACKAGE = Path(__file__).resolve().parents[1] / "pixelcam"


def _sources(skip: tuple[str, ...] = ()) -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"))
            for path in sorted(PACKAGE.rglob("*.py"))
            if not any(path.relative_to(PACKAGE).as_posix().startswith(s) for s in skip)}


def test_the_import_contract_holds():
    """pyproject.toml's [tool.importlinter]: layers, and no cycle between sibling modules."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([exe], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def _string_constants(tree: ast.Module) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_outside_the_registry_compares_a_method_by_name():
    """`cfg.method == "sat"` style special cases belong in the method's own file (models/ names
    architectures and heads, e.g. the DeepMIL head, which a method file picks)."""
    found = []
    for path, tree in _sources(skip=("methods/", "models/")).items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            names = [o.value for o in operands if isinstance(o, ast.Constant)
                     and isinstance(o.value, str) and o.value in METHODS]
            names += [e.value for o in operands if isinstance(o, (ast.Tuple, ast.Set, ast.List))
                      for e in o.elts if isinstance(e, ast.Constant) and e.value in METHODS]
            if names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {names}")
    assert found == []


def test_sat_is_named_only_in_its_own_file():
    found = [f"{path.relative_to(PACKAGE)}:{line}"
             for path, tree in _sources(skip=("methods/sat.py",)).items()
             for line, value in _string_constants(tree) if value == "sat"]
    assert found == []


def test_every_method_declares_what_the_kit_needs():
    for name, method in METHODS.items():
        assert method.name == name and method.label
        assert method.maps and all(callable(f) for f in method.maps.values())
        assert (method.builder is None) == (method.timm_model is None) == (not method.architecture)
        assert (method.input_size is None) == (method.resize_size is None)


def test_no_module_outside_the_registry_compares_a_dataset_by_name():
    found = []
    for path, tree in _sources(skip=("datasets.py", "data/", "cli.py")).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [o.value for o in (node.left, *node.comparators)
                         if isinstance(o, ast.Constant) and o.value in DATASETS]
                if names:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {names}")
    assert found == []
    for name, info in DATASETS.items():
        assert info.partner in DATASETS and info.partner != name
        assert info.synthetic_domain in DOMAINS and info.prepare is not None
        assert set(info.class_names) == {0, 1}
