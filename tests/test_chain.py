"""The chain check: a stage reading a field that no input or earlier stage provides is refused
before the first request, in one line naming the stage and the field."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

import recipe
from recipe.config import paths
from recipe.clients.factory import ClientSpec
from recipe.engine.runner import build_stages
from recipe.stages import ExplodeStage, GenerateStage, ReadStage, chain

from conftest import cli

def test_a_field_nothing_provides_is_refused_before_any_request(stub_server, tmp_path):
    server = stub_server()
    result = cli(tmp_path, "recipe=generate", "recipe.prompt='Tell me about {{ topic }}'",
                 "backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=m",
                 "cache.enabled=false", "progress=false", f"output_dir={tmp_path / 'out'}", check_exit=2)
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: stage 'generate' reads 'topic', which no input or earlier stage provides"], lines
    assert server.stats()["requests"] == 0
    assert not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("name", sorted(p.stem for p in paths.recipes_dir().glob("*.yaml")))
def test_every_shipped_recipe_passes_the_chain_check(name, tmp_path):
    data = OmegaConf.to_container(recipe.compose([f"recipe={name}"]), resolve=True)
    stages = build_stages(data["recipe"], ClientSpec(provider="openai", model="m"), str(tmp_path))
    assert stages[0].input_fields(), name  # the check knows what the input provides
    assert chain.problems(stages) == []


def test_the_check_names_each_missing_field_once_and_follows_what_stages_write():
    stages = [ReadStage(name="read", seeds=[{"a": 1}, {"a": 2, "z": 0}]),
              GenerateStage(name="ask", prompt="{{ a }} {{ b }}", output_field="items"),
              ExplodeStage(name="each", field="items", output_field="item", index_field="i"),
              GenerateStage(name="again", messages=[{"role": "user", "content": "{{ item }} {{ i }} {{ z }}"}],
                            system="{{ _id }}")]
    assert chain.problems(stages) == [
        "stage 'ask' reads 'b', which no input or earlier stage provides",
        "stage 'again' reads 'z', which no input or earlier stage provides",  # only one seed has z
    ]
    with pytest.raises(recipe.ConfigError, match="'ask' reads 'b'.*'again' reads 'z'"):
        chain.check(stages)


def test_an_input_it_cannot_read_cheaply_is_not_guessed(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("not json\n" + json.dumps({"prompt": "p"}) + "\n")
    stages = [ReadStage(path=str(source)), GenerateStage(prompt="{{ anything }}")]
    assert stages[0].input_fields() is None
    assert chain.problems(stages) == []
    source.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert chain.problems(stages) == ["stage 'generate' reads 'anything', which no input or earlier stage provides"]


def test_a_field_the_template_only_tests_or_defaults_is_not_required():
    stages = [ReadStage(seeds=["s"]), GenerateStage(prompt="{{ seed }}{% if hint is defined %} {{ hint }}{% endif %} "
                                                           "{{ tone | default('plain') }} {{ topic }}")]
    assert chain.problems(stages) == ["stage 'generate' reads 'topic', which no input or earlier stage provides"]
