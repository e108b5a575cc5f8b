"""The bare ``pip install recipe`` (no extras) runs every shipped recipe against an OpenAI-compatible server.

A wheel built from the checkout goes into a fresh venv *with* its declared dependencies, from the
package index (pip's cache serves them after the README's first command), and nothing else: no
pandas unless the core dependencies bring it, no datasets, no s3fs. Every recipe found in
``recipes/`` then runs in one Hydra sweep against the stub server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  "-w", out, ROOT])
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("recipe-*.whl")
    root = tmp_path_factory.mktemp("bare") / "v"
    made = _run([sys.executable, "-m", "venv", "--without-pip", root])
    assert made.returncode == 0, made.stderr
    python = root / "bin" / "python"
    # this venv's pip installs into the fresh one, the declared dependencies included; without
    # compiling every module to bytecode first (litellm alone has thousands): what runs is compiled
    # as it is imported
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", wheel])
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return root


def _recipes() -> list[str]:
    return sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def test_bare_install_has_no_extras(bare_venv):
    """The extras really are absent, so the run below proves the core dependencies suffice."""
    python = bare_venv / "bin" / "python"
    probe = _run([python, "-c", "import importlib.util as u; print([m for m in ('datasets', 's3fs', 'redis', "
                  "'llama_cpp', 'moto', 'pytest') if u.find_spec(m)])"])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_every_shipped_recipe_runs_on_the_bare_install(bare_venv, stub_server, tmp_path):
    server = stub_server()
    python = bare_venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NVIDIA_API_KEY", "OPENAI_API_KEY")}
    env.update(RECIPE_RUNS_DIR=str(tmp_path / "runs"), RECIPE_CACHE_DIR=str(tmp_path / "cache"),
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    recipes = _recipes()
    assert len(recipes) >= 10
    result = _run([python, "-m", "recipe", "-m", f"recipe={','.join(recipes)}", "backend=openai",
                   f"backend.api_base={server.base_url}", "backend.api_key=test-key", "model.name=stub-model",
                   "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                  cwd=tmp_path, env=env, timeout=1200)
    assert result.returncode in (0, 3), result.stderr[-4000:]  # 3: some records failed on the stub's answers
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    folders = sorted((tmp_path / "runs").iterdir())
    ran = {json.loads((f / "run.json").read_text())["identity"]["recipe"]["name"] for f in folders
           if (f / "stats.json").exists()}
    assert ran == {_recipe_name(r) for r in recipes}, result.stderr[-3000:]


def _recipe_name(stem: str) -> str:
    import yaml

    return yaml.safe_load((ROOT / "recipes" / f"{stem}.yaml").read_text()).get("name", stem)
