"""The clients against the real llama.cpp server with SmolLM2, plus interface and import guarantees."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from recipe import errors
from recipe.clients.conversation_formatter import ConversationFormatter
from recipe.clients.event_loop import run_sync
from recipe.clients.formatters import ChatTemplateFormatter
from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient
from recipe.clients.llamacpp_server import free_port
from recipe.clients.model_client import AsyncLLMClient, LLMClient

from conftest import error_rows

MODEL = "smollm2"
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


@pytest.fixture(scope="module")
def llama(llama_server):
    return LiteLLMClient(provider="openai", api_base=llama_server.base_url, api_key="none", num_retries=0,
                         timeout=300)


# ---- against llama.cpp -----------------------------------------------------------------------


@pytest.mark.llm
def test_n_gives_n_strings_in_seed_order(llama):
    """llama.cpp ignores n: the client tops up with seed+1, seed+2 and keeps the order."""
    out = llama.query_model(messages=POEM, model=MODEL, n=3, seed=1, temperature=0.8, max_tokens=8)
    assert len(out) == 3 and all(isinstance(o, str) and o for o in out)
    third = llama.query_model(messages=POEM, model=MODEL, seed=3, temperature=0.8, max_tokens=8)
    assert out[2] == third[0]


@pytest.mark.llm
def test_stop_cuts_the_output(llama):
    full = llama.query_model(messages=COUNT, model=MODEL, temperature=0, max_tokens=14)[0]
    assert "4" in full and "5" in full
    for stop in ("4", ["4", "never-seen"]):
        cut = llama.query_model(messages=COUNT, model=MODEL, temperature=0, max_tokens=14, stop=stop)[0]
        assert "4" not in cut and full.startswith(cut) and len(cut) < full.index("4") + 1


@pytest.mark.llm
def test_same_seed_repeats_at_temperature(llama):
    runs = [llama.query_model(messages=POEM, model=MODEL, seed=42, temperature=0.8, max_tokens=10)[0]
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


@pytest.mark.llm
def test_stream_equals_plain_and_formatter_path_matches_chat(llama):
    plain = llama.query_model(messages=POEM, model=MODEL, temperature=0, max_tokens=12)
    streamed = llama.query_model(messages=POEM, model=MODEL, temperature=0, max_tokens=12, stream=True)
    assert streamed == plain and len(plain) == 1 and plain[0]
    # The formatter renders SmolLM2's own chat template, so the raw-prompt route (/v1/completions)
    # produces the same greedy text as the server's chat route.
    formatted = llama.query_model(messages=POEM, model=MODEL, temperature=0, max_tokens=12,
                                  conversation_formatter=ChatTemplateFormatter.smollm2())
    assert formatted == plain
    formatted_stream = llama.query_model(messages=POEM, model=MODEL, temperature=0, max_tokens=12, stream=True,
                                         conversation_formatter=ChatTemplateFormatter.smollm2())
    assert formatted_stream == formatted


@pytest.mark.llm
def test_top_k_reaches_the_server(llama):
    """At temperature 1.5 different seeds diverge, unless top_k=1 makes sampling greedy."""
    def sample(top_k: int, seed: int) -> str:
        return llama.query_model(messages=POEM, model=MODEL, seed=seed, temperature=1.5, top_k=top_k,
                                 max_tokens=8)[0]

    greedy = {sample(1, seed) for seed in (1, 2)}
    wide = {sample(1000, seed) for seed in (1, 2)}
    assert len(greedy) == 1, greedy
    assert len(wide) == 2, wide


@pytest.mark.llm
def test_async_client_20_concurrent_calls(llama_server):
    client = AsyncLiteLLMClient(provider="openai", api_base=llama_server.base_url, api_key="none",
                                num_retries=0, timeout=300, max_concurrency=20)

    async def many() -> list[list[str]]:
        calls = [client.query_model(messages=[{"role": "user", "content": f"Say {i}."}], model=MODEL,
                                    temperature=0, max_tokens=2) for i in range(20)]
        return await asyncio.gather(*calls)

    results = run_sync(many())
    assert len(results) == 20
    assert all(len(r) == 1 and isinstance(r[0], str) for r in results)
    stats = client.stats.as_dict()
    assert stats["requests"] == 20 and stats["failures"] == {}
    assert stats["completion_tokens"] > 0 and MODEL in stats["tokens_by_model"]


def test_closed_port_raises_the_packages_connection_error():
    client = LiteLLMClient(provider="openai", api_base=f"http://127.0.0.1:{free_port()}/v1", api_key="none",
                           num_retries=0)
    with pytest.raises(errors.EndpointConnectionError) as info:
        client.query_model(messages=POEM, model=MODEL, max_tokens=8)
    assert isinstance(info.value, errors.LLMError) and info.value.retryable


# ---- the interface ----------------------------------------------------------------------------

QUERY_MODEL = [("messages", inspect.Parameter.empty), ("model", inspect.Parameter.empty),
               ("conversation_formatter", None), ("max_tokens", None), ("n", 1), ("seed", None), ("stop", None),
               ("stream", False), ("temperature", None), ("top_k", None), ("top_p", None)]
QUERY_REWARD = [("messages", inspect.Parameter.empty), ("model", inspect.Parameter.empty),
                ("conversation_formatter", None)]


def shape(func) -> list[tuple[str, object]]:
    params = list(inspect.signature(func).parameters.values())
    assert params[0].name == "self"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), params
    return [(p.name, p.default) for p in params[1:]]


@pytest.mark.parametrize("cls", [LLMClient, AsyncLLMClient, LiteLLMClient, AsyncLiteLLMClient])
def test_signatures_match_the_spec(cls):
    # The ABCs are the seed's exactly; our clients add response_format after the seed's parameters.
    extra = [("response_format", None)] if cls in (LiteLLMClient, AsyncLiteLLMClient) else []
    assert shape(cls.query_model) == QUERY_MODEL + extra
    assert shape(cls.query_reward_model) == QUERY_REWARD
    is_async = cls in (AsyncLLMClient, AsyncLiteLLMClient)
    assert inspect.iscoroutinefunction(cls.query_model) is is_async
    assert inspect.iscoroutinefunction(cls.query_reward_model) is is_async


def test_abstract_methods_and_hierarchy():
    assert LLMClient.__abstractmethods__ == {"query_model", "query_reward_model"}
    assert AsyncLLMClient.__abstractmethods__ == {"query_model", "query_reward_model"}
    assert issubclass(LiteLLMClient, LLMClient) and issubclass(AsyncLiteLLMClient, AsyncLLMClient)
    formatter = inspect.signature(LLMClient.query_model).parameters["conversation_formatter"]
    assert "ConversationFormatter" in str(formatter.annotation)
    assert issubclass(ChatTemplateFormatter, ConversationFormatter)


def test_sync_and_async_clients_share_the_signature():
    for name in ("query_model", "query_reward_model"):
        assert inspect.signature(getattr(LiteLLMClient, name)) == inspect.signature(getattr(AsyncLiteLLMClient, name))
        assert inspect.signature(getattr(LLMClient, name)) == inspect.signature(getattr(AsyncLLMClient, name))


def test_clients_hide_the_key_and_refuse_pickling():
    import pickle

    client = LiteLLMClient(provider="openai", api_base="http://127.0.0.1:9/v1", api_key="sk-hidden-1234567890")
    assert "sk-hidden" not in repr(client)
    with pytest.raises(TypeError):
        pickle.dumps(client._async)


# ---- import: cheap and offline --------------------------------------------------------------

_OFFLINE_PROBE = textwrap.dedent("""
    import json, os, socket, sys, time

    outside = []
    _getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect

    def _local(host):
        return host in (None, "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            outside.append(("dns", str(host)))
            raise socket.gaierror(socket.EAI_NONAME, "outside network disabled in this test")
        return _getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(host):
            outside.append(("connect", str(address)))
            raise OSError(101, "outside network disabled in this test")
        return _connect(self, address)

    socket.getaddrinfo = guarded_getaddrinfo
    socket.socket.connect = guarded_connect

    import recipe  # noqa: E402
    report = {"litellm_after_import": "litellm" in sys.modules,
              "cost_map_env": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")}
    from recipe.clients.litellm_client import LiteLLMClient
    report["litellm_after_client_module"] = "litellm" in sys.modules
    from recipe.clients.litellm_setup import get_litellm
    began = time.monotonic()
    get_litellm()
    report["litellm_import_seconds"] = time.monotonic() - began
    client = LiteLLMClient(provider="openai", api_base=sys.argv[1], api_key="k-local", num_retries=0)
    report["answer"] = client.query_model(messages=[{"role": "user", "content": "hi"}], model="m", max_tokens=4)
    report["outside"] = outside
    print("REPORT " + json.dumps(report))
""")


def test_import_is_lazy_and_offline(stub_server):
    server = stub_server()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    result = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE, server.base_url], env=env,
                            capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT "):])
    assert report["litellm_after_import"] is False
    assert report["cost_map_env"] == "True"  # set by `import recipe`, inherited by workers
    assert report["litellm_after_client_module"] is False  # litellm loads on first use only
    assert report["answer"] == ["echo: hi"]
    assert report["outside"] == []  # no DNS lookup or connection outside loopback, import included
    assert report["litellm_import_seconds"] < 30  # no fetch-and-retry loop (generous: shared CPUs)


def test_usage_stats_every_field_merges_pickles_and_resets():
    import pickle
    from dataclasses import fields

    from recipe.clients.usage import UsageStats

    a = UsageStats()
    for f in fields(UsageStats):
        if type(f.default) is int:
            setattr(a, f.name, 2)
        elif type(f.default) is float:
            setattr(a, f.name, 1.25)
    a.cache_failed("cache broke")
    a.fail("ServerError")
    a.add_tokens("m", 3, 4)
    a.count_schema("Answer", asked=2, invalid=1)
    a.time_request(0.050, "ok", 120.0)
    a.time_request(0.200, "rate_limited", 185.0)
    a.time_tokens(12)
    a.endpoint("http://a/v1", 0.05)
    a.endpoint("http://a/v1", error="ServerError")
    b = UsageStats()
    b.merge(a)
    b.merge(pickle.loads(pickle.dumps(a)).as_dict())
    merged = b.as_dict()
    timings = merged.pop("timings")
    assert sum(timings["latency_ms"].values()) == 4 and sum(timings["tokens"].values()) == 2
    assert timings["minutes"] == {"120": [2, 0, 0, 0], "180": [0, 2, 0, 0]}  # ok / rate-limited per minute
    from recipe.clients.request_timings import percentile

    assert 47.5 <= percentile(timings["latency_ms"], 50) <= 52.5 and 190 <= percentile(timings["latency_ms"], 99) <= 210
    merged["timings"] = timings
    replicas = merged["replicas"]["http://a/v1"]
    assert (replicas["requests"], replicas["errors"], replicas["errors_by_class"]) == (4, 2, {"ServerError": 2})
    assert sum(replicas["latency"].values()) == 2 and abs(replicas["latency_seconds"] - 0.1) < 1e-9
    assert {k: v for k, v in merged.items() if k not in ("timings", "replicas")} == {
        "requests": 4, "retries": 4, "cache_hits": 4, "rate_limited": 4, "failovers": 4, "schema_retries": 4,
        "schema_failures": 4, "tool_call_retries": 4, "tool_call_failures": 4, "retry_wait_seconds": 2.5,
        "limit_wait_seconds": 2.5, "reasoning_tokens": 4, "estimated_usage": 4, "prompt_tokens": 4 + 6, "completion_tokens": 4 + 8, "cache_errors": 6, "cache_error": "cache broke",
        "failures": {"ServerError": 2}, "tokens_by_model": {"m": [6, 8]},
        "structured_by_schema": {"Answer": {"asked": 4, "invalid": 2}}}
    assert b.reset() == merged
    assert b.as_dict() == UsageStats().as_dict()
    assert b.as_dict()["requests"] == 0 and b.as_dict()["failures"] == {} and b.as_dict()["cache_error"] == ""
    b.count("requests")
    assert UsageStats().as_dict()["requests"] == 0  # reset gave b its own fresh containers and counts


def test_a_client_built_with_nothing_set_takes_the_schemas_defaults():
    from recipe.config.schema import BackendConfig
    from recipe.clients.factory import ClientSpec
    from recipe.clients.limits import LocalLimiter

    schema = BackendConfig()
    client = AsyncLiteLLMClient(provider="openai")
    assert (client.timeout, client.num_retries) == (schema.timeout, schema.num_retries)
    assert client.limiter.pacer.max_concurrency == schema.max_concurrency
    assert LocalLimiter().pacer.max_concurrency == schema.max_concurrency
    assert LiteLLMClient(provider="openai")._async.num_retries == schema.num_retries
    for spec in (ClientSpec(provider="openai", model="m"),
                 ClientSpec.from_config({"backend": {"provider": "openai"}, "model": {"name": "m"}})):
        assert (spec.timeout, spec.num_retries, spec.max_concurrency, spec.batch_poll_seconds) == \
            (schema.timeout, schema.num_retries, schema.max_concurrency, schema.batch_poll_seconds)


def test_a_replaced_context_key_is_one_error_naming_its_replacement():
    from recipe import compose

    with pytest.raises(errors.ConfigError, match=r"backend\.n_ctx: no longer taken; set model\.context_length"):
        compose(["backend.n_ctx=4096"])


@pytest.mark.llm
def test_the_embedded_server_starts_with_model_context_length(tmp_path):
    """model.context_length=256 reaches llama.cpp's n_ctx: a prompt the ~4-characters estimate lets
    through (about 208 tokens with max_tokens) but that tokenizes to hundreds of digit tokens is
    refused by the server itself; under the former fixed n_ctx=2048 it would have been answered."""
    import recipe

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": " ".join("79" * 200)}) + "\n")
    out = tmp_path / "out"
    recipe.run(recipe.compose([f"input={source}", f"output_dir={out}", "model.context_length=256",
                               "sampling.max_tokens=4", "backend.on_truncated=keep", "progress=false"]))
    rows = error_rows(out)
    assert [row["_error"]["class"] for row in rows] == ["ContextWindowError"]
    assert "maximum context length is 256 tokens" in rows[0]["_error"]["message"]


def test_importing_litellm_leaves_the_collector_on_and_its_objects_frozen():
    """The import runs with the collector paused (a quarter of its time was full collections):
    afterwards the collector must be on again, and litellm's objects out of its way (frozen)."""
    code = textwrap.dedent("""
        import gc
        from recipe.clients.litellm_setup import get_litellm
        before = gc.get_freeze_count()
        get_litellm()
        print(gc.isenabled(), gc.get_freeze_count() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    enabled, frozen = out.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 100_000, f"only {frozen} objects frozen: litellm's objects are still scanned"
