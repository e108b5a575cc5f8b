"""Every failure surfaces as one of the package's own errors: mapped, redacted, picklable, retried."""

from __future__ import annotations

import inspect
import json
import pickle

import httpx
import pytest

from recipe import errors
from recipe.clients.error_mapping import translate
from recipe.clients.formatters import NemotronFormatter
from recipe.clients.litellm_client import LiteLLMClient
from recipe.clients.litellm_setup import get_litellm
from recipe.clients.llamacpp_server import free_port

from conftest import parts

KEY = "sk-supersecret-abcdef123456"
MESSAGES = [{"role": "user", "content": "hello there"}]

ALL_LLM_ERRORS = [errors.LLMError, errors.AuthenticationError, errors.BadRequestError, errors.ContextWindowError,
                  errors.UnsupportedParamError, errors.RateLimitError, errors.RequestTimeoutError, errors.EndpointConnectionError,
                  errors.ServerError, errors.MalformedResponseError]
RETRYABLE = {errors.RateLimitError, errors.RequestTimeoutError, errors.EndpointConnectionError, errors.ServerError,
             errors.MalformedResponseError}


def build_litellm_exception(name: str, message: str, headers: dict | None = None) -> BaseException:
    """Construct litellm's exception ``name`` with whatever its constructor requires."""
    litellm = get_litellm()
    cls = getattr(litellm, name, None) or getattr(litellm.exceptions, name)
    params = inspect.signature(cls.__init__).parameters
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    kwargs = {"message": message, "llm_provider": "openai", "model": "gpt-x"}
    if "response" in params:
        kwargs["response"] = httpx.Response(400, headers=headers or {}, request=request)
    if "request" in params:
        kwargs["request"] = request
    if "headers" in params and headers:
        kwargs["headers"] = headers
    return cls(**{k: v for k, v in kwargs.items() if k in params})


# ---- the mapping, through litellm's own exceptions ---------------------------------------------


def test_rate_limit_retry_after_read_from_headers():
    exc = build_litellm_exception("RateLimitError", "slow down", headers={"retry-after": "7"})
    mapped = translate(exc, provider="openai")
    assert type(mapped) is errors.RateLimitError and mapped.retry_after == 7.0


@pytest.mark.parametrize("exc, expected", [
    (json.JSONDecodeError("Expecting value", "<html>", 0), errors.MalformedResponseError),
    (ConnectionRefusedError(111, "Connection refused"), errors.EndpointConnectionError),
    (TimeoutError("read timed out"), errors.RequestTimeoutError),
    (RuntimeError("something odd"), errors.ServerError),
])
def test_non_litellm_exceptions_map_too(exc, expected):
    assert type(translate(exc, provider="p")) is expected


def test_package_errors_pass_through_unchanged():
    exc = errors.ContextWindowError("too long")
    assert translate(exc, provider="p") is exc


def test_nested_litellm_prefixes_are_stripped_from_the_message():
    exc = build_litellm_exception("ContextWindowExceededError", "This model's maximum context length is 10")
    text = str(translate(exc, provider="openai"))
    assert text.startswith("openai: ") and "maximum context length is 10" in text
    assert "litellm." not in text


# ---- pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LLM_ERRORS)
def test_each_error_class_pickles_to_the_same_class_and_message(cls):
    exc = cls("provider: something failed", 1.5)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc) == "provider: something failed"
    assert back.retry_after == 1.5 and back.retryable == cls.retryable
    assert isinstance(back, errors.LLMError)


@pytest.mark.parametrize("cls", [errors.RecipeError, errors.ConfigError, errors.InputError, errors.ParseError])
def test_other_package_errors_pickle(cls):
    back = pickle.loads(pickle.dumps(cls("bad thing")))
    assert type(back) is cls and str(back) == "bad thing"


def test_redact_removes_key_shapes():
    from recipe.config.secrets import redact

    text = redact(f"Bearer {KEY} api_key=abc123xyz nvapi-ABCDEFGH12345 {KEY}", (KEY,), shapes=True)
    assert KEY not in text and "nvapi-ABCDEFGH12345" not in text and "abc123xyz" not in text


# ---- real errors from the stub -------------------------------------------------------------


def client(server, provider="openai", **kwargs) -> LiteLLMClient:
    kwargs.setdefault("num_retries", 0)
    return LiteLLMClient(provider=provider, api_base=server.base_url, api_key=KEY, backoff_base=0.01, **kwargs)


# What each HTTP status becomes, and whether it is sent again (1 + num_retries requests) or not.
STATUS_CLASSES = [(400, errors.BadRequestError, 1), (401, errors.AuthenticationError, 1),
                  (403, errors.AuthenticationError, 1), (404, errors.ModelNotFoundError, 1),
                  (422, errors.BadRequestError, 1), (429, errors.RateLimitError, 3),
                  (500, errors.ServerError, 3), (502, errors.ServerError, 3), (503, errors.ServerError, 3)]


