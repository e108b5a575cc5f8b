"""Batches across kills, and what a run costs (issue 21 items 10, 10b, 11; issue 22 §3 pricing, §4).

Nothing paid for twice, nothing paid for uncounted: a batch created as the run is killed is found
by the intent the run recorded and tagged it with; a resumed batch's answers cost the batch price;
``cost_usd`` is the budget's ``spent``. Prices are read from litellm's price map (the provider's),
tokens from the stub's fixed usage and the run's own attempt records.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cli, cli_process, error_rows, outputs, write_prompts

PROMPT, COMPLETION = 1000, 500
N = 40


def _price_map(model: str) -> dict:
    from recipe.clients.litellm_setup import get_litellm

    return get_litellm().model_cost[model]


def batch_price(model: str) -> float:
    """One request's cost at the provider's batch price (litellm's map)."""
    entry = _price_map(model)
    return PROMPT * entry["input_cost_per_token_batches"] + COMPLETION * entry["output_cost_per_token_batches"]


def online_price(model: str, prompt: int = PROMPT, completion: int = COMPLETION) -> float:
    entry = _price_map(model)
    return prompt * entry["input_cost_per_token"] + completion * entry["output_cost_per_token"]


def openai_args(server, source: Path, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            "model.name=gpt-4o", "progress=false", f"input={source}", "sampling.max_tokens=500",
            "dask.partition_size=10", "backend.batch=true", "backend.batch_poll_seconds=0.2", *extra]


CLAUDE = "claude-haiku-4-5"


def anthropic_args(server, source: Path, *extra: str) -> list[str]:
    return ["backend=openai", "backend.provider=anthropic", f"backend.api_base={server.base_url}",
            "backend.api_key=sk-ant-stub", f"model.name={CLAUDE}", "progress=false", f"input={source}",
            "sampling.max_tokens=500", "dask.partition_size=10", "backend.batch=true",
            "backend.batch_poll_seconds=0.2", *extra]


WIRES = {"openai": (openai_args, "gpt-4o", "batches_created"),
         "anthropic": (anthropic_args, CLAUDE, "message_batches_created")}


def run_folder(tmp_path: Path) -> Path:
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return folder


def stats_of(tmp_path: Path) -> dict:
    return json.loads((run_folder(tmp_path) / "stats.json").read_text())


def lines_sent(server, wire: str) -> int:
    stub = server.stats()
    return stub["batch_lines"] if wire == "openai" else len(stub["message_batch_params"])


def kill_when(proc, ready, what: str, timeout: float = 120) -> None:
    """SIGKILL the run (its whole process group) as soon as ``ready()``."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.communicate()


# ---- item 10: a resumed batch costs what its answers cost, at the batch price ---------------------

@pytest.mark.slow  # kills a run and resumes it
def test_cli_batch_killed_while_it_runs_then_resumed_costs_its_answers_at_the_batch_price(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION), batch_seconds=8)
    source = write_prompts(tmp_path / "in.jsonl", N)
    args = openai_args(server, source, "budget.max_usd=10")
    proc = cli_process(tmp_path, *args, start_new_session=True)
    attempt_file = lambda: list((tmp_path / "runs").glob("*/attempts/attempt-001.json"))
    # killed while the batch runs, once the attempt saved its account on the way (its requests sent)
    kill_when(proc, lambda: list((tmp_path / "runs").glob("*/batches/*.json")) and attempt_file()
              and json.loads(attempt_file()[0].read_text()).get("usage", {}).get("requests"),
              "the batch was created and the attempt saved its account")
    assert server.stats()["batches_created"] >= 1
    result = cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = stats_of(tmp_path)
    assert server.stats()["batch_lines"] == N, "nothing was submitted again"
    assert len(outputs(run_folder(tmp_path))) == N
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (N * PROMPT, N * COMPLETION)
    assert stats["cost_usd"] == pytest.approx(N * batch_price("gpt-4o"))
    assert stats["budget"]["spent_usd"] == pytest.approx(stats["cost_usd"])


# ---- item 10b: a batch created as the run is killed is found, not paid for twice -------------------

@pytest.mark.slow  # kills a run and resumes it
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_cli_batch_created_as_the_run_is_killed_is_found_by_its_intent_and_not_submitted_again(
        stub_server, tmp_path, wire):
    make_args, model, created_key = WIRES[wire]
    # the provider creates the batch, then answers only 30 s later: the run is killed in between
    server = stub_server(usage=(PROMPT, COMPLETION), batch_seconds=1, batch_create_delay=30,
                         api_key="sk-ant-stub" if wire == "anthropic" else None)
    source = write_prompts(tmp_path / "in.jsonl", N)
    args = make_args(server, source, "dask.partition_size=40")
    proc = cli_process(tmp_path, *args, start_new_session=True)
    kill_when(proc, lambda: server.stats()[created_key] >= 1, "the provider created a batch")
    assert server.stats()[created_key] == 1 and lines_sent(server, wire) == N
    folder = run_folder(tmp_path)
    assert not list((folder / "batches").glob("*.json")), "killed before the batch's id was known"
    started = time.monotonic()
    result = cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.stats()[created_key] == 1, "the batch the killed run created was found, none created again"
    assert lines_sent(server, wire) == N
    assert time.monotonic() - started < 25, "the rerun never waited on a create call"
    assert sorted(r["prompt"] for r in outputs(folder)) == sorted(f"question {i}" for i in range(N))
    stats = stats_of(tmp_path)
    assert stats["batch"]["found_batches"] == 1 and stats["batch"].get("batches", 0) == 0
    assert stats["cost_usd"] == pytest.approx(N * batch_price(model))
    (record,) = [json.loads(p.read_text()) for p in (folder / "batches").glob("*.json")]
    assert record["found_by_intent"] and not list((folder / "batches" / "intents").glob("*.json"))
    if wire == "openai":  # tagged as the provider shows it: the batch's metadata names the intent
        with urllib.request.urlopen(f"{server.base_url}/batches?limit=100") as response:
            (listed,) = json.loads(response.read())["data"]
        assert listed["id"] == record["id"] and listed["metadata"] == {"recipe_intent": record["intent"]}


# ---- item 11: no litellm tracebacks, the output downloaded once -------------------------------

def test_cli_batch_run_ends_without_tracebacks_and_reads_its_output_file_once(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION), batch_seconds=0.5)
    source = write_prompts(tmp_path / "in.jsonl", 5)
    result = cli(tmp_path, *openai_args(server, source))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "LoggingWorker" not in result.stderr, result.stderr[-3000:]
    stub = server.stats()
    assert stub["batches_created"] == 1 and len(outputs(run_folder(tmp_path))) == 5
    assert stub["by_path"]["/v1/files/content"] == 1, "the batch's output file was downloaded once"


# ---- issue 22 §3: one price for the budget and cost_usd -------------------------------------------

def online_args(server, source: Path, model: str, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            f"model.name={model}", "progress=false", f"input={source}", "sampling.max_tokens=500",
            "dask.partition_size=10", "backend.max_concurrency=1", *extra]


def test_cli_cost_usd_is_the_budgets_spent_on_a_model_litellm_prices(stub_server, tmp_path):
    # Claude through an OpenAI-compatible gateway: litellm's map prices the model by its name
    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 20)
    result = cli(tmp_path, *online_args(server, source, CLAUDE, "budget.max_usd=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = stats_of(tmp_path)
    sent = server.stats()["requests"]
    assert sent == 20 and stats["budget"]["spent_usd"] == pytest.approx(sent * online_price(CLAUDE))
    assert stats["cost_usd"] == pytest.approx(stats["budget"]["spent_usd"])


def test_cli_cost_usd_is_the_budgets_spent_with_model_price_changed_between_attempts(stub_server, tmp_path):
    server = stub_server(usage=(PROMPT, COMPLETION))
    source = write_prompts(tmp_path / "in.jsonl", 20)
    # $2/$4 per million tokens: 1000 * 2e-6 + 500 * 4e-6 = $0.004 a request; $0.03 pays for 7
    first = cli(tmp_path, *online_args(server, source, "stub-model", "model.price.input_per_mtok=2",
                                        "model.price.output_per_mtok=4", "budget.max_usd=0.03"))
    assert first.returncode == 4, first.stderr[-3000:]
    paid_first = server.stats()["requests"]
    # the rerun is billed at $1/$1 (a new price list): the first attempt's answers keep their price
    second = cli(tmp_path, *online_args(server, source, "stub-model", "model.price.input_per_mtok=1",
                                         "model.price.output_per_mtok=1", "budget.max_usd=10"))
    assert second.returncode == 0, second.stderr[-3000:]
    paid_second = server.stats()["requests"] - paid_first
    stats = stats_of(tmp_path)
    expected = paid_first * (PROMPT * 2e-6 + COMPLETION * 4e-6) + paid_second * (PROMPT + COMPLETION) * 1e-6
    assert paid_first and paid_second
    assert stats["cost_usd"] == pytest.approx(expected)
    assert stats["budget"]["spent_usd"] == pytest.approx(expected)


# ---- issue 22 §4: Anthropic's batch API unreachable --------------------------------------------

def test_cli_anthropic_batch_api_unreachable_is_a_connection_error_per_record(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = write_prompts(tmp_path / "in.jsonl", 3)

    class Nowhere:
        base_url = f"http://127.0.0.1:{port}/v1"

    result = cli(tmp_path, *anthropic_args(Nowhere, source, "backend.num_retries=0"))
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = error_rows(run_folder(tmp_path))
    assert [r["_error"]["class"] for r in rows] == ["EndpointConnectionError"] * 3, rows
    assert all("anthropic batch API" in r["_error"]["message"] and "AttributeError" not in r["_error"]["message"]
               for r in rows)


@pytest.mark.slow  # two runs, one against a closed port
def test_cli_anthropic_batch_of_another_client_is_not_taken_for_the_killed_runs_own(tmp_path):
    """Anthropic's batches carry no metadata: a listed batch of the intent's time and size is polled,
    and its results decide. Another client's batch is left alone and the run's lines go out anew."""
    from recipe.testing.stub_server import StubServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    class Nowhere:
        base_url = f"http://127.0.0.1:{port}/v1"

    source = write_prompts(tmp_path / "in.jsonl", 3)
    args = anthropic_args(Nowhere, source, "backend.num_retries=0")
    first = cli(tmp_path, *args)  # the create call never got an answer: whether the batch exists is unknown
    assert first.returncode != 0 and "Traceback" not in first.stderr, first.stderr[-3000:]
    folder = run_folder(tmp_path)
    assert len(list((folder / "batches" / "intents").glob("*.json"))) == 1
    with StubServer(port=port, usage=(PROMPT, COMPLETION), batch_seconds=0.5) as server:
        foreign = json.dumps({"requests": [
            {"custom_id": f"someone-else-{i}", "params": {"model": CLAUDE, "max_tokens": 50,
                                                          "messages": [{"role": "user", "content": f"theirs {i}"}]}}
            for i in range(3)]}).encode()
        request = urllib.request.Request(f"{server.base_url}/messages/batches", data=foreign, method="POST",
                                         headers={"anthropic-version": "2023-06-01", "content-type": "application/json"})
        with urllib.request.urlopen(request) as response:
            theirs = json.loads(response.read())["id"]
        result = cli(tmp_path, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        stub = server.stats()
    assert sorted((r["prompt"], r["response"]) for r in outputs(folder)) == [
        (f"question {i}", f"echo: question {i}") for i in range(3)]
    assert stub["message_batches_created"] == 2, "theirs, then the run's own"
    records = {json.loads(p.read_text())["id"]: json.loads(p.read_text()) for p in (folder / "batches").glob("*.json")}
    assert records[theirs]["status"] == "foreign" and records[theirs]["found_by_intent"]
    (ours,) = [r for bid, r in records.items() if bid != theirs]
    assert ours["status"] == "completed"
    assert stats_of(tmp_path)["batch"]["found_batches"] == 1
