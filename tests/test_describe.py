"""What a newcomer asks first, through the CLI: which recipes and models there are (``--help``),
and what a recipe's stages read and write (``describe recipe=NAME``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]

MY_RECIPE = """# Haiku about each prompt's topic, for the tests.
name: haiku
stages:
  read:
    _target_: recipe.stages.ReadStage
    path: ${input_or_sample:prompts.jsonl}
  poem:
    _target_: recipe.stages.GenerateStage
    prompt: "A haiku about {{ prompt }}"
    output_field: haiku
  rate:
    _target_: recipe.stages.JudgeStage
    criteria: {beauty: "Is it beautiful?"}
    prompt_field: prompt
    response_field: haiku
  write:
    _target_: recipe.stages.WriteStage
"""


def _section(text: str, title: str) -> list[str]:
    block = text.split(f"== {title}", 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_help_lists_every_recipe_and_model_file_with_what_it_is(tmp_path):
    mine = tmp_path / "myconf" / "recipe"
    mine.mkdir(parents=True)
    (mine / "haiku.yaml").write_text(MY_RECIPE)
    result = cli(tmp_path, "--config-dir", str(tmp_path / "myconf"), "--help", check_exit=0)

    recipes = {line.split()[0]: line.split(None, 1)[1] for line in _section(result.stdout, "Recipes")}
    shipped = {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    assert set(recipes) == shipped | {"haiku"}
    assert recipes["haiku"] == "Haiku about each prompt's topic, for the tests"
    for name in shipped:  # each one's own first comment line begins its description
        first = (ROOT / "recipes" / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        assert recipes[name].startswith(first.split(":")[0]), (name, recipes[name])

    models = {line.split()[0]: line.split(None, 1)[1] if len(line.split()) > 1 else ""
              for line in _section(result.stdout, "Models")}
    files = {p.stem: yaml.safe_load(p.read_text())["model"]["description"] for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert models == files


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    """describe's table: stage -> (reads, writes)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "class"])
    starts = [lines[header].index(word) for word in ("stage", "class", "reads", "writes")]
    rows = {}
    for line in lines[header + 1:]:
        if not line.startswith("  "):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows[cells[0]] = (cells[2], cells[3])
    return rows


def test_describe_prints_each_stage_with_the_fields_it_reads_and_writes(tmp_path):
    result = cli(tmp_path, "describe", "recipe=generate", check_exit=0)
    first = json.loads((ROOT / "recipes" / "data" / "prompts.jsonl").read_text().splitlines()[0])
    rows = _rows(result.stdout)
    assert list(rows) == ["read", "generate", "write"]
    assert rows["read"] == ("-", ", ".join(sorted(first)))
    assert rows["generate"] == ("prompt", "response")
    assert result.stdout.strip().endswith("every field a stage reads is provided by the input or an earlier stage")
    assert result.stderr == ""


def test_describe_a_recipe_of_ones_own_and_overrides(tmp_path):
    mine = tmp_path / "myconf" / "recipe"
    mine.mkdir(parents=True)
    (mine / "haiku.yaml").write_text(MY_RECIPE)
    result = cli(tmp_path, "describe", "--config-dir", str(tmp_path / "myconf"), "recipe=haiku",
                 "+recipe.stages.rate.output_field=marks", check_exit=0)
    rows = _rows(result.stdout)
    assert rows["poem"] == ("prompt", "haiku")
    assert rows["rate"] == ("haiku, prompt", "marks")


def test_describe_names_a_field_nothing_provides_and_exits_2(tmp_path):
    result = cli(tmp_path, "describe", "recipe=generate", "recipe.prompt='Answer: {{ question }}'")
    assert result.returncode == 2
    assert _rows(result.stdout)["generate"] == ("question", "response")
    assert "problem: stage 'generate' reads 'question', which no input or earlier stage provides" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "error: recipe generate: stage 'generate' reads 'question', which no input or earlier stage provides"]


def test_describe_mistakes_are_one_line(tmp_path):
    for args, expected in ((["describe", "--cfg", "job"], "describe takes overrides"),
                           (["describe", "recipe=nope"], "recipe/nope"),
                           (["describe", "recipe=generate", "recipe.stages.generate.n=0"], "recipe.stages.generate.n")):
        result = cli(tmp_path, *args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, lines)
        assert "Traceback" not in result.stderr
    assert re.search(r"describe recipe=", cli(tmp_path, "--help", check_exit=0).stdout)
