"""What ``query_model`` and ``query_reward_model`` put on the wire, checked at a real HTTP stub.

The stub records every request body it receives (``/_stats`` ``bodies``), so each parameter's
mapping is checked where it matters: in the JSON the server got, per provider route.
"""

from __future__ import annotations

import pytest

from recipe.clients.formatters import ChatTemplateFormatter, NemotronFormatter
from recipe.clients.event_loop import run_sync
from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient
from recipe.testing.stub_server import StubServer

PROVIDERS = ["openai", "hosted_vllm", "nvidia_nim"]
MESSAGES = [{"role": "user", "content": "Name a colour."}]
SAMPLING_KEYS = ("max_tokens", "n", "seed", "stop", "temperature", "top_k", "top_p")


@pytest.fixture(scope="module")
def stub():
    with StubServer() as server:
        yield server


@pytest.fixture(scope="module")
def stub_ignoring_n():
    with StubServer(ignore_n=True) as server:
        yield server


@pytest.fixture(scope="module")
def reward_stub():
    with StubServer(reward=True) as server:
        yield server


@pytest.fixture(scope="module")
def reward_content_stub():
    with StubServer(reward=True, reward_content_only=True) as server:
        yield server


def client_for(server: StubServer, provider: str, **kwargs) -> LiteLLMClient:
    kwargs.setdefault("num_retries", 0)
    return LiteLLMClient(provider=provider, api_base=server.base_url, api_key="sk-test-wire-0000", **kwargs)


def bodies(server: StubServer) -> list[dict]:
    return server.stats()["bodies"]


def only_body(server: StubServer) -> dict:
    received = bodies(server)
    assert len(received) == 1, received
    return received[0]


# ---- the chat path -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_path_sends_messages_to_chat_completions(stub, provider):
    stub.reset()
    out = client_for(stub, provider).query_model(messages=MESSAGES, model="stub-model")
    assert out == ["echo: Name a colour."]
    stats = stub.stats()
    assert stats["by_path"] == {"/v1/chat/completions": 1}
    assert stats["bodies"][0]["messages"] == MESSAGES
    assert stats["bodies"][0]["model"] == "stub-model"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_sampling_param_reaches_the_body(stub, provider):
    stub.reset()
    client_for(stub, provider).query_model(
        messages=MESSAGES, model="m", max_tokens=7, seed=3, stop=["\n", "END"], temperature=0.5,
        top_k=5, top_p=0.9)
    body = only_body(stub)
    assert body["max_tokens"] == 7
    assert body["seed"] == 3
    assert body["stop"] == ["\n", "END"]
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["top_k"] == 5  # top level, not nested, not dropped
    assert "n" not in body or body["n"] == 1
    assert "extra_body" not in body and "max_retries" not in body and "allowed_openai_params" not in body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_none_params_are_not_sent(stub, provider):
    stub.reset()
    client_for(stub, provider).query_model(
        messages=MESSAGES, model="m", max_tokens=None, n=None, seed=None, stop=None, temperature=None,
        top_k=None, top_p=None)
    body = only_body(stub)
    assert not set(SAMPLING_KEYS) & set(body), body


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stop", ["END", ["END"], ["a", "b", "c"]])
def test_stop_string_or_list_goes_on_the_wire_as_given(stub, provider, stop):
    stub.reset()
    client_for(stub, provider).query_model(messages=MESSAGES, model="m", stop=stop)
    assert only_body(stub)["stop"] == stop


@pytest.mark.parametrize("provider", PROVIDERS)
def test_zero_values_are_sent_not_mistaken_for_none(stub, provider):
    stub.reset()
    client_for(stub, provider).query_model(messages=MESSAGES, model="m", temperature=0.0, seed=0, top_p=0.0)
    body = only_body(stub)
    assert body["temperature"] == 0.0 and body["seed"] == 0 and body["top_p"] == 0.0


