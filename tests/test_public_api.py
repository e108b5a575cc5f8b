"""The public surface is deliberate: a change to it shows up here, name by name."""

from __future__ import annotations

import inspect

import recipe
import recipe.stages
from recipe import errors
from recipe.stages.base import Stage

TOP_LEVEL = {"__version__", "compose", "build_client", "run", "from_data_designer", "ClientSpec", "RecipeError", "ConfigError", "InputError", "LLMError",
             "ParseError", "SchemaError"}
STAGES = {"AppendSeedsStage", "CombineStage", "CrossStage", "DedupStage", "DialogueStage", "ExplodeStage", "ExtractCodeStage",
          "FilterStage", "GenerateStage", "JudgeStage", "LLMStage", "ParseListStage", "PreferencePairsStage",
          "ReadStage", "RewardStage", "RewritesStage", "SampleStage", "Stage", "ValidateStage", "WriteStage"}


def test_top_level_exports():
    assert set(recipe.__all__) == TOP_LEVEL and len(recipe.__all__) == len(TOP_LEVEL)
    assert {name for name in TOP_LEVEL if not hasattr(recipe, name)} == set(), "__all__ names what exists"
    assert {n for n in TOP_LEVEL if n.endswith("Error")} == {
        n for n in TOP_LEVEL if inspect.isclass(getattr(recipe, n)) and issubclass(getattr(recipe, n), errors.RecipeError)}
    assert all(callable(getattr(recipe, n)) for n in ("compose", "build_client", "run", "from_data_designer"))


def test_stage_exports_are_exactly_the_stage_classes():
    assert set(recipe.stages.__all__) == STAGES and len(recipe.stages.__all__) == len(STAGES)
    public_classes = {n for n, v in vars(recipe.stages).items()
                      if not n.startswith("_") and inspect.isclass(v) and issubclass(v, Stage)}
    assert public_classes == STAGES, "every Stage class the package exposes is in __all__, and only those"


def test_every_error_shares_one_root():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 10
    assert [c.__name__ for c in classes if not issubclass(c, errors.RecipeError)] == []