@pytest.mark.parametrize("provider", ["openai", "nvidia_nim"])
@pytest.mark.parametrize("status, expected, requests", STATUS_CLASSES, ids=[str(s) for s, _, _ in STATUS_CLASSES])
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_each_http_status_becomes_its_class_and_is_retried_only_if_transient(stub_server, provider, status,
                                                                               expected, requests):
    server = stub_server(status=status)
    c = client(server, provider, num_retries=2)
    with pytest.raises(errors.LLMError) as info:
        c.query_model(messages=MESSAGES, model="m")
    assert type(info.value) is expected
    assert f"Refused with status {status}" in str(info.value) and KEY not in str(info.value)
    assert server.stats()["requests"] == requests
    assert c.stats.as_dict()["failures"] == {expected.__name__: 1}
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is expected and str(back) == str(info.value)


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
def test_401_is_authentication_error_without_the_key(stub_server, provider, formatted):
    server = stub_server(api_key="the-right-key-000")
    with pytest.raises(errors.AuthenticationError) as info:
        client(server, provider, num_retries=3).query_model(
            messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter() if formatted else None)
    exc = info.value
    assert "Incorrect API key provided" in str(exc)
    assert KEY not in str(exc) and KEY not in repr(exc)
    data = pickle.dumps(exc)
    assert KEY.encode() not in data
    back = pickle.loads(data)
    assert type(back) is errors.AuthenticationError and str(back) == str(exc)
    assert server.stats()["requests"] == 1  # not retryable
    assert server.stats()["auth_headers"] == [f"Bearer {KEY}"]  # the key was sent, only not leaked


@pytest.mark.parametrize("provider", ["openai", "nvidia_nim"])
def test_429_is_rate_limit_error_with_retry_after(stub_server, provider):
    server = stub_server(fail_429=1.0, retry_after=0.1)
    with pytest.raises(errors.RateLimitError) as info:
        client(server, provider, num_retries=2).query_model(messages=MESSAGES, model="m")
    assert info.value.retry_after == pytest.approx(0.1)
    assert "Rate limit reached" in str(info.value)
    assert server.stats()["requests"] == 3  # 1 + num_retries, no hidden SDK retries
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is errors.RateLimitError and back.retry_after == pytest.approx(0.1)


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
def test_context_length_is_context_window_error_not_retried(stub_server, provider):
    server = stub_server(context_length=20)
    with pytest.raises(errors.ContextWindowError) as info:
        client(server, provider, num_retries=3).query_model(messages=MESSAGES, model="m", max_tokens=100)
    assert "maximum context length is 20" in str(info.value)
    assert isinstance(info.value, errors.BadRequestError)
    assert server.stats()["requests"] == 1


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
@pytest.mark.parametrize("fault, expected", [
    ("fail_500", errors.ServerError), ("drop", errors.EndpointConnectionError), ("malformed", errors.MalformedResponseError)])
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_retryable_faults_are_retried_num_retries_times(stub_server, provider, fault, expected, formatted):
    server = stub_server(**{fault: 1.0})
    c = client(server, provider, num_retries=2)
    with pytest.raises(expected) as info:
        c.query_model(messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter() if formatted else None)
    assert info.value.retryable
    assert server.stats()["requests"] == 3  # exactly 1 + num_retries: no SDK retries underneath
    stats = c.stats.as_dict()
    assert stats["requests"] == 3 and stats["retries"] == 2 and stats["failures"] == {expected.__name__: 1}
    assert type(pickle.loads(pickle.dumps(info.value))) is expected


def test_transient_faults_recover_within_retries(stub_server):
    server = stub_server(fail_500=0.5)  # the stub alternates: ok, 500, ok, 500, ...
    c = client(server, num_retries=1)
    outs = [c.query_model(messages=MESSAGES, model="m") for _ in range(2)]
    assert outs == [["echo: hello there"]] * 2
    assert server.stats()["requests"] == 3  # the second call's 500 was retried once
    stats = c.stats.as_dict()
    assert stats["requests"] == 3 and stats["retries"] == 1 and stats["failures"] == {}


def test_reward_path_is_retried_and_not_multiplied_on_nim(stub_server):
    server = stub_server(fail_500=1.0, reward=True)
    with pytest.raises(errors.ServerError):
        client(server, "nvidia_nim", num_retries=1).query_reward_model(messages=MESSAGES, model="r")
    assert server.stats()["requests"] == 2