# ---- n ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_n_is_sent_and_n_choices_come_back(stub, provider):
    stub.reset()
    out = client_for(stub, provider).query_model(messages=MESSAGES, model="m", n=3, seed=11)
    assert out == ["echo: Name a colour. [seed=11]", "echo: Name a colour. [seed=11] #1",
                   "echo: Name a colour. [seed=11] #2"]
    body = only_body(stub)  # one request: the server honoured n
    assert body["n"] == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_choices_are_topped_up_with_shifted_seeds_in_order(stub_ignoring_n, provider):
    stub_ignoring_n.reset()
    out = client_for(stub_ignoring_n, provider).query_model(messages=MESSAGES, model="m", n=4, seed=100)
    assert out == [f"echo: Name a colour. [seed={100 + i}]" for i in range(4)]
    received = bodies(stub_ignoring_n)
    assert len(received) == 4
    assert received[0]["n"] == 4
    assert sorted(b["seed"] for b in received[1:]) == [101, 102, 103]
    assert all(b.get("n", 1) == 1 for b in received[1:])


def test_top_up_without_seed_sends_no_seed(stub_ignoring_n):
    stub_ignoring_n.reset()
    out = client_for(stub_ignoring_n, "openai").query_model(messages=MESSAGES, model="m", n=3)
    assert out == ["echo: Name a colour."] * 3
    assert all("seed" not in b for b in bodies(stub_ignoring_n))


def test_n_must_be_positive(stub):
    with pytest.raises(ValueError, match="n must be >= 1"):
        client_for(stub, "openai").query_model(messages=MESSAGES, model="m", n=0)


# ---- the formatter path -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("formatter", [ChatTemplateFormatter.smollm2(), NemotronFormatter()],
                         ids=["smollm2", "nemotron"])
def test_formatter_path_sends_the_verbatim_prompt_to_text_completions(stub, provider, formatter):
    stub.reset()
    prompt = formatter.format_conversation(MESSAGES)
    out = client_for(stub, provider).query_model(
        messages=MESSAGES, model="m", conversation_formatter=formatter, max_tokens=9, top_k=2, seed=5,
        stop="\n", temperature=0.3, top_p=0.8)
    assert out == [f"echo: {prompt[-200:]} [seed=5]"]
    stats = stub.stats()
    assert stats["by_path"] == {"/v1/completions": 1}
    body = stats["bodies"][0]
    assert body["prompt"] == prompt
    assert "messages" not in body
    assert (body["max_tokens"], body["top_k"], body["seed"], body["stop"], body["temperature"],
            body["top_p"]) == (9, 2, 5, "\n", 0.3, 0.8)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_formatter_path_with_n_and_none_params(stub, provider):
    stub.reset()
    out = client_for(stub, provider).query_model(
        messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter(), n=2)
    assert len(out) == 2
    body = only_body(stub)
    assert body["n"] == 2
    assert not (set(SAMPLING_KEYS) - {"n"}) & set(body), body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_formatter_path_tops_up_n(stub_ignoring_n, provider):
    stub_ignoring_n.reset()
    out = client_for(stub_ignoring_n, provider).query_model(
        messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter(), n=3, seed=7)
    assert [o.rsplit(" ", 1)[1] for o in out] == ["[seed=7]", "[seed=8]", "[seed=9]"]
    assert stub_ignoring_n.stats()["by_path"] == {"/v1/completions": 3}


def test_nim_formatter_path_uses_nims_endpoint_and_key_from_the_environment(stub, monkeypatch):
    """With no api_base the NIM text route must go to NIM (env or default), never to OpenAI."""
    monkeypatch.setenv("NVIDIA_NIM_API_BASE", stub.base_url)
    monkeypatch.setenv("NVIDIA_NIM_API_KEY", "nvapi-from-env-123456789")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-provider-123456789")
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    client = LiteLLMClient(provider="nvidia_nim", num_retries=0)
    for formatter in (None, NemotronFormatter()):
        stub.reset()
        assert len(client.query_model(messages=MESSAGES, model="m", conversation_formatter=formatter)) == 1
        stats = stub.stats()
        assert stats["auth_headers"] == ["Bearer nvapi-from-env-123456789"]
        assert list(stats["by_path"]) == ["/v1/chat/completions" if formatter is None else "/v1/completions"]


