"""Reasoning models (issue 24 §1): the trace is read wherever the server puts it, never left in
the answer, kept in ``reasoning_field`` on request, cached with the answer, and its tokens counted.

The stub answers as a reasoning model with ``think=`` (inline ``<think>``, a block the template
opened, an unclosed one, ``reasoning_content``, ``reasoning``); the traces it sent and the
reasoning tokens it reported are read from its ``/_stats``, never recomputed here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl, write_prompts
from recipe.clients import reply
from recipe.clients.event_loop import run_sync
from recipe.clients.litellm_client import AsyncLiteLLMClient

SHAPES = ["inline", "open", "reasoning_content", "reasoning"]
SCHEMA = "{type:object,properties:{answer:{type:string}},required:[answer]}"


def run_dir(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return folder


def stats_of(tmp_path: Path) -> dict:
    return json.loads((run_dir(tmp_path) / "stats.json").read_text())


def traces_by_prompt(server) -> dict[str, list[str]]:
    """The traces the stub sent, per prompt, in the order it sent them."""
    out: dict[str, list[str]] = {}
    for prompt, trace in server.stats()["reasoning"]:
        out.setdefault(prompt, []).append(trace)
    return out


# ---- the quoted failure ------------------------------------------------------------------------

def test_schema_answers_after_a_think_block_validate(stub_server, tmp_path):
    """``<think>…</think>\\n\\n{"answer": ...}`` is a valid answer: 10 records, no schema retry."""
    server = stub_server(think="inline")
    source = write_prompts(tmp_path / "in.jsonl", 10)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server),
        f"+recipe.stages.generate.schema={SCHEMA}", "+recipe.stages.generate.reasoning_field=thought", check_exit=0)
    rows, stats = outputs(run_dir(tmp_path)), stats_of(tmp_path)
    answered = {prompt: json.loads(content) for prompt, content in server.stats()["answers"]}
    sent = traces_by_prompt(server)
    assert len(rows) == 10 and not error_rows(run_dir(tmp_path))
    for row in rows:
        assert row["response"] == answered[row["prompt"]]  # the parsed object, the think block gone
        assert row["thought"] == sent[row["prompt"]][0]
    assert stats["schema_retries"] == 0 and stats["schema_failures"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("shape", SHAPES)
def test_without_a_schema_the_trace_is_never_in_response(stub_server, tmp_path, shape, stream):
    """Each shape, whole and streamed: ``response`` is what a model that does not think answers
    (the same stub without ``think``), the trace is in ``reasoning_field``, its tokens in stats."""
    plain, server = stub_server(), stub_server(think=shape)
    (tmp_path / "plain").mkdir()
    source = write_prompts(tmp_path / "in.jsonl", 4)
    args = ["recipe=generate", f"input={source}", "+recipe.stages.generate.reasoning_field=thought",
            *(["+recipe.stages.generate.sampling={stream:true}"] if stream else [])]
    cli(tmp_path / "plain", *args, *stub_overrides(plain), check_exit=0)
    cli(tmp_path, *args, *stub_overrides(server), check_exit=0)
    expected = {r["prompt"]: r["response"] for r in outputs(run_dir(tmp_path / "plain"))}
    rows, sent = outputs(run_dir(tmp_path)), traces_by_prompt(server)
    assert len(rows) == 4
    for row in rows:
        assert row["response"] == expected[row["prompt"]]
        assert row["thought"] == sent[row["prompt"]][0] and "<think>" not in row["response"]
    stats = stats_of(tmp_path)
    assert stats["reasoning_tokens"] == server.stats()["reasoning_tokens_sent"] > 0
    assert stats_of(tmp_path / "plain")["reasoning_tokens"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_answer_that_is_only_an_unclosed_think_block_is_truncated(stub_server, tmp_path, stream):
    """Cut at max_tokens while thinking: a TruncatedError record, even with on_truncated=keep."""
    server = stub_server(think="unclosed")
    source = write_prompts(tmp_path / "in.jsonl", 3)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "backend.on_truncated=keep",
        "backend.num_retries=0", *(["+recipe.stages.generate.sampling={stream:true}"] if stream else []), check_exit=3)
    bad = error_rows(run_dir(tmp_path))
    assert not outputs(run_dir(tmp_path)) and len(bad) == 3
    assert {b["_error"]["class"] for b in bad} == {"TruncatedError"}, bad[0]


def test_n_answers_keep_a_list_of_traces_aligned_with_them(stub_server, tmp_path):
    server = stub_server(think="reasoning_content")
    source = write_prompts(tmp_path / "in.jsonl", 2)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "+recipe.stages.generate.n=3",
        "+recipe.stages.generate.reasoning_field=thought", check_exit=0)
    sent = traces_by_prompt(server)
    for row in outputs(run_dir(tmp_path)):
        assert len(row["response"]) == 3 and row["thought"] == sent[row["prompt"]]
        assert all(f"answer {i} " in trace for i, trace in enumerate(row["thought"]))  # aligned, not reordered


# ---- the cache ---------------------------------------------------------------------------------

def test_the_cache_keeps_answer_and_reasoning_together(stub_server, tmp_path):
    server = stub_server(think="reasoning")
    source = write_prompts(tmp_path / "in.jsonl", 3)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    args = ["recipe=generate", f"input={source}", *stub_overrides(server), "+recipe.stages.generate.reasoning_field=thought"]
    cli(tmp_path / "a", *args, env={"RECIPE_CACHE_DIR": str(tmp_path / "cache")}, check_exit=0)
    first = {r["prompt"]: r for r in outputs(run_dir(tmp_path / "a"))}
    before = server.stats()["requests"]
    cli(tmp_path / "b", *args, env={"RECIPE_CACHE_DIR": str(tmp_path / "cache")}, check_exit=0)
    assert server.stats()["requests"] == before, "every answer came from the cache"
    again = {r["prompt"]: r for r in outputs(run_dir(tmp_path / "b"))}
    assert again == first and all(r["thought"] for r in again.values())


def test_an_entry_cached_with_its_think_block_inline_is_served_without_it():
    """A cache entry from before reasoning was read (the text with ``<think>`` in it) is split on read."""
    (answer,) = reply.cached_answers(["<think>\nhmm\n</think>\n\n{\"answer\": 1}"])
    assert answer == reply.Answer('{"answer": 1}', "hmm")


# ---- structured stages: list parsing and the judge ---------------------------------------------

@pytest.mark.parametrize("shape", ["inline", "reasoning_content"])
def test_the_judge_scores_a_thinking_judges_answer_and_keeps_its_trace(stub_server, tmp_path, shape):
    server = stub_server(think=shape)
    source = write_prompts(tmp_path / "in.jsonl", 3)
    cli(tmp_path, "recipe=judged_qa", f"input={source}", *stub_overrides(server), "recipe.min_score=null",
        "+recipe.stages.judge.reasoning_field=judge_thought", check_exit=0)
    rows = outputs(run_dir(tmp_path))
    assert len(rows) == 3 and not error_rows(run_dir(tmp_path))
    answered = {prompt: json.loads(content) for prompt, content in server.stats()["answers"]}
    sent = traces_by_prompt(server)
    for row in rows:
        (judge_prompt,) = [p for p in answered if row["response"] in p]
        scores = answered[judge_prompt]
        assert {k: v for k, v in row["scores"].items() if k != "aggregate"} == {k: float(v) for k, v in scores.items()}
        assert row["judge_thought"] == sent[judge_prompt][0] and "<think>" not in row["response"]


# ---- library users: query_answers, on both paths -----------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "custom_openai"], ids=["lean", "litellm"])
@pytest.mark.parametrize("shape", ["inline", "reasoning_content", "reasoning"])
def test_query_answers_gives_the_reasoning_and_query_model_never_does(stub_server, provider, shape):
    server = stub_server(think=shape)
    client = AsyncLiteLLMClient(provider=provider, api_base=server.base_url, api_key="k", num_retries=0)
    messages = [{"role": "user", "content": "Name a colour."}]
    (answer,) = run_sync(client.query_answers(messages=messages, model="stub-model"))
    texts = run_sync(client.query_model(messages=messages, model="stub-model"))
    ((_, trace), _) = server.stats()["reasoning"]
    assert answer.reasoning == trace and texts == [answer.text]
    assert trace not in answer.text and "think>" not in answer.text and answer.text
    assert client.stats.reasoning_tokens == server.stats()["reasoning_tokens_sent"]


# ---- controls on the wire ----------------------------------------------------------------------

def test_reasoning_controls_reach_the_wire(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 1)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "sampling.reasoning_effort=low",
        "sampling.thinking_budget=2048", "+backend.extra_body={chat_template_kwargs:{enable_thinking:false}}",
        check_exit=0)
    (body,) = server.stats()["bodies"]
    assert body["reasoning_effort"] == "low"
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("override, named", [
    ("sampling.reasoning_effort=extreme", "sampling.reasoning_effort='extreme'"),
    ("sampling.thinking_budget=100", "sampling.thinking_budget=100"),
    ("+backend.extra_body=5", "backend.extra_body=5"),
])
def test_a_bad_reasoning_control_is_one_error_line(stub_server, tmp_path, override, named):
    server = stub_server()
    result = cli(tmp_path, "recipe=generate", *stub_overrides(server), override, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and any(named in line for line in lines), result.stderr
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize("mode", ["direct", "structured"])
def test_list_parsing_reads_the_answer_never_the_trace(stub_server, tmp_path, mode):
    """open_qa's lists (numbered text, or JSON lists under a schema) from a thinking model are the
    lists the same stub gives without thinking."""
    plain, server = stub_server(reply="list"), stub_server(reply="list", think="inline")
    (tmp_path / "plain").mkdir()
    args = ["recipe=open_qa", f"recipe.list_mode={mode}", "recipe.n_macro_topics=2", "recipe.n_subtopics=2",
            "recipe.n_openlines=2"]
    cli(tmp_path / "plain", *args, *stub_overrides(plain), check_exit=0)
    cli(tmp_path, *args, *stub_overrides(server), check_exit=0)
    rows, expected = outputs(run_dir(tmp_path)), outputs(run_dir(tmp_path / "plain"))
    assert rows == expected and rows and not error_rows(run_dir(tmp_path))
    assert server.stats()["reasoning"], "the stub did think"


# ---- batch mode and the budget -----------------------------------------------------------------

@pytest.mark.parametrize("shape", ["inline", "reasoning_content"])
def test_batch_answers_give_their_reasoning_apart(stub_server, tmp_path, shape):
    server = stub_server(think=shape, batch_seconds=0.3)
    source = write_prompts(tmp_path / "in.jsonl", 4)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "backend.batch=true",
        "backend.batch_poll_seconds=0.2", "+recipe.stages.generate.reasoning_field=thought", check_exit=0)
    sent, rows = traces_by_prompt(server), outputs(run_dir(tmp_path))
    assert server.stats()["batches_created"] == 1 and len(rows) == 4
    for row in rows:
        assert row["thought"] == sent[row["prompt"]][0] and "think>" not in row["response"]
    assert stats_of(tmp_path)["reasoning_tokens"] == server.stats()["reasoning_tokens_sent"]


@pytest.mark.parametrize("reasons", [True, False])
def test_a_reasoning_models_worst_case_is_its_maximum_output_not_max_tokens(stub_server, tmp_path, reasons):
    """budget.max_tokens=3000 with max_tokens=50: a model that reasons (up to 4000 tokens out)
    cannot start a request; one that does not can, within max_tokens."""
    server = stub_server(think="reasoning_content" if reasons else "")
    source = write_prompts(tmp_path / "in.jsonl", 3)
    result = cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "sampling.max_tokens=50",
                 "budget.max_tokens=3000", "+model.max_output_tokens=4000", f"+model.reasoning={str(reasons).lower()}")
    stats = stats_of(tmp_path)
    if reasons:
        assert server.stats()["requests"] == 0 and stats["budget"]["reached"], result.stderr[-2000:]
    else:
        assert result.returncode == 0 and server.stats()["requests"] == 3 and not stats["budget"]["reached"]


def test_reasoning_tokens_are_billed_as_completion_tokens(stub_server, tmp_path):
    """The stub counts the trace inside completion_tokens, as OpenAI does: cost_usd and the
    budget's spend include it once, and reasoning_tokens says how much of it was thinking."""
    server = stub_server(think="reasoning")
    source = write_prompts(tmp_path / "in.jsonl", 2)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server), "budget.max_usd=5",
        "model.price.input_per_mtok=1", "model.price.output_per_mtok=1000", check_exit=0)
    stats = stats_of(tmp_path)
    assert 0 < stats["reasoning_tokens"] < stats["completion_tokens"]
    assert stats["cost_usd"] == pytest.approx((stats["prompt_tokens"] + 1000 * stats["completion_tokens"]) / 1e6)
    assert stats["budget"]["spent_usd"] == pytest.approx(stats["cost_usd"])