def test_timeout_is_timeout_error(stub_server):
    server = stub_server(latency=3.0)
    c = LiteLLMClient(provider="openai", api_base=server.base_url, api_key=KEY, timeout=0.5, num_retries=0)
    with pytest.raises(errors.RequestTimeoutError) as info:
        c.query_model(messages=MESSAGES, model="m")
    assert info.value.retryable


@pytest.mark.parametrize("provider", ["openai", "nvidia_nim", "hosted_vllm"])
def test_closed_port_is_connection_error(provider):
    c = LiteLLMClient(provider=provider, api_base=f"http://127.0.0.1:{free_port()}/v1", api_key=KEY,
                      num_retries=1, backoff_base=0.01)
    with pytest.raises(errors.EndpointConnectionError) as info:
        c.query_model(messages=MESSAGES, model="m")
    assert KEY not in str(info.value)
    assert c.stats.as_dict()["retries"] == 1  # retryable, so retried once


def test_a_reply_cut_short_on_the_litellm_path_is_retried_as_malformed(stub_server):
    """ValueErrors normally pass through (caller mistakes), but a JSON decoding error is a bad reply.
    ollama stays on litellm.acompletion; the lean path's malformed replies are covered above."""
    server = stub_server(malformed=1.0)
    c = LiteLLMClient(provider="ollama", api_base=server.base_url[:-len("/v1")], num_retries=2, backoff_base=0.01)
    with pytest.raises(errors.MalformedResponseError):
        c.query_model(messages=MESSAGES, model="m")
    assert server.stats()["requests"] == 3 and c.stats.as_dict()["retries"] == 2


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim", "ollama", "mistral", "deepseek",
                                      "together_ai"])
def test_top_k_is_not_silently_dropped_on_the_wire(stub_server, provider):
    """top_k is no OpenAI parameter: whatever route litellm takes, the server must receive it."""
    server = stub_server()
    base = server.base_url[:-len("/v1")] if provider == "ollama" else server.base_url
    LiteLLMClient(provider=provider, api_base=base, api_key=KEY, num_retries=0).query_model(
        messages=MESSAGES, model="m", top_k=4)
    [body] = server.stats()["bodies"]
    sent = body.get("options", {}).get("top_k") if provider == "ollama" else body.get("top_k")
    assert sent == 4


def test_a_parameter_litellm_refuses_is_unsupported_param_error_naming_it():
    """Where litellm refuses a parameter before any request, the caller sees our class, not litellm's."""
    exc = build_litellm_exception("UnsupportedParamsError", "some_provider does not support parameters: ['top_k']")
    mapped = translate(exc, provider="some_provider")
    assert type(mapped) is errors.UnsupportedParamError and not mapped.retryable and "top_k" in str(mapped)


def test_records_failed_under_the_former_class_names_are_still_rerun():
    """Error records written before TimeoutError/ConnectionError were renamed keep their class."""
    from recipe.storage.run_folder import is_transient

    assert is_transient("TimeoutError") and is_transient("ConnectionError")
    assert is_transient("RequestTimeoutError") and is_transient("EndpointConnectionError")
    assert not is_transient("ContextWindowError") and not is_transient("NoSuchError")
    assert errors.error_class("TimeoutError") is errors.RequestTimeoutError
    assert not hasattr(errors, "TimeoutError") and not hasattr(errors, "ConnectionError")  # no builtin shadowed


def test_the_context_check_counts_with_the_one_token_estimate(stub_server, tmp_path):
    """~4 characters a token plus 4 a message (clients/tokens.py), the same count the budget
    reserves: 400 characters and max_tokens=6 just fit a context of 110 (100 + 4 + 6); 404 do not
    (101 + 4 + 6) and are refused before any request."""
    import recipe
    from recipe.clients.tokens import estimate_tokens

    assert estimate_tokens([{"role": "user", "content": "x" * 400}]) == 104
    assert estimate_tokens("x" * 401) == 101 and estimate_tokens(None) == 0
    server = stub_server()
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "a" * 400}) + "\n" + json.dumps({"prompt": "b" * 404}) + "\n")
    out = tmp_path / "out"
    recipe.run(recipe.compose(["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k",
                               "model.name=stub-model", "progress=false", f"input={source}", f"output_dir={out}",
                               "model.context_length=110", "sampling.max_tokens=6", "backend.on_truncated=keep"]))
    good, bad = parts(out)
    assert [row["prompt"][0] for row in good] == ["a"]
    assert [(row["_error"]["class"], row["_error"]["message"]) for row in bad] == [
        ("ContextWindowError", "prompt of about 105 tokens plus max_tokens=6 exceeds the model's context of 110 tokens")]
    assert server.stats()["requests"] == 1
