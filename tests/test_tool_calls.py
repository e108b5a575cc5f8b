"""Tool calls (issue 24 §2): GenerateStage's ``tools``, each call validated against the declared
tools, invalid ones asked again, then a ToolCallError record; the ``tool_calls`` recipe.

The stub answers a request with tools with one call (``content: null``), its arguments valid under
the tool's parameters; ``tool_break`` breaks an exact fraction of them. What it sent is read from
its ``/_stats`` ``tool_calls`` log: [first user message, name, arguments, broken?].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_prompts
from recipe.clients.event_loop import run_sync
from recipe.clients.litellm_client import AsyncLiteLLMClient

TOOLS = json.loads((Path(__file__).resolve().parents[1] / "recipes" / "data" / "tools.json").read_text())


def run_dir(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return folder


def stats_of(tmp_path: Path) -> dict:
    return json.loads((run_dir(tmp_path) / "stats.json").read_text())


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    return path


def test_a_content_null_answer_with_tool_calls_is_a_success(stub_server):
    server = stub_server()
    client = AsyncLiteLLMClient(provider="openai", api_base=server.base_url, api_key="k", num_retries=0)
    (answer,) = run_sync(client.query_answers(messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                              model="stub-model", tools=TOOLS))
    ((_, name, arguments, _),) = server.stats()["tool_calls"]
    assert answer.tool_calls == [{"name": name, "arguments": arguments}] and answer.text == ""
    assert server.stats()["bodies"][0]["tools"] == TOOLS


def test_generate_with_tools_writes_the_parsed_calls_and_openai_messages(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 3)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server),
        f"+recipe.stages.generate.tools={tools_file(tmp_path)}", "+recipe.stages.generate.messages_field=messages",
        check_exit=0)
    sent = {first: (name, json.loads(arguments)) for first, name, arguments, _ in server.stats()["tool_calls"]}
    rows = outputs(run_dir(tmp_path))
    assert len(rows) == 3
    for row in rows:
        name, arguments = sent[row["prompt"]]
        assert row["response"] == [{"name": name, "arguments": arguments}]
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": row["prompt"]} and assistant["content"] is None
        (call,) = assistant["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] == name
        assert json.loads(call["function"]["arguments"]) == arguments
    stats = stats_of(tmp_path)
    assert stats["tool_call_retries"] == 0 and stats["tool_call_failures"] == 0


@pytest.mark.parametrize("retries", [2, 0])
def test_invalid_calls_are_asked_again_then_become_tool_call_error_records(stub_server, tmp_path, retries):
    server = stub_server(tool_break=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 12)
    cli(tmp_path, "recipe=generate", f"input={source}", *stub_overrides(server),
        f"+recipe.stages.generate.tools={tools_file(tmp_path)}", f"+recipe.stages.generate.schema_retries={retries}")
    log = server.stats()["tool_calls"]
    tries: dict[str, list[bool]] = {}
    for first, _, _, broken in log:
        tries.setdefault(first, []).append(broken)
    failed = {p for p, t in tries.items() if all(t)}
    bad, good = error_rows(run_dir(tmp_path)), outputs(run_dir(tmp_path))
    assert {b["record"]["prompt"] for b in bad} == failed and len(good) == 12 - len(failed)
    assert all(len(tries[p]) == retries + 1 for p in failed)
    assert all(b["_error"]["class"] == "ToolCallError" for b in bad)
    if not retries:
        assert failed == {p for p, t in tries.items() if t[0]} != set(), "one try: every broken call failed"
    for b in bad:  # the raw calls as sent, the last try's
        last = [json.loads(a) for first, _, a, _ in log if first == b["record"]["prompt"]][-1]
        assert json.loads(b["_error"]["raw"])[0]["arguments"] == json.dumps(last)
    stats = stats_of(tmp_path)
    assert stats["tool_call_failures"] == len(failed)
    assert stats["tool_call_retries"] == sum(len(t) - 1 for t in tries.values())
    if retries:
        assert any(len(t) > 1 and not t[-1] for t in tries.values()), "a retried call became valid"


@pytest.mark.parametrize("override, named", [
    ("+recipe.stages.generate.tools=/nonexistent/tools.json", "recipe.stages.generate.tools"),
    ("+recipe.stages.generate.tools=[{function:{name:f,parameters:{type:7}}}]", "parameters is not a JSON Schema"),
    ("+recipe.stages.generate.tool_choice=required", "tool_choice: needs tools"),
])
def test_bad_tools_are_one_error_line(stub_server, tmp_path, override, named):
    server = stub_server()
    result = cli(tmp_path, "recipe=generate", *stub_overrides(server), override, check_exit=2)
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert server.stats()["requests"] == 0


def test_the_tool_calls_recipe_on_the_stub(stub_server, tmp_path):
    server = stub_server(echo_chars=150)  # each request carries its prompt, which names its tool
    cli(tmp_path, "recipe=tool_calls", *stub_overrides(server), check_exit=0)
    rows, log = outputs(run_dir(tmp_path)), server.stats()["tool_calls"]
    assert len(rows) == 8 == len(log)  # 4 tools x 2 requests, each answered with one valid call
    sent = {first: (name, arguments) for first, name, arguments, _ in log}
    for row in rows:
        user, assistant = row["messages"]
        name, arguments = sent[user["content"]]
        assert assistant["tool_calls"][0]["function"] == {"name": name, "arguments": arguments}
        assert row["called"] == [name] == [row["seed_tool"]]  # each request's own tool, forced on the wire
