"""A wheel built from the checkout carries conf/ and recipes/ and runs from anywhere.

The wheel goes into a fresh venv without its dependencies; a ``.pth`` file then appends this
venv's site-packages *after* the fresh venv's own, so third-party packages resolve from here
while ``recipe`` itself comes from the wheel (checked through ``recipe.__file__``). The editable
install's ``.pth`` is not processed there, so the checkout is not on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
# Offline: the build backend (hatchling) comes from this test environment, never from the network.
OFFLINE = ["--no-deps", "--no-build-isolation", "--no-index"]


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = _run([sys.executable, "-m", "pip", "wheel", *OFFLINE, "-q", "-w", out, ROOT])
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("recipe-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    result = _run([sys.executable, "-m", "venv", "--without-pip", root])
    assert result.returncode == 0, result.stderr
    python = root / "bin" / "python"
    # this venv's pip installs into the fresh one (no ensurepip, no download: --no-deps)
    result = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])
    assert result.returncode == 0, result.stdout + result.stderr
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "zz_recipe_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NVIDIA_API_KEY", "OPENAI_API_KEY")}
    env.update(RECIPE_RUNS_DIR=str(tmp_path / "runs"), RECIPE_CACHE_DIR=str(tmp_path / "cache"))
    return env


def test_wheel_contains_conf_and_recipes(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert len(names) == len(set(names))
    expected = {"recipe/conf/config.yaml"}
    for group in ("model", "backend", "formatter", "sampling"):
        expected |= {f"recipe/conf/{group}/{p.name}" for p in (ROOT / "conf" / group).glob("*.yaml")}
    expected |= {f"recipe/conf/recipe/{p.relative_to(ROOT / 'recipes').as_posix()}"
                 for p in (ROOT / "recipes").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert any(n.startswith("recipe/conf/recipe/data/") for n in expected)
    missing = expected - set(names)
    assert not missing, sorted(missing)
    # every directory of conf/ is shipped (a new group must be added to pyproject's force-include)
    shipped_groups = {n.split("/")[2] for n in names if n.startswith("recipe/conf/") and n.count("/") > 2}
    assert {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()} <= shipped_groups


def test_installed_wheel_runs_outside_the_checkout(venv, tmp_path):
    python = venv / "bin" / "python"
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = _env(tmp_path)

    probe = _run([python, "-c", "import recipe, recipe.config.paths as p; print(recipe.__file__); print(p.config_dir())"],
                 cwd=where, env=env)
    assert probe.returncode == 0, probe.stderr
    module_file, config_dir = probe.stdout.split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert Path(config_dir).is_relative_to(venv) and Path(config_dir).name == "conf"

    result = _run([python, "-m", "recipe", "--cfg", "job", "+model=nemotron"], cwd=where, env=env)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name"] == "nvidia/llama-3.1-nemotron-70b-instruct"
    assert cfg["backend"]["provider"] == "nvidia_nim"

    result = _run([python, "-m", "recipe", "--cfg", "job"], cwd=where, env=env)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["name"] == "smollm2"

    # the console script, the shipped sample input and a user mistake
    script = _run([venv / "bin" / "recipe", "--cfg", "job", "sampling=greedy"], cwd=where, env=env)
    assert script.returncode == 0, script.stderr
    sample = _run([python, "-c", "import os, recipe; c = recipe.compose(); "
                   "from omegaconf import OmegaConf; p = OmegaConf.to_container(c, resolve=True)['recipe']"
                   "['stages']['read']['path']; print(p, os.path.isfile(p))"], cwd=where, env=env)
    assert sample.returncode == 0, sample.stderr
    path, exists = sample.stdout.split()
    assert Path(path).is_relative_to(venv) and exists == "True"
    bad = _run([python, "-m", "recipe", "+model=nope"], cwd=where, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "model/nope" in bad.stderr
    assert list(where.iterdir()) == []


def test_wheel_from_the_sdist_has_the_same_files(wheel, tmp_path):
    """``python -m build`` and installs from PyPI go checkout -> sdist -> wheel: the recipes,
    reached in the checkout through the conf/recipe symlink, must survive that route too."""
    sdist_dir = tmp_path / "sdist"
    built = _run([sys.executable, "-c", "import sys; from hatchling.builders.sdist import SdistBuilder; "
                  "print(*SdistBuilder(sys.argv[1]).build(directory=sys.argv[2]))", ROOT, sdist_dir])
    assert built.returncode == 0, built.stderr
    (sdist,) = sdist_dir.glob("recipe-*.tar.gz")
    out = tmp_path / "wheel"
    result = _run([sys.executable, "-m", "pip", "wheel", *OFFLINE, "-q", "-w", out, sdist])
    assert result.returncode == 0, result.stdout + result.stderr
    (from_sdist,) = out.glob("recipe-*.whl")
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(from_sdist) as b:
        conf_a = sorted(n for n in a.namelist() if n.startswith("recipe/conf/"))
        conf_b = sorted(n for n in b.namelist() if n.startswith("recipe/conf/"))
    assert conf_a == conf_b