# ---- the reasoning_distill recipe --------------------------------------------------------------

def test_reasoning_distill_on_the_stub_keeps_correct_answers_as_sft_rows_with_their_trace(stub_server, tmp_path):
    """The stub echoes each prompt, so each question's own "Answer:" line is the answer the check
    reads: the test decides which are right. Kept rows are SFT ``messages`` with the trace in the
    assistant turn's ``reasoning_content``; the wrong one is counted as filtered."""
    server = stub_server(think="reasoning_content")
    questions = [{"question": "What is 5 + 7?\nAnswer: 12", "reference": "12"},
                 {"question": "What is 2 + 2?\nAnswer: 5", "reference": "4"},
                 {"question": "What is 10 x 100?\nAnswer: 1,000.", "reference": 1000}]
    source = write_jsonl(tmp_path / "q.jsonl", questions)
    cli(tmp_path, "recipe=reasoning_distill", f"input={source}", *stub_overrides(server), check_exit=0)
    rows, stats, sent = outputs(run_dir(tmp_path)), stats_of(tmp_path), traces_by_prompt(server)
    assert [r["reference"] for r in rows] == ["12", 1000] and stats["filtered"] == 1
    for row, question in zip(rows, (questions[0], questions[2])):
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": question["question"]} and assistant["role"] == "assistant"
        (trace,) = [t for prompt, ts in sent.items() if question["question"] in prompt for t in ts]
        assert assistant["reasoning_content"] == trace and trace not in assistant["content"]
        assert row["correct"] is True


