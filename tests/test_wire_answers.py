"""Answers that are not answers, and answers in odd wire forms (issue 21, items 6, 9, 12-15, 18).

Each case runs ``python -m recipe`` against the stub server in the odd mode, on both request paths:
``lean`` (backend=openai: litellm's configuration, aiohttp) and ``litellm`` (the same server
reached through ``litellm.acompletion``, provider ``custom_openai``). What a good answer is, is
read off the wire: the same input answered by a plain stub in a plain run, never the stub's rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl, write_prompts

# Each test runs python -m recipe against the stub, some several times: seconds to a minute each.
pytestmark = pytest.mark.slow

PATHS = {"lean": [], "litellm": ["backend.provider=custom_openai"]}
STREAM = "+recipe.stages.generate.sampling={stream:true}"


def run(where: Path, server, *extra: str, check_exit: int | None = None, out: str = "out"):
    """One CLI run of the generate recipe into ``where/out`` (its own cache and runs dirs)."""
    where.mkdir(parents=True, exist_ok=True)
    return cli(where, *stub_overrides(server, "recipe=generate", f"output_dir={where / out}", *extra),
               check_exit=check_exit)


def answers(where: Path) -> dict[str, str]:
    return {r["prompt"]: r["response"] for r in outputs(where / "out")}


def stats_json(where: Path) -> dict:
    return json.loads((where / "out" / "stats.json").read_text())


def refused_never_written(where: Path, result) -> None:
    """Where litellm itself cannot read a form (the litellm path): each record is an error record of
    a malformed reply (retried by default), never a wrong answer written as data."""
    assert result.returncode == 3, result.stderr[-2000:]
    assert outputs(where / "out") == []
    assert {e["_error"]["class"] for e in error_rows(where / "out")} == {"MalformedResponseError"}


def reference(tmp_path: Path, stub_server, source: Path, path: str) -> dict[str, str]:
    """The answers a plain stub gives to ``source`` in a plain run: what every odd form must equal."""
    run(tmp_path / "reference", stub_server(), f"input={source}", *PATHS[path], "cache.enabled=false", check_exit=0)
    return answers(tmp_path / "reference")


# ---- item 6: a character split across two stream chunks ----------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("split", ["utf16", "bytes"])
def test_a_character_split_across_stream_chunks_is_whole_again(stub_server, tmp_path, path, split):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i} \U0001F600 é 中 \U0001F4A9"} for i in range(4)])
    if path == "litellm" and split == "bytes":  # the OpenAI SDK decodes each event as UTF-8 on its own
        where = tmp_path / "litellm"
        result = run(where, stub_server(stream_split=split), f"input={source}", STREAM, "backend.num_retries=0",
                     *PATHS[path])
        return refused_never_written(where, result)
    expected = reference(tmp_path, stub_server, source, path)
    assert all("\U0001F600" in a and "\U0001F4A9" in a for a in expected.values())
    server = stub_server(stream_split=split)
    run(tmp_path, server, f"input={source}", STREAM, *PATHS[path], check_exit=0)
    assert answers(tmp_path) == expected
    assert server.stats()["requests"] == 4


# ---- item 9: a stream's usage is asked for, and a missing one settles at the estimate -------------

BUDGET = ["budget.max_usd=5e-5", "model.price.input_per_mtok=1", "model.price.output_per_mtok=1",
          "sampling.max_tokens=16", "dask.partition_size=5"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("usage", ["asked", "never"])
def test_a_streamed_run_stops_at_the_budget_like_a_plain_one(stub_server, tmp_path, path, usage):
    source = write_prompts(tmp_path / "in.jsonl", 20)
    plain_server = stub_server(usage=(10, 10))
    plain = run(tmp_path / "plain", plain_server, f"input={source}", *BUDGET, *PATHS[path])
    assert plain.returncode == 4, plain.stderr[-2000:]
    server = stub_server(usage=(10, 10), stream_usage=usage)
    streamed = run(tmp_path, server, f"input={source}", STREAM, *BUDGET, *PATHS[path])
    assert streamed.returncode == 4, streamed.stderr[-2000:]
    sent = server.stats()["requests"]
    assert sent < 20 and sent <= plain_server.stats()["requests"] + 1
    stats = stats_json(tmp_path)
    assert stats["prompt_tokens"] > 0 and stats["cost_usd"] > 0
    if usage == "asked":
        assert all(b["stream_options"] == {"include_usage": True} for b in server.stats()["bodies"])
    elif path == "lean":  # settled at the estimate, and said so in the attempt's account (litellm
        # counts a stream's tokens itself when the server reports none: that is its usage then)
        (attempt,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("attempts/*.json")]
        assert attempt["usage"]["estimated_usage"] == sent
        assert stats["estimated_usage"] == sent  # and in stats.json


# ---- item 12: a stream cut short ----------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["close", "eof"])
def test_a_stream_cut_short_is_retried_never_written(stub_server, tmp_path, path, how):
    source = write_prompts(tmp_path / "in.jsonl", 6)
    expected = reference(tmp_path, stub_server, source, path)
    server = stub_server(stream_cut=0.5, cut_how=how)
    run(tmp_path, server, f"input={source}", STREAM, "backend.num_retries=6", *PATHS[path], check_exit=0)
    assert answers(tmp_path) == expected
    assert server.stats()["quirks"]["cut"] >= 3
    always = stub_server(stream_cut=1.0, cut_how=how)
    result = run(tmp_path / "always", always, f"input={source}", STREAM, "backend.num_retries=1", *PATHS[path])
    assert result.returncode == 3, result.stderr[-2000:]
    assert outputs(tmp_path / "always" / "out") == []
    assert {e["_error"]["class"] for e in error_rows(tmp_path / "always" / "out")} == {"IncompleteAnswerError"}
    assert always.stats()["requests"] == 12  # each record tried twice: transient
    assert stats_json(tmp_path / "always")["transient_failed"] == 6


# ---- item 13: content_filter; item 15: refusals, and neither stops the run ----------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_content_filter_is_its_own_error_record_not_retried_not_cached(stub_server, tmp_path, path, stream):
    source = write_prompts(tmp_path / "in.jsonl", 25)
    server = stub_server(finish_reason="content_filter")
    extra = [f"input={source}", *PATHS[path], *([STREAM] if stream else [])]
    first = run(tmp_path, server, *extra)
    assert first.returncode == 3, first.stderr[-2000:]  # records failed; the breaker did not stop the run
    rows = error_rows(tmp_path / "out")
    assert outputs(tmp_path / "out") == [] and len(rows) == 25
    assert {e["_error"]["class"] for e in rows} == {"ContentFilterError"}
    assert server.stats()["requests"] == 25  # not retried
    run(tmp_path, server, *extra, out="again")
    assert server.stats()["requests"] == 50  # not cached: asked again


@pytest.mark.parametrize("path", PATHS)
def test_refusals_are_records_of_their_own_and_never_stop_the_run(stub_server, tmp_path, path):
    rows = [{"prompt": f"refused {i} <<refuse>>"} for i in range(25)] + [{"prompt": f"fine {i}"} for i in range(25)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    server = stub_server()
    result = run(tmp_path, server, f"input={source}", *PATHS[path])
    assert result.returncode == 3, result.stderr[-2000:]
    assert sorted(answers(tmp_path)) == sorted(f"fine {i}" for i in range(25))
    refused = {e["record"]["prompt"]: e["_error"] for e in error_rows(tmp_path / "out")}
    assert {e["class"] for e in refused.values()} == {"RefusalError"}
    said = dict(server.stats()["answers"])  # [prompt, refusal text] as the stub sent it
    assert {p: e["raw"] for p, e in refused.items()} == said and len(said) == 25


# ---- item 14: a truncated answer kept by on_truncated=keep is never cached ----------------------


@pytest.mark.parametrize("path", PATHS)
def test_a_kept_truncated_answer_is_not_served_to_a_later_default_run(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 3)
    server = stub_server(finish_reason="length")
    run(tmp_path, server, f"input={source}", "backend.on_truncated=keep", *PATHS[path], check_exit=0)
    assert len(outputs(tmp_path / "out")) == 3
    later = run(tmp_path, server, f"input={source}", *PATHS[path], out="later")
    assert later.returncode == 3, later.stderr[-2000:]
    assert {e["_error"]["class"] for e in error_rows(tmp_path / "later")} == {"TruncatedError"}
    assert server.stats()["requests"] == 6


# ---- item 18: the wire's smaller oddities ---------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_a_retry_after_given_as_an_http_date_is_honoured(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 4)
    server = stub_server(fail_429=0.25, retry_after=1.0, retry_after_date=1)
    run(tmp_path, server, f"input={source}", *PATHS[path], check_exit=0)
    limited = server.stats()["status_counts"]["429"]
    stats = stats_json(tmp_path)
    assert limited >= 1 and stats["rate_limited_429"] == limited
    assert stats["retry_wait_seconds"] >= 1.0 * limited  # the date was at least a second ahead


@pytest.mark.parametrize("path", PATHS)
def test_an_error_in_a_200_reply_keeps_the_servers_message(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 2)
    server = stub_server(error_200=1.0)
    result = run(tmp_path, server, f"input={source}", "backend.num_retries=1", *PATHS[path])
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [e["_error"] for e in error_rows(tmp_path / "out")]
    assert len(errors) == 2 and {e["class"] for e in errors} == {"ServerError"}
    assert all("The server had an error processing your request" in e["message"] for e in errors)
    assert server.stats()["requests"] == 4  # retried, as a server error is


@pytest.mark.parametrize("path", PATHS)
def test_a_409_is_retried(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 4)
    expected = reference(tmp_path, stub_server, source, path)
    server = stub_server(fail_409=0.5)
    run(tmp_path, server, f"input={source}", *PATHS[path], check_exit=0)
    assert answers(tmp_path) == expected
    assert server.stats()["status_counts"]["409"] >= 2


@pytest.mark.parametrize("path", PATHS)
def test_content_given_as_a_list_of_parts_is_the_joined_text(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 4)
    if path == "litellm":  # litellm's response object refuses list content ("Invalid response object")
        result = run(tmp_path, stub_server(content_form="parts"), f"input={source}", "backend.num_retries=0",
                     *PATHS[path])
        return refused_never_written(tmp_path, result)
    expected = reference(tmp_path, stub_server, source, path)
    server = stub_server(content_form="parts")
    run(tmp_path, server, f"input={source}", *PATHS[path], check_exit=0)
    assert answers(tmp_path) == expected


@pytest.mark.parametrize("path", PATHS)
def test_usage_given_as_numeric_strings_is_counted(stub_server, tmp_path, path):
    source = write_prompts(tmp_path / "in.jsonl", 4)
    if path == "litellm":  # litellm's Usage model refuses "5.5" before recipe sees the reply
        result = run(tmp_path, stub_server(usage_form="string"), f"input={source}", "backend.num_retries=0",
                     *PATHS[path])
        return refused_never_written(tmp_path, result)
    expected = reference(tmp_path, stub_server, source, path)
    server = stub_server(usage_form="string")
    run(tmp_path, server, f"input={source}", *PATHS[path], check_exit=0)
    assert answers(tmp_path) == expected
    stats = stats_json(tmp_path)
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0


# ---- item 13/15: a policy 400 is a content filter, and verdicts on one record never feed the breaker


def test_a_policy_400_is_a_content_filter_and_per_record_outcomes_never_open_the_breaker():
    from recipe import errors
    from recipe.clients.error_mapping import translate
    from recipe.clients.litellm_setup import get_litellm
    from recipe.stages.breaker import CircuitBreaker

    litellm = get_litellm()
    policy = litellm.BadRequestError(message="Your request was rejected as a result of our safety system.",
                                     model="m", llm_provider="openai")
    mapped = translate(policy, provider="openai")
    assert type(mapped) is errors.ContentFilterError and not mapped.retryable
    verdicts = [mapped, errors.RefusalError("refused", None, "no"), errors.EmptyAnswerError("empty"),
                errors.TruncatedError("cut"), errors.ContentFilterError("filtered")]
    breaker = CircuitBreaker("generate", window=20)
    for i in range(100):
        breaker.observe(verdicts[i % len(verdicts)])  # raises CircuitOpenError once open
    shared = CircuitBreaker("generate", window=20)
    with pytest.raises(errors.CircuitOpenError):
        for _ in range(20):
            shared.observe(errors.BadRequestError("openai: The model `nope` does not exist"))
