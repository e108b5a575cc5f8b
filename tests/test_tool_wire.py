"""Tool calls over every wire form (issue 24 §2), each through the CLI on the stub server:

- streamed (a stage's ``sampling.stream``): calls arrive as deltas, index, id and name first, then
  the arguments in fragments across chunks, several calls per answer;
- batch mode: OpenAI's batch lines carry ``tools`` / ``tool_choice``; Anthropic's Message Batches
  carry them in Anthropic's form (``input_schema``, ``{type: tool, name}``) and answer ``tool_use`` blocks;
- Anthropic online (litellm's ``anthropic/`` route, ``POST /v1/messages``);
- Ollama (``/api/chat``: arguments an object), where ``tool_choice`` cannot go (litellm drops it).

What was asked is read off the wire (the bodies the stub received, the batch input file it stored),
what was answered off its ``tool_calls`` log ([first user message, name, arguments, broken?]); the
records are checked against that log, never against a copy of the stub's rules.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_prompts

TOOLS_PATH = Path(__file__).resolve().parents[1] / "recipes" / "data" / "tools.json"
TOOLS = json.loads(TOOLS_PATH.read_text())
FORCED = TOOLS[1]["function"]["name"]  # not the first tool: the stub calls the first unless told otherwise
FORCE = f"+recipe.stages.generate.tool_choice={{type:function,function:{{name:{FORCED}}}}}"
CLAUDE = "claude-haiku-4-5"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_dir(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return folder


def with_tools(*extra: str) -> list[str]:
    return ["recipe=generate", f"+recipe.stages.generate.tools={TOOLS_PATH}",
            "+recipe.stages.generate.messages_field=messages", *extra]


def answered(server) -> dict[str, list[list]]:
    """Per record (its first user message), the calls of each try as the stub sent them."""
    tries: dict[str, list[list]] = {}
    for first, name, arguments, broken in server.stats()["tool_calls"]:
        tries.setdefault(first, []).append([name, json.loads(arguments), broken])
    return tries


def check_records(tmp_path: Path, tries: dict[str, list[list]], per_answer: int = 1) -> None:
    """Each record holds the calls of its last try, as sent; a record whose every try had a broken
    call is a ToolCallError record carrying that try's raw calls."""
    rows, bad = outputs(run_dir(tmp_path)), error_rows(run_dir(tmp_path))
    assert len(rows) + len(bad) == len(tries)
    for row in rows:
        last = tries[row["prompt"]][-per_answer:]
        assert not any(broken for _, _, broken in last)
        assert row["response"] == [{"name": name, "arguments": arguments} for name, arguments, _ in last]
        assistant = row["messages"][-1]
        assert assistant["content"] is None
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assistant["tool_calls"]] \
            == [(name, arguments) for name, arguments, _ in last]
    for b in bad:
        last = tries[b["record"]["prompt"]][-per_answer:]
        assert b["_error"]["class"] == "ToolCallError" and any(broken for _, _, broken in last)
        assert [(c["name"], json.loads(c["arguments"])) for c in json.loads(b["_error"]["raw"])] \
            == [(name, arguments) for name, arguments, _ in last]


def anthropic_tools() -> list[dict]:
    """The declared tools as Anthropic's API takes them: name, description, input_schema."""
    return [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]} for t in TOOLS]


def without_type(tools: list[dict]) -> list[dict]:
    return [{k: v for k, v in t.items() if k != "type"} for t in tools]  # litellm adds type "custom"


# ---- streamed -------------------------------------------------------------------------------------

def test_streamed_tool_call_deltas_are_assembled_and_validated(stub_server, tmp_path):
    # two calls per answer, each one's arguments in 5 fragments; a quarter of the calls broken, no retry
    server = stub_server(tool_parallel=2, tool_pieces=5, tool_break=0.25)
    source = write_prompts(tmp_path / "in.jsonl", 8)
    cli(tmp_path, *with_tools(f"input={source}", "+recipe.stages.generate.sampling={stream:true}",
                              "+recipe.stages.generate.schema_retries=0"), *stub_overrides(server))
    stats = server.stats()
    assert len(stats["bodies"]) == 8 and all(b["stream"] is True and b["tools"] == TOOLS for b in stats["bodies"])
    tries = answered(server)
    assert all(len(calls) == 2 for calls in tries.values())
    assert all(len(json.dumps(arguments)) > 5 for calls in tries.values() for _, arguments, _ in calls)
    check_records(tmp_path, tries, per_answer=2)
    failed = {p for p, calls in tries.items() if any(broken for _, _, broken in calls)}
    assert {b["record"]["prompt"] for b in error_rows(run_dir(tmp_path))} == failed != set()
    assert len(outputs(run_dir(tmp_path))) == 8 - len(failed) > 0


# ---- batch mode -----------------------------------------------------------------------------------

