"""``backend.fallbacks`` (issue 26 §3): a record the run's model cannot answer is answered by the next model.

Two real stub servers on 127.0.0.1, runs through the CLI; what each model answered is read off
the stubs (their request counts and the prompts they were sent) and off the run folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl, write_prompts

FALLBACK_KEY = "fb-Kq7Wm2Zr9Tx4Nc8Vb3"  # the fallback's key: only ever in the CLI's environment
ENV = {"FALLBACK_KEY": FALLBACK_KEY}


def fallback(server, model: str = "big-model", **extra) -> str:
    """The override naming ``server`` as the one fallback, its key from the environment."""
    fields = {"model": model, "api_base": f'"{server.base_url}"', "api_key": "${oc.env:FALLBACK_KEY}", **extra}
    return "backend.fallbacks=[{" + ",".join(f"{k}:{v}" for k, v in fields.items()) + "}]"


def run_folder(result) -> Path:
    return Path(next(line for line in result.stdout.splitlines()
                     if line.startswith("output: ")).removeprefix("output: "))


def prompts_sent(server) -> list[str]:
    """The user prompt of each request the stub logged (its last 200 bodies)."""
    return [body["messages"][-1]["content"] for body in server.stats()["bodies"]]


def report_top_values(folder: Path, name: str) -> dict[str, int]:
    """The top values of the field card called ``name`` in the run's report.html."""
    html = (folder / "report.html").read_text()
    cards = re.findall(r"<div class=field id='field-\d+'><h3>(.*?)</h3>(.*?)(?=<div class=field|</div></section>)", html, re.S)
    (card,) = [body for title, body in cards if title == name]
    return {text: int(count) for text, count in re.findall(r"<td class=val>(.*?)</td><td>(\d+)</td>", card)}


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_overlong_prompts_fail_on_the_primary_and_are_answered_by_the_fallback(stub_server, tmp_path):
    primary = stub_server(context_length=64)  # refuses what does not fit, as OpenAI does (a 400)
    big = stub_server(api_key=FALLBACK_KEY)
    rows = [{"prompt": ("long " * 100 + str(i)) if i % 3 == 0 else f"short {i}"} for i in range(30)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, *stub_overrides(primary, f"input={source}", "sampling.max_tokens=8",
                                           "dask.partition_size=10", fallback(big)), env=ENV, check_exit=0)
    out = run_folder(result)
    records = outputs(out)
    assert not error_rows(out)
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in rows), "each record once"
    refused = primary.stats()["status_counts"].get("400", 0)
    overlong = [r["prompt"] for r in rows if len(r["prompt"]) > 400]
    assert refused == len(overlong) == 10, primary.stats()["status_counts"]
    assert big.stats()["requests"] == len(overlong)  # the fallback answered those, and only those
    assert sorted(prompts_sent(big)) == sorted(overlong)
    assert sorted(r["prompt"] for r in records if r["_model"] == "big-model") == sorted(overlong)
    assert {r["_model"] for r in records if r["prompt"] not in overlong} == {"stub-model"}
    # the report profiles _model as any field: how many records each model answered
    assert report_top_values(out, "_model") == {"big-model": len(overlong), "stub-model": 30 - len(overlong)}
    # the fallback's key came from the environment, went on the wire, and was written nowhere
    assert big.stats()["auth_headers"] == [f"Bearer {FALLBACK_KEY}"]
    assert files_holding(tmp_path, FALLBACK_KEY) == []


def test_a_dead_primary_opens_the_breaker_and_the_fallback_answers_every_record_once(stub_server, tmp_path):
    primary = stub_server()
    dead_url = primary.base_url
    primary.stop()  # nothing listens there any more: every connection is refused
    big = stub_server(api_key=FALLBACK_KEY)
    source = write_prompts(tmp_path / "in.jsonl", 40)
    args = [o if not o.startswith("backend.api_base=") else f"backend.api_base={dead_url}"
            for o in stub_overrides(big, f"input={source}", "dask.partition_size=10", "backend.max_concurrency=4",
                                    "backend.num_retries=1", fallback(big))]
    result = cli(tmp_path, *args, env=ENV, check_exit=0)
    out = run_folder(result)
    records = outputs(out)
    assert not error_rows(out)
    assert sorted(r["prompt"] for r in records) == sorted(f"question {i}" for i in range(40)), "each record once"
    assert {r["_model"] for r in records} == {"big-model"}
    assert big.stats()["requests"] == 40
    stats = json.loads((out / "stats.json").read_text())
    # the breaker opened after the first few refused attempts: the rest never tried the dead primary
    assert stats["request_failures_by_class"].get("EndpointConnectionError", 0) < 10, stats


