"""The documentation stays true: every code block of every page runs, and the reference pages
name everything the code has.

Blocks run in page order, in one scratch directory per page that holds the inputs the pages use
(`questions.jsonl`, `docs.jsonl`). HTML comments right before a block say how to treat it:

- ``<!-- file: PATH -->``: the block is written to PATH (a recipe or a model file of the page's own);
- ``<!-- compose-only: why -->``: it needs a hosted API or a cluster: each ``python -m recipe``
  command in it is composed with ``--cfg job`` (no request), a Python block is compiled;
- ``<!-- expect-exit: N -->``: the commands exit with N instead of 0 (a documented mistake).

Every other ``bash`` block holds only ``python -m recipe`` commands, run through the CLI against the
stub server (the stub's backend overrides appended), with a stub of the Hugging Face Hub in
``HF_ENDPOINT``; ``python`` blocks are executed, their ``http://127.0.0.1:8080/v1`` pointed at the
stub; ``yaml`` and ``json`` blocks must parse; a ``text`` block right after a ``describe`` command is
what it prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import cli, stub_overrides

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
SHELL = ("bash", "sh", "shell", "console")
NOT_CODE = ("text", "mermaid")
RECIPE = re.compile(r"^(?:\S*/)?python -m recipe(?:\s|$)")
MARKER = re.compile(r"^<!--\s*([a-z-]+)(?::\s*(.*?))?\s*-->$")
LOCAL_URL = "http://127.0.0.1:8080/v1"


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    markers: dict = field(default_factory=dict)

    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of a page, each with the markers written right before it."""
    lines = (DOCS / page).read_text().splitlines()
    found: list[Block] = []
    markers: dict = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        marker = MARKER.match(line)
        if marker:
            markers[marker.group(1)] = marker.group(2) or ""
        elif line.startswith("```"):
            lang = line[3:].strip()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(page, start, lang, "\n".join(body) + "\n", markers))
            markers = {}
        elif line:
            markers = {}
        i += 1
    return found


