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


def _run_embedding_example(base_url: str) -> list[dict]:
    code = code_after("<!-- embedding-example").replace("http://127.0.0.1:8080/v1", base_url)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["rows"]


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_embedding_example_on_the_stub(stub_server, capsys):
    server = stub_server(reply="list")  # five numbered items "item <n> about <the prompt's start>"
    rows = _run_embedding_example(server.base_url)
    by_topic: dict[str, list[str]] = {}
    for row in rows:
        by_topic.setdefault(row["topic"], []).append(row["question"])
    prompts = {t: f"List 3 questions about {t}." for t in ("volcanoes", "bread")}
    assert by_topic == {t: [f"item {w} about {p[:30]}" for w in ("one", "two", "three")] for t, p in prompts.items()}
    assert len({r["_parent"] for r in rows}) == 2 and len({r["_id"] for r in rows}) == 6
    assert server.stats()["requests"] == 2
    assert capsys.readouterr().out.splitlines() == [f"{r['_id']} {r['_parent']} {r['question']}" for r in rows]


@pytest.mark.llm
def test_embedding_example_runs(llama_server, capsys):
    rows = _run_embedding_example(llama_server.base_url)
    # each topic gives 1 to 3 questions (at most n=3; one parent), one row per question of its
    # list, in order; or exactly one error record (no parent)
    good = [r for r in rows if "_error" not in r]
    parents = {r["_parent"] for r in good}
    assert all(r["_parent"] for r in good) and len(rows) - len(good) == 2 - len(parents)
    for parent in parents:
        mine = [r for r in good if r["_parent"] == parent]
        assert 1 <= len(mine) <= 3 and [r["question"] for r in mine] == mine[0]["questions"]
    topics = {r["topic"] for r in good}
    assert len(topics) == len(parents) and topics <= {"volcanoes", "bread"}, "one parent per topic"
    assert all(isinstance(r["question"], str) and r["question"].strip() for r in good)
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


def test_ci_does_no_set_up_of_its_own():
    """`.ci/run` runs the README's two commands and checks; nothing it installs is missing from the README."""
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"## Set up.*?```bash\n(.*?)```", README, re.S).group(1)
    readme_commands = {line.split("#")[0].strip() for line in setup.strip().splitlines()}
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    commands = [c for c in commands if not c.startswith(("set -", "cd "))]
    checks = (".venv/bin/ruff ", ".venv/bin/mypy ", ".venv/bin/lint-imports", ".venv/bin/mkdocs ")
    extra = [c for c in commands if c not in readme_commands and not c.startswith(checks)]
    assert extra == []


@pytest.mark.llm
def test_the_default_recipe_finishes_clean_on_the_embedded_model(tmp_path):
    """`python -m recipe`, the README's run command, exits 0 with no failed record on SmolLM2,
    offline: any request that is not to 127.0.0.1 goes to a dead proxy and fails. It writes into
    the runs folder and nothing into the working directory."""
    from conftest import cli, outputs

    dead = "http://127.0.0.1:9"
    offline = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "ALL_PROXY": dead,
               "HF_HUB_OFFLINE": "1"}
    result = cli(tmp_path, "progress=false", timeout=900, env=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert ", 0 failed, " in summary and summary.startswith("8 records"), summary
    assert "requests" in summary and "tokens" in summary, summary
    output_dir = Path(next(line for line in result.stdout.splitlines() if line.startswith("output: "))[8:])
    assert (tmp_path / "runs") in output_dir.parents
    assert len(outputs(output_dir)) == 8
    assert list((tmp_path / "cwd").iterdir()) == []


def test_readme_is_short_and_links_into_the_docs():
    """At most 150 lines, and every relative link it gives leads to a file of the checkout."""
    assert len(README.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/") for link in local)
    assert [link for link in local if not (ROOT / link).exists()] == []
