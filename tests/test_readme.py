"""The README stays true: its embedding example runs, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_after(marker: str) -> str:
    block = README.split(marker, 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


@pytest.mark.llm
def test_embedding_example_runs(llama_server, capsys):
    code = code_after("<!-- embedding-example").replace("http://127.0.0.1:8080/v1", llama_server.base_url)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    rows = namespace["rows"]
    assert rows, "the example produced no rows"
    assert all(r["_parent"] for r in rows if "_error" not in r)
    assert {r["topic"] for r in rows if "_error" not in r} <= {"volcanoes", "bread"}
    assert capsys.readouterr().out.count("\n") == len(rows)


@pytest.mark.llm
def test_client_example_runs(llama_server, capsys):
    code = code_after("## Clients").replace("http://127.0.0.1:8080/v1", llama_server.base_url)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("[") and lines[2].startswith("[")


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"## Set up.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert len(commands) == 2, "exactly two set-up commands"
    for command in commands:
        assert command in ci, f"CI does not run the README's {command!r}"