def shell_commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def recipe_args(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value python -m recipe ARGS``: the variables and the arguments."""
    words = shlex.split(command)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    rest = shlex.join(words)
    assert RECIPE.match(rest), rest
    return env, words[3:]


def _inputs(cwd: Path) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    data = ROOT / "recipes" / "data"
    shutil.copy(data / "prompts.jsonl", cwd / "questions.jsonl")
    shutil.copy(data / "documents.jsonl", cwd / "docs.jsonl")


def _run_cli(tmp_path: Path, cwd: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return cli(tmp_path, *args, cwd=cwd, env=env, timeout=600)


def _is_run(args: list[str]) -> bool:
    """Whether the command runs a recipe (not describe, --help or --cfg)."""
    return not (args[:1] == ["describe"] or any(a in ("--help", "-h", "--cfg", "-c") for a in args))


def _check_shell(block: Block, tmp_path: Path, cwd: Path, server, hub_env: dict,
                 pushes: set[str]) -> list[tuple[list[str], str]]:
    """Run a shell block's commands; returns each command's args and what it printed."""
    commands = shell_commands(block.code)
    assert commands, f"{block.where()}: an empty shell block"
    printed = []
    if "compose-only" in block.markers:
        recipe_commands = [c for c in commands if RECIPE.match(re.sub(r"^([A-Z_][A-Z0-9_]*=\S+\s+)+", "", c))]
        assert recipe_commands, f"{block.where()}: a compose-only block with no python -m recipe command"
        for command in recipe_commands:
            _, args = recipe_args(command)
            result = _run_cli(tmp_path, cwd, ["--cfg", "job", *args], {})
            assert result.returncode == 0, f"{block.where()}: {command}\n{result.stderr[-2000:]}"
            composed = yaml.safe_load(result.stdout)
            assert composed["recipe"]["stages"], f"{block.where()}: {command} composed no stages"
        return printed
    expected = int(block.markers.get("expect-exit") or 0)
    for command in commands:
        assert RECIPE.match(command) or re.match(r"^[A-Z_]+=", command), \
            f"{block.where()}: {command!r} is not a python -m recipe command (mark the block compose-only)"
        env, args = recipe_args(command)
        full = [*args, *stub_overrides(server)]
        result = _run_cli(tmp_path, cwd, full, {**hub_env, **env})
        assert result.returncode == expected, \
            f"{block.where()}: {command} exited {result.returncode}, not {expected}\n{result.stderr[-3000:]}"
        if expected == 0 and _is_run(args) and "-m" not in args:
            folder = re.search(r"^output: (.+)$", result.stdout, re.M)
            assert folder, f"{block.where()}: {command} printed no output folder\n{result.stdout}"
            stats = json.loads((cwd / folder.group(1).strip()).joinpath("stats.json").read_text())
            summary = result.stdout.strip().splitlines()[-1]
            counts = re.match(r"^(\d+) records?, (\d+) failed", summary)
            assert counts and (int(counts.group(1)), int(counts.group(2))) == (stats["records"], stats["failed"]), summary
        printed.append((args, result.stdout + result.stderr))
        pushes.update(a.split("=", 1)[1] for a in args if a.startswith("hub.repo_id="))
    return printed


def _check_python(block: Block, server, cwd: Path, monkeypatch) -> None:
    if "compose-only" in block.markers:
        compile(block.code, block.where(), "exec")
        return
    monkeypatch.chdir(cwd)
    code = block.code.replace(LOCAL_URL, server.base_url)
    exec(compile(code, block.where(), "exec"), {"__name__": "__docs__"})


def _check_data(block: Block, cwd: Path) -> None:
    if "file" in block.markers:
        path = cwd / block.markers["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code)
    if block.lang == "yaml":
        assert yaml.safe_load(block.code) is not None, block.where()
        return
    try:
        json.loads(block.code)
    except json.JSONDecodeError:  # JSON lines
        for line in block.code.splitlines():
            if line.strip():
                json.loads(line)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])  # pages of prose only have nothing to run
def test_every_block_of_the_page_runs(page, stub_server, tmp_path, monkeypatch):
    from recipe.testing.hub_stub import HubStub

    found = blocks(page)
    server = stub_server()
    cwd = tmp_path / "cwd"
    _inputs(cwd)
    last: list[tuple[list[str], str]] = []
    pushes: set[str] = set()  # the hub.repo_id of each command run: each one's files reach the Hub stub
    with HubStub() as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_docs_test"}
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_docs_test")
        for block in found:
            if block.lang in SHELL:
                last = _check_shell(block, tmp_path, cwd, server, hub_env, pushes)
            elif block.lang == "python":
                _check_python(block, server, cwd, monkeypatch)
            elif block.lang in ("yaml", "json"):
                _check_data(block, cwd)
            elif block.lang in NOT_CODE:
                if last and last[-1][0][:1] == ["describe"] and block.lang == "text":
                    assert block.code.strip() == last[-1][1].strip(), f"{block.where()}: describe prints\n{last[-1][1]}"
            else:
                pytest.fail(f"{block.where()}: a ```{block.lang} block: say which language it is (bash, python, "
                            f"yaml, json, text)")
        pushed = {repo for repo in hub.files}
    assert pushed == pushes, f"pushed {pushed}, the page's commands push {pushes}"


def test_the_blocks_are_found():
    """The collector sees the pages' blocks and markers (the tests above would pass on none)."""
    tutorial = blocks("tutorial.md")
    langs = [b.lang for b in tutorial]
    assert langs.count("bash") >= 4 and "yaml" in langs and "python" not in langs
    assert [b.markers.get("file") for b in tutorial if b.lang == "yaml"] == ["myconf/recipe/support.yaml"]
    assert any("compose-only" in b.markers for b in tutorial)
    assert sum(len(blocks(p)) for p in PAGES) >= 50


# ---- the reference pages name what the code has -----------------------------------------------

def _reference():
    sys.path.insert(0, str(DOCS))
    try:
        import reference_pages
    finally:
        sys.path.remove(str(DOCS))
    return reference_pages.pages()


def test_the_reference_pages_name_every_stage_key_and_error():
    pages = _reference()
    src = ROOT / "src" / "recipe"
    stage_classes = {m.group(1) for path in (src / "stages").rglob("*.py")
                     for m in re.finditer(r"^class (\w+Stage)\(", path.read_text(), re.M)}
    stage_classes -= {"LLMStage"}
    headings = set(re.findall(r"^## (\w+)$", pages["reference/stages.md"], re.M))
    assert stage_classes and stage_classes == headings

    error_classes = set(re.findall(r"^class (\w+)\(", (src / "errors.py").read_text(), re.M))
    listed = set(re.findall(r"^\| `(\w+)` \|", pages["reference/errors.md"], re.M))
    assert error_classes and error_classes == listed

    import recipe
    from omegaconf import OmegaConf

    def keys(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and key != "recipe":
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    composed = set(keys(OmegaConf.to_container(recipe.compose([]), resolve=False)))
    documented = set(re.findall(r"^\| `([\w.]+)` \|", pages["reference/config.md"], re.M))
    assert composed and composed == documented

    shipped = {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    assert shipped == set(re.findall(r"^## (\w+)$", pages["reference/recipes.md"], re.M))


def test_the_error_reference_says_what_the_code_does():
    rows = {name: (retried, code) for name, _, retried, code, _ in _rows("error_rows")}
    assert rows["RateLimitError"][0] == "yes" and rows["BadRequestError"][0] == "no"
    assert rows["AuthenticationError"][1].startswith("2") and rows["ServerError"][1].startswith("3")
    assert rows["BudgetExhausted"][1].startswith("4")
    assert "on_truncated=retry" in rows["TruncatedError"][0]


def _rows(name: str):
    sys.path.insert(0, str(DOCS))
    try:
        import reference_pages
    finally:
        sys.path.remove(str(DOCS))
    return getattr(reference_pages, name)()


# ---- the changelog and the version ------------------------------------------------------------

def test_changelog_follows_keep_a_changelog_and_names_the_version():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n") and "keepachangelog.com" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert releases[0] == ("Unreleased", "")
    assert releases[1][0] == version and releases[1][1], "the newest release is the package's version, dated"
    for heading in re.findall(r"^### (.+)$", text, re.M):
        assert heading in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
    for name, _ in releases:
        assert re.search(rf"^\[{re.escape(name)}\]: \S+$", text, re.M), f"no link for [{name}]"


def test_the_version_is_in_stats_and_the_dataset_card(stub_server, tmp_path):
    from importlib.metadata import version

    from conftest import cli, write_prompts

    server = stub_server()
    write_prompts(tmp_path / "q.jsonl", 3)
    out = tmp_path / "out"
    cli(tmp_path, "recipe=generate", f"input={tmp_path / 'q.jsonl'}", f"output_dir={out}",
        "recipe.stages.write.format=hf", *stub_overrides(server), check_exit=0)
    installed = version("recipe")
    assert json.loads((out / "stats.json").read_text())["recipe_version"] == installed
    assert f"| made with | `recipe` {installed} |" in (out / "README.md").read_text()


def test_the_docs_page_list_is_the_nav():
    """Every page is in mkdocs.yml's nav and every nav entry is a page (or a generated one)."""
    nav = set(re.findall(r":\s+(\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M))
    generated = set(_reference())
    assert nav == (set(PAGES) | generated)
    assert os.path.isfile(ROOT / "docs" / "gen_reference.py")
