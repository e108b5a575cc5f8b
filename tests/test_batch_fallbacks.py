"""``backend.batch=true`` with ``backend.fallbacks`` (issue 26 §3): a batch line the run's model
cannot answer (context too long, no such model, content filter) is answered by the fallback.

Real stub servers on 127.0.0.1 speaking OpenAI's batch API, runs through the CLI; who answered
what and what it cost is read off the stubs (their lines, statuses and prompts) and the run folder.
"""

from __future__ import annotations

import json

import pytest
from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl
from test_fallbacks import ENV, fallback, prompts_sent, run_folder

USAGE_A, USAGE_B = (100, 20), (300, 50)  # tokens each stub reports per answer


def batch_args(primary, big, source, *extra: str) -> list[str]:
    return stub_overrides(primary, f"input={source}", "sampling.max_tokens=8", "dask.partition_size=12",
                          "backend.batch=true", "backend.batch_poll_seconds=0.2",
                          "model.price.input_per_mtok=1", "model.price.output_per_mtok=2", "budget.max_usd=50",
                          fallback(big, price="{input_per_mtok:10,output_per_mtok:30}"), *extra)


@pytest.mark.slow  # two runs
def test_batch_lines_refused_as_too_long_are_answered_by_the_fallback_each_paid_once(stub_server, tmp_path):
    primary = stub_server(context_length=64, usage=USAGE_A, batch_seconds=0.3)
    big = stub_server(usage=USAGE_B, batch_seconds=0.3)  # (the stub checks no key on batch lines)
    rows = [{"prompt": ("long " * 100 + str(i)) if i % 3 == 0 else f"short {i}"} for i in range(12)]
    overlong = sorted(r["prompt"] for r in rows if len(r["prompt"]) > 400)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    first = cli(tmp_path, *batch_args(primary, big, source, f"output_dir={tmp_path / 'first'}"), env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    out = run_folder(first)
    records = outputs(out)
    assert not error_rows(out)
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in rows), "each record once"
    assert sorted(r["prompt"] for r in records if r["_model"] == "big-model") == overlong
    assert {r["_model"] for r in records if r["prompt"] not in overlong} == {"stub-model"}
    # the primary's batch held every line once; the ones it refused were not submitted to it again
    stub_a = primary.stats()
    assert (stub_a["batches_created"], stub_a["batch_lines"]) == (1, 12), stub_a
    assert stub_a["status_counts"] == {"200": 12 - len(overlong), "400": len(overlong)}
    assert sorted(prompts_sent(big)) == overlong, "the fallback answered those, and only those"
    answered_a, answered_b = stub_a["status_counts"]["200"], big.stats()["requests"]
    stats = json.loads((out / "stats.json").read_text())
    expected = answered_a * (USAGE_A[0] * 1e-6 + USAGE_A[1] * 2e-6) + \
        answered_b * (USAGE_B[0] * 10e-6 + USAGE_B[1] * 30e-6)
    assert stats["cost_usd"] == pytest.approx(expected) and stats["budget"]["spent_usd"] == pytest.approx(expected)

    # again, in another folder: every answer comes from the cache, nothing is paid again
    sent_big = big.stats()["requests"]
    again = cli(tmp_path, *batch_args(primary, big, source, f"output_dir={tmp_path / 'again'}"), env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert big.stats()["requests"] == sent_big and primary.stats()["status_counts"].get("200") == answered_a
    again_stats = json.loads((run_folder(again) / "stats.json").read_text())
    assert again_stats["cost_usd"] == 0
    assert {r["prompt"]: r["_model"] for r in outputs(run_folder(again))} == {r["prompt"]: r["_model"] for r in records}


@pytest.mark.slow  # a batch on each model
@pytest.mark.parametrize("refusal", [{"models": "another-model"}, {"finish_reason": "content_filter"}],
                         ids=["model-not-found", "content-filter"])
def test_batch_lines_the_primary_cannot_answer_go_to_the_fallback_once(stub_server, tmp_path, refusal):
    primary = stub_server(usage=USAGE_A, batch_seconds=0.3, **refusal)
    big = stub_server(usage=USAGE_B, batch_seconds=0.3)
    rows = [{"prompt": f"short {i}"} for i in range(6)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, *batch_args(primary, big, source), env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_folder(result)
    assert not error_rows(out)
    records = outputs(out)
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in rows)
    assert {r["_model"] for r in records} == {"big-model"}
    stub_a = primary.stats()
    assert (stub_a["batches_created"], stub_a["batch_lines"]) == (1, 6), "no line went to the primary twice"
    assert sorted(prompts_sent(big)) == sorted(r["prompt"] for r in rows)
    # what each model answered is paid once: the primary's filtered answers too (their tokens were used)
    answered_a = stub_a["status_counts"].get("200", 0)
    expected = answered_a * (USAGE_A[0] * 1e-6 + USAGE_A[1] * 2e-6) + \
        big.stats()["requests"] * (USAGE_B[0] * 10e-6 + USAGE_B[1] * 30e-6)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["cost_usd"] == pytest.approx(expected) and stats["budget"]["spent_usd"] == pytest.approx(expected)


@pytest.mark.slow
def test_a_dead_primary_batch_api_opens_the_breaker_and_the_fallback_answers_in_batch(stub_server, tmp_path):
    primary = stub_server()
    dead_url = primary.base_url
    primary.stop()  # every connection refused: no batch can be created there
    big = stub_server(usage=USAGE_B, batch_seconds=0.3)
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(6)])
    args = [o if not o.startswith("backend.api_base=") else f"backend.api_base={dead_url}"
            for o in batch_args(big, big, source, "backend.num_retries=0")]
    result = cli(tmp_path, *args, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_folder(result)
    assert not error_rows(out)
    records = outputs(out)
    assert sorted(r["prompt"] for r in records) == [f"q {i}" for i in range(6)]
    assert {r["_model"] for r in records} == {"big-model"}
    assert (big.stats()["batches_created"], big.stats()["batch_lines"]) == (1, 6)


@pytest.mark.slow  # kills a run and resumes it
def test_batch_with_fallbacks_killed_while_the_primarys_batch_runs_pays_nothing_twice(stub_server, tmp_path):
    from conftest import cli_process
    from test_batch_resume import kill_when

    primary = stub_server(context_length=64, usage=USAGE_A, batch_seconds=6)
    big = stub_server(usage=USAGE_B, batch_seconds=0.3)
    rows = [{"prompt": ("long " * 100 + str(i)) if i % 3 == 0 else f"short {i}"} for i in range(12)]
    overlong = sorted(r["prompt"] for r in rows if len(r["prompt"]) > 400)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = batch_args(primary, big, source, f"output_dir={tmp_path / 'out'}")
    proc = cli_process(tmp_path, *args, env=ENV, start_new_session=True)
    kill_when(proc, lambda: list((tmp_path / "out").glob("batches/*.json")), "the primary's batch was recorded")
    result = cli(tmp_path, *args, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    records = outputs(out)
    assert not error_rows(out)
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in rows), "each record once"
    assert sorted(r["prompt"] for r in records if r["_model"] == "big-model") == overlong
    stub_a = primary.stats()
    assert (stub_a["batches_created"], stub_a["batch_lines"]) == (1, 12), "the resume polled the primary's batch"
    assert sorted(prompts_sent(big)) == overlong
    answered_a, answered_b = stub_a["status_counts"]["200"], big.stats()["requests"]
    expected = answered_a * (USAGE_A[0] * 1e-6 + USAGE_A[1] * 2e-6) + \
        answered_b * (USAGE_B[0] * 10e-6 + USAGE_B[1] * 30e-6)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["cost_usd"] == pytest.approx(expected), "each answer paid once, across the kill"