def test_a_model_the_primary_does_not_have_is_answered_by_the_fallback(stub_server, tmp_path):
    primary = stub_server(models="another-model")  # 404 model_not_found for stub-model
    big = stub_server(api_key=FALLBACK_KEY)
    source = write_prompts(tmp_path / "in.jsonl", 30)
    result = cli(tmp_path, *stub_overrides(primary, f"input={source}", "backend.max_concurrency=4", fallback(big)),
                 env=ENV, check_exit=0)
    out = run_folder(result)
    records = outputs(out)
    assert not error_rows(out) and len(records) == 30
    assert {r["_model"] for r in records} == {"big-model"} and big.stats()["requests"] == 30
    assert primary.stats()["status_counts"] == {"404": primary.stats()["requests"]}
    assert primary.stats()["requests"] < 10, "the breaker stops sending to a primary without the model"


def test_a_content_filter_on_the_primary_is_answered_by_the_fallback(stub_server, tmp_path):
    primary = stub_server(finish_reason="content_filter")
    big = stub_server(api_key=FALLBACK_KEY)
    source = write_prompts(tmp_path / "in.jsonl", 12)
    result = cli(tmp_path, *stub_overrides(primary, f"input={source}", fallback(big)), env=ENV, check_exit=0)
    records = outputs(run_folder(result))
    assert len(records) == 12 and {r["_model"] for r in records} == {"big-model"}
    # a verdict on each record, not on the endpoint: every record asked the primary first
    assert primary.stats()["requests"] == big.stats()["requests"] == 12


