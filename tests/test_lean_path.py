"""Which providers take the lean HTTP path and which keep ``litellm.acompletion``, checked on the wire.

The lean path sends its own User-Agent; the stub records every User-Agent it sees, so the path a
request took is read where it matters: at the server.
"""

from __future__ import annotations

import pytest

import recipe
from recipe.clients.factory import build_client
from recipe.clients.event_loop import run_sync
from recipe.clients.formatters import NemotronFormatter
from recipe.clients import providers
from recipe.clients.lean_http import takes_lean_path
from recipe.clients.litellm_client import AsyncLiteLLMClient

MESSAGES = [{"role": "user", "content": "Name a colour."}]
LEAN_AGENT = "recipe (lean_http; aiohttp)"


@pytest.fixture(scope="module")
def stub():
    from recipe.testing.stub_server import StubServer

    with StubServer() as server:
        yield server


def backend_client(backend: str, base_url: str) -> AsyncLiteLLMClient:
    cfg = recipe.compose([f"backend={backend}", f"backend.api_base={base_url}", "backend.api_key=k-0000",
                          "model.name=m", "cache.enabled=false"])
    return build_client(cfg, asynchronous=True)


@pytest.mark.parametrize("backend", ["openai", "vllm", "llamacpp", "nim"])
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
def test_each_openai_compatible_backend_takes_the_lean_path(stub, backend, formatted):
    client = backend_client(backend, stub.base_url)
    assert client.transport(formatted) == "lean"
    formatter = NemotronFormatter() if formatted else None
    stub.reset()
    out = run_sync(client.query_model(messages=MESSAGES, model="m", conversation_formatter=formatter, seed=2))
    assert out[0].endswith("[seed=2]")
    stats = stub.stats()
    assert stats["user_agents"] == [LEAN_AGENT]
    assert list(stats["by_path"]) == ["/v1/completions" if formatted else "/v1/chat/completions"]


def test_reward_requests_take_the_lean_path_too(stub):
    client = backend_client("nim", stub.base_url)
    stub.reset()
    with pytest.raises(ValueError, match="not a reward model"):  # the echo stub is no reward model
        run_sync(client.query_reward_model(messages=MESSAGES, model="m"))
    assert stub.stats()["user_agents"] == [LEAN_AGENT]


def test_ollama_backend_keeps_litellm():
    client = backend_client("ollama", "http://127.0.0.1:9")
    assert client.transport() == "litellm" and client.transport(formatted=True) == "litellm"


@pytest.mark.parametrize("provider", ["bedrock", "vertex_ai", "anthropic", "ollama", "custom_openai", "azure"])
def test_providers_that_sign_or_have_no_openai_configuration_keep_litellm(provider):
    client = AsyncLiteLLMClient(provider=provider, api_base="http://127.0.0.1:9", api_key="k")
    assert client.transport() == "litellm"
    assert not takes_lean_path(provider)


def test_the_lean_routes_are_exactly_the_openai_compatible_ones():
    lean = {name for name, route in providers.ROUTES.items() if route.lean}
    assert lean == {"openai", "hosted_vllm", "nvidia_nim", "text-completion-openai"}
    assert all(takes_lean_path(name) for name in lean)


def test_a_provider_outside_the_lean_set_really_goes_through_litellm(stub):
    """custom_openai speaks the same wire format but is not on the list: the OpenAI SDK inside litellm sends it."""
    client = AsyncLiteLLMClient(provider="custom_openai", api_base=stub.base_url, api_key="k-0000", num_retries=0)
    stub.reset()
    assert run_sync(client.query_model(messages=MESSAGES, model="m")) == ["echo: Name a colour."]
    agents = stub.stats()["user_agents"]
    assert agents and LEAN_AGENT not in agents