# ---- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
def test_stream_returns_the_same_list_as_the_plain_call(stub, provider, formatted):
    client = client_for(stub, provider)
    kwargs = dict(messages=MESSAGES, model="m", n=3, seed=4, max_tokens=16,
                  conversation_formatter=NemotronFormatter() if formatted else None)
    stub.reset()
    plain = client.query_model(**kwargs)
    streamed = client.query_model(stream=True, **kwargs)
    assert streamed == plain
    assert len(plain) == 3 and len(set(plain)) == 3
    received = bodies(stub)
    assert [b.get("stream", False) for b in received] == [False, True]


def test_stream_tops_up_n(stub_ignoring_n):
    stub_ignoring_n.reset()
    client = client_for(stub_ignoring_n, "openai")
    out = client.query_model(messages=MESSAGES, model="m", n=2, seed=1, stream=True)
    assert out == ["echo: Name a colour. [seed=1]", "echo: Name a colour. [seed=2]"]
    assert all(b["stream"] for b in bodies(stub_ignoring_n))


# ---- the async client shares the core -----------------------------------------------------


def test_async_client_sends_the_same_body(stub):
    async def both():
        client = AsyncLiteLLMClient(provider="nvidia_nim", api_base=stub.base_url, api_key="k-1234", num_retries=0)
        return await client.query_model(messages=MESSAGES, model="m", n=2, top_k=3, stop="x", seed=1)

    stub.reset()
    out = run_sync(both())  # the process's one loop, as the runner uses it
    async_body = only_body(stub)
    stub.reset()
    sync_out = client_for(stub, "nvidia_nim").query_model(messages=MESSAGES, model="m", n=2, top_k=3, stop="x",
                                                          seed=1)
    assert out == sync_out
    assert only_body(stub) == async_body


# ---- reward models ----------------------------------------------------------------------

CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]


def said_on_the_wire(server) -> dict[str, float]:
    """The scores the reward stub sent for its last answer, read from its log of answers
    (``name:value,...``, as nemotron-4-340b-reward's content), not recomputed from its rule."""
    _, content = server.stats()["answers"][-1]
    return {name: float(value) for name, value in (pair.split(":") for pair in content.split(","))}


@pytest.mark.parametrize("provider", ["nvidia_nim", "openai"])
@pytest.mark.parametrize("content_only", [False, True], ids=["logprobs", "content"])
def test_reward_scores_from_logprobs_or_content(reward_stub, reward_content_stub, provider, content_only):
    server = reward_content_stub if content_only else reward_stub
    server.reset()
    scores = client_for(server, provider).query_reward_model(
        messages=CONVERSATION, model="nvidia/nemotron-4-340b-reward")
    said = said_on_the_wire(server)
    assert list(said) == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert scores == said
    assert all(isinstance(v, float) for v in scores.values())
    stats = server.stats()
    assert stats["by_path"] == {"/v1/chat/completions": 1}
    body = stats["bodies"][0]
    assert body["messages"] == CONVERSATION  # the whole conversation, ending with the assistant turn
    assert not set(SAMPLING_KEYS) & set(body)


def test_reward_prefers_logprobs_over_content():
    from types import SimpleNamespace as NS

    from recipe.clients.litellm_client import parse_reward_scores

    response = NS(choices=[NS(logprobs=NS(content=[NS(token="helpfulness", logprob=4.09375),
                                                   NS(token="correctness", logprob=4.03125)]),
                              message=NS(content="helpfulness:1.0,correctness:1.0"))])
    assert parse_reward_scores(response) == {"helpfulness": 4.09375, "correctness": 4.03125}
    as_dict = {"choices": [{"logprobs": None, "message": {"content": "helpfulness:4.09375,correctness:4.03125"}}]}
    assert parse_reward_scores(as_dict) == {"helpfulness": 4.09375, "correctness": 4.03125}


def test_non_reward_answer_raises_value_error_once(stub):
    stub.reset()
    client = client_for(stub, "nvidia_nim", num_retries=3)
    with pytest.raises(ValueError, match="likely not a reward model"):
        client.query_reward_model(messages=CONVERSATION, model="meta/llama3-8b-instruct")
    assert stub.stats()["requests"] == 1  # not retried: asking again cannot help
