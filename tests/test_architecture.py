"""The house: the import contract holds, every module says what it owns, the README's layout is the tree."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import recipe

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(recipe.__file__).resolve().parent


def test_import_contract_holds_with_no_cycles():
    """import-linter's layers and acyclic-siblings contracts (pyproject.toml), imports written inside
    functions included (grimp reads every import statement)."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    assert lint, "import-linter is in the test extra"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout, done.stdout[-2000:]


def test_the_contract_catches_an_upward_import_inside_a_function(tmp_path):
    """The contract can fail: a copy of the package with one late import running up the layers
    (config importing the engine, inside a function) breaks it."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    copy = tmp_path / "src" / "recipe"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "conf"))
    paths = copy / "config" / "paths.py"
    paths.write_text(paths.read_text() + "\n\ndef _late():\n    from recipe.engine import runner  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "recipe.config.paths -> recipe.engine.runner" in done.stdout


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_says_what_it_owns():
    """Each module's docstring opens with a line saying what it owns (an empty ``__init__`` aside)."""
    missing = []
    for path in _modules():
        source = path.read_text()
        if path.name == "__init__.py" and not source.strip():
            continue
        doc = ast.get_docstring(ast.parse(source))
        if not doc or not doc.strip().splitlines()[0].strip():
            missing.append(str(path.relative_to(PACKAGE)))
    assert missing == []


def test_readme_layout_names_every_package_and_module():
    """The README's layout section matches the tree: every package is listed under its parent, and
    every module of the package is named in its entry."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    unnamed = []
    for package in sorted(p for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts):
        folder = package.parent
        if folder == PACKAGE:
            continue
        if not re.search(rf"^\s+{re.escape(folder.name)}/\s", layout, re.M):
            unnamed.append(f"{folder.relative_to(PACKAGE)}/")
        for module in sorted(folder.glob("*.py")):
            if module.stem != "__init__" and not re.search(rf"\b{re.escape(module.stem)}\b", layout):
                unnamed.append(str(module.relative_to(PACKAGE)))
    for module in sorted(PACKAGE.glob("*.py")):
        if module.stem not in ("__init__", "__main__") and module.name not in layout:
            unnamed.append(module.name)
    assert unnamed == []
