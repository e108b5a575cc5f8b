"""The public surface is deliberate: a change to it shows up here."""

from __future__ import annotations

import recipe
import recipe.stages


def test_top_level_exports():
    assert sorted(recipe.__all__) == sorted([
        "compose", "build_client", "run", "ClientSpec", "RecipeError", "ConfigError", "InputError", "LLMError",
        "ParseError", "SchemaError"])
    for name in recipe.__all__:
        assert getattr(recipe, name) is not None


def test_stage_exports_are_stage_classes():
    from recipe.stages.base import Stage

    assert {"ReadStage", "GenerateStage", "ParseListStage", "ExplodeStage", "FilterStage", "RewardStage",
            "DialogueStage", "WriteStage"} <= set(recipe.stages.__all__)
    for name in recipe.stages.__all__:
        assert issubclass(getattr(recipe.stages, name), Stage), name


def test_every_error_shares_one_root():
    import inspect

    from recipe import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 10
    assert all(issubclass(c, errors.RecipeError) for c in classes)
