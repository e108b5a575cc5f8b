"""A process outlives its runs (a notebook, a Dask worker): what one run left in module globals
(an open breaker, progress counts, usage, clients) never leaks into the next."""

from __future__ import annotations

import json

import pytest

import recipe
from conftest import outputs, stub_overrides, write_prompts
from recipe import errors


def test_a_stopped_run_leaves_nothing_behind_for_the_next_run_in_the_same_process(stub_server, tmp_path):
    server = stub_server(models="another-model")  # every request: model not found -> the breaker opens
    source = write_prompts(tmp_path / "in.jsonl", 40)
    base = stub_overrides(server, f"input={source}", "dask.partition_size=10", "backend.max_concurrency=2")
    with pytest.raises(errors.RecipeError) as stopped:
        recipe.run(recipe.compose(base), output_dir=str(tmp_path / "first"))
    assert "ModelNotFoundError" in str(stopped.value)
    sent_by_the_stopped_run = server.stats()["requests"]

    server.set_models("stub-model")  # the cause is fixed; a new run (another folder) in this process
    out = tmp_path / "second"
    summary = recipe.run(recipe.compose(base), output_dir=str(out))
    assert summary.records == 40 and sorted(r["prompt"] for r in outputs(out)) == sorted(
        json.loads(line)["prompt"] for line in source.read_text().splitlines())
    stats = json.loads((out / "stats.json").read_text())
    # its own requests only: not the stopped run's, which the process's usage counter also saw
    assert stats["requests"] == server.stats()["requests"] - sent_by_the_stopped_run
    assert stats["failed"] == 0