def batch_input_lines(server) -> list[dict]:
    """The lines of every batch input file the stub received (by the batches' input_file_id)."""
    base = f"http://127.0.0.1:{server.port}/v1"
    with _NO_PROXY.open(f"{base}/batches?limit=100", timeout=30) as r:
        batches = json.loads(r.read())["data"]
    lines = []
    for batch in batches:
        with _NO_PROXY.open(f"{base}/files/{batch['input_file_id']}/content", timeout=30) as r:
            lines += [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    return lines


def batch_args(server, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            "model.name=gpt-4o", "progress=false", "backend.batch=true", "backend.batch_poll_seconds=0.2", *extra]


def test_openai_batch_lines_carry_tools_and_their_answers_are_validated(stub_server, tmp_path):
    server = stub_server(batch_seconds=0.3, tool_break=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 6)
    cli(tmp_path, *with_tools(f"input={source}", FORCE, "+recipe.stages.generate.schema_retries=1"),
        *batch_args(server))
    lines = batch_input_lines(server)
    tries = answered(server)
    assert len(lines) == sum(len(t) for t in tries.values())  # every try went as a batch line
    assert all(line["url"] == "/v1/chat/completions" and line["body"]["tools"] == TOOLS
               and line["body"]["tool_choice"] == {"type": "function", "function": {"name": FORCED}}
               for line in lines)
    assert server.stats()["by_path"].get("/v1/chat/completions") is None  # nothing went online
    assert all(name.startswith(FORCED) for t in tries.values() for name, _, _ in t)
    assert any(len(t) == 2 and not t[-1][2] for t in tries.values()), "a broken call was asked again, in a batch"
    check_records(tmp_path, tries)
    stats = json.loads((run_dir(tmp_path) / "stats.json").read_text())
    assert stats["tool_call_retries"] == sum(len(t) - 1 for t in tries.values())


def anthropic_args(server, *extra: str) -> list[str]:
    # backend.api_base ends in /v1 (the stub's base_url): litellm appends /v1/messages itself
    return ["backend=openai", "backend.provider=anthropic", f"backend.api_base={server.base_url}",
            "backend.api_key=sk-ant-stub", f"model.name={CLAUDE}", "progress=false", "sampling.max_tokens=500", *extra]


def test_anthropic_message_batches_carry_tools_in_anthropics_form_and_tool_use_is_read(stub_server, tmp_path):
    server = stub_server(batch_seconds=0.3, api_key="sk-ant-stub", tool_break=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 6)
    cli(tmp_path, *with_tools(f"input={source}", FORCE, "+recipe.stages.generate.schema_retries=1"),
        *anthropic_args(server, "backend.batch=true", "backend.batch_poll_seconds=0.2"))
    params, tries = server.stats()["message_batch_params"], answered(server)
    assert len(params) == sum(len(t) for t in tries.values())
    assert all(without_type(p["tools"]) == anthropic_tools() for p in params)
    assert all(p["tool_choice"]["type"] == "tool" and p["tool_choice"]["name"] == FORCED for p in params)
    assert all(name.startswith(FORCED) for t in tries.values() for name, _, _ in t)
    check_records(tmp_path, tries)


# ---- Anthropic online -----------------------------------------------------------------------------

def test_anthropic_online_sends_anthropic_tools_and_reads_tool_use_blocks(stub_server, tmp_path):
    server = stub_server(api_key="sk-ant-stub", tool_break=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 6)
    cli(tmp_path, *with_tools(f"input={source}", FORCE, "+recipe.stages.generate.schema_retries=1"),
        *anthropic_args(server))
    stats, tries = server.stats(), answered(server)
    sent = stats["anthropic_messages"]
    assert stats["by_path"] == {"/v1/messages": len(sent)}  # Anthropic's endpoint only, every try
    assert len(sent) == sum(len(t) for t in tries.values())
    assert all(without_type(b["tools"]) == anthropic_tools() for b in sent)
    assert all(b["tool_choice"]["type"] == "tool" and b["tool_choice"]["name"] == FORCED for b in sent)
    assert any(len(t) == 2 for t in tries.values()), "a broken call was asked again"
    check_records(tmp_path, tries)


# ---- Ollama ---------------------------------------------------------------------------------------

def ollama_args(server, *extra: str) -> list[str]:
    return ["backend=ollama", f"backend.api_base={server.base_url.removesuffix('/v1')}", "model.name=stub-model",
            "progress=false", *extra]


def test_ollama_sends_tools_and_reads_calls_whose_arguments_are_an_object(stub_server, tmp_path):
    server = stub_server(tool_break=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 6)
    cli(tmp_path, *with_tools(f"input={source}", "+recipe.stages.generate.schema_retries=1"), *ollama_args(server))
    stats, tries = server.stats(), answered(server)
    assert stats["by_path"] == {"/api/chat": len(stats["bodies"])}
    assert len(stats["bodies"]) == sum(len(t) for t in tries.values())
    assert all(b["tools"] == TOOLS and "tool_choice" not in b for b in stats["bodies"])
    check_records(tmp_path, tries)


@pytest.mark.parametrize("choice", ["required", "{type:function,function:{name:get_weather}}"])
def test_tool_choice_on_ollama_is_one_error_line_before_any_request(stub_server, tmp_path, choice):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    result = cli(tmp_path, *with_tools(f"input={source}", f"+recipe.stages.generate.tool_choice={choice}"),
                 *ollama_args(server), check_exit=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "recipe.stages.generate.tool_choice" in errors[0] and "ollama" in errors[0]
    assert "Traceback" not in result.stderr and server.stats()["requests"] == 0