def test_each_model_is_priced_and_cached_apart(stub_server, tmp_path):
    usage_a, usage_b = (100, 20), (300, 50)  # tokens each stub reports per answer
    primary = stub_server(usage=usage_a)
    big = stub_server(api_key=FALLBACK_KEY, usage=usage_b)
    rows = [{"prompt": ("long " * 100 + str(i)) if i % 4 == 0 else f"short {i}"} for i in range(24)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = stub_overrides(primary, f"input={source}", "sampling.max_tokens=8", "model.context_length=64",
                          "model.price.input_per_mtok=1", "model.price.output_per_mtok=2", "budget.max_usd=50",
                          fallback(big, price="{input_per_mtok:10,output_per_mtok:30}"))
    first = cli(tmp_path, *args, f"output_dir={tmp_path / 'first'}", env=ENV, check_exit=0)
    stats = json.loads((run_folder(first) / "stats.json").read_text())
    sent_a, sent_b = primary.stats()["requests"], big.stats()["requests"]
    assert sent_a and sent_b and sent_a + sent_b == 24
    expected = sent_a * (usage_a[0] * 1e-6 + usage_a[1] * 2e-6) + sent_b * (usage_b[0] * 10e-6 + usage_b[1] * 30e-6)
    assert abs(stats["cost_usd"] - expected) < 1e-9, (stats["cost_usd"], expected)
    assert abs(stats["budget"]["spent_usd"] - stats["cost_usd"]) < 1e-9
    first_models = {r["prompt"]: r["_model"] for r in outputs(run_folder(first))}
    assert sorted(first_models.values()).count("big-model") == sent_b

    primary.reset()
    big.reset()
    again = cli(tmp_path, *args, f"output_dir={tmp_path / 'again'}", env=ENV, check_exit=0)
    assert primary.stats()["requests"] == big.stats()["requests"] == 0, "both models' answers came from the cache"
    again_stats = json.loads((run_folder(again) / "stats.json").read_text())
    assert again_stats["cache_hits"] == 24 and again_stats["cost_usd"] == 0
    assert {r["prompt"]: r["_model"] for r in outputs(run_folder(again))} == first_models


def test_a_bad_fallback_entry_is_one_error_line(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    for bad, needle in (("backend.fallbacks=[{provider:openai}]", "backend.fallbacks[0].model"),
                        ("backend.fallbacks=[{model:m,provider:no-such-provider}]", "backend.fallbacks[0].provider"),
                        ("backend.fallbacks=[{model:m,colour:red}]", "backend.fallbacks[0].colour"),
                        ("backend.fallbacks=big-model", "backend.fallbacks")):
        result = cli(tmp_path, *stub_overrides(server, f"input={source}", bad))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
        assert "Traceback" not in result.stderr
    assert server.stats()["requests"] == 0


def test_the_breaker_opens_on_a_dead_primary_and_a_probe_brings_it_back(stub_server, monkeypatch):
    """Records one by one on a dead primary, no retries: the first failures are the records' own
    errors, then the breaker opens and the fallback answers; once the primary is back, a probe after
    the back-off finds it and it answers again."""
    import time

    from recipe import errors
    from recipe.clients import fallbacks
    from recipe.clients.event_loop import run_sync
    from recipe.clients.litellm_client import AsyncLiteLLMClient

    monkeypatch.setattr(fallbacks, "BACKOFF_SECONDS", 15.0)  # (a stub starts in seconds on a loaded machine)
    primary = stub_server()
    port = primary.port
    primary.stop()
    big = stub_server()
    head = AsyncLiteLLMClient(provider="openai", api_base=f"http://127.0.0.1:{port}/v1", api_key="k", num_retries=0)
    tail = AsyncLiteLLMClient(provider="openai", api_base=big.base_url, api_key="k", num_retries=0)
    chain = fallbacks.FallbackClient([fallbacks.Link("stub-model", head), fallbacks.Link("big-model", tail)])

    async def ask(i: int) -> str | None:
        noted = fallbacks.noting()
        await chain.query_answers(messages=[{"role": "user", "content": f"q{i}"}], model="stub-model")
        return fallbacks.answered_by(noted)

    failed = 0
    while True:  # until the breaker opens, each record keeps its own error
        try:
            first = run_sync(ask(failed))
            break
        except errors.EndpointConnectionError:
            failed += 1
        assert failed < 10, "the breaker never opened"
    assert 0 < failed and chain.breaker.is_open and first == "big-model"  # the record that opened it
    answered = [run_sync(ask(i)) for i in range(5)]
    assert answered == ["big-model"] * 5 and big.stats()["requests"] == 6
    revived = stub_server(port=port)  # the primary is back where it was
    assert run_sync(ask(99)) == "big-model", "still within the back-off: not tried"
    assert revived.stats()["requests"] == 0
    time.sleep(max(0.0, chain.breaker.open_until - time.monotonic()) + 0.2)  # the back-off is over
    assert run_sync(ask(100)) == "stub-model"  # the probe: answered, the breaker closes
    assert not chain.breaker.is_open and revived.stats()["requests"] == 1


def test_fallbacks_on_a_two_worker_cluster(stub_server, tmp_path, two_workers):
    primary = stub_server(context_length=64)
    big = stub_server()  # no key of its own: the entry takes the run's (the same provider)
    rows = [{"prompt": ("long " * 100 + str(i)) if i % 5 == 0 else f"short {i}"} for i in range(40)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, *stub_overrides(primary, f"input={source}", "sampling.max_tokens=8", "dask.partition_size=5",
                                           f"dask.address={two_workers}",
                                           f'backend.fallbacks=[{{model:big-model,api_base:"{big.base_url}"}}]'),
                 check_exit=0)
    records = outputs(run_folder(result))
    overlong = sorted(r["prompt"] for r in rows if len(r["prompt"]) > 400)
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in rows)
    assert sorted(r["prompt"] for r in records if r["_model"] == "big-model") == overlong == sorted(prompts_sent(big))
    assert big.stats()["requests"] == len(overlong) == primary.stats()["status_counts"]["400"]