@pytest.mark.llm
def test_reasoning_distill_gives_checked_rows_on_the_embedded_model(tmp_path):
    """The recipe as shipped (only correct answers kept), on SmolLM2, over the first four of its own
    sample questions (one-step sums a 135M model can get right), decoding greedy so the run is the
    same each time, answers cut at 96 tokens and kept (checked as they are). Every question is a
    row or filtered, none fails; there are rows, each an SFT conversation whose answer holds its
    reference, with the trace in its own field (null: SmolLM2 does not think)."""
    shipped = Path(__file__).resolve().parents[1] / "recipes" / "data" / "reasoning_questions.jsonl"
    questions = [json.loads(line) for line in shipped.read_text().splitlines()[:4]]
    source = write_jsonl(tmp_path / "q.jsonl", questions)
    cli(tmp_path, "recipe=reasoning_distill", f"input={source}", "sampling=greedy", "backend.on_truncated=keep",
        "recipe.stages.solve.sampling.max_tokens=96", "progress=false", timeout=900, check_exit=0)
    rows, stats = outputs(run_dir(tmp_path)), stats_of(tmp_path)
    assert stats["failed"] == 0 and len(rows) + stats["filtered"] == len(questions)
    assert rows, "SmolLM2 gets some of the sample questions right"
    reference = {q["question"]: q["reference"] for q in questions}
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"] in reference and assistant["role"] == "assistant"
        assert set(assistant) == {"role", "content", "reasoning_content"} and assistant["reasoning_content"] is None
        assert row["reference"] == reference[user["content"]] and row["correct"] is True
        assert row["final_answer"] == row["reference"], row  # the check's reading of the answer
        assert row["reference"] in re.findall(r"\d+", assistant["content"]), assistant["content"]


def test_anthropic_thinking_blocks_as_litellm_gives_them_are_reasoning():
    """The litellm path: Anthropic's thinking arrives as litellm's ``thinking_blocks`` (and
    ``reasoning_content``); either alone is read as the reasoning, never as the answer."""
    from litellm.types.utils import Message

    blocks = Message(content="Paris.", thinking_blocks=[{"type": "thinking", "thinking": "The capital.",
                                                         "signature": "sig"}])
    assert reply.reasoning_text(blocks) == "The capital."
    assert reply.reasoning_text(Message(content="Paris.", reasoning_content="Capital of France.")) == "Capital of France."
    assert reply.with_reasoning("Paris.", reply.reasoning_text(blocks)) == ("Paris.", "The capital.", False)
