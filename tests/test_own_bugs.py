"""Our own bugs are ours (issue 22, section 4): an InternalError naming the exception and its line,
one error record, never retried, never blamed on the server as a malformed response.

Only a failure to decode the server's answer is a :class:`MalformedResponseError`. A bug cannot be
produced by a real run of correct code, so the client's bug is made by one wrong call inside the
client's own reading code (the one function swapped), against the real stub over HTTP.
"""

from __future__ import annotations

import pickle

import pytest

from recipe import errors
from recipe.clients import reply
from recipe.clients.litellm_client import LiteLLMClient
from recipe.stages.base import failure_record
from recipe.storage.run_folder import is_transient
from recipe.testing.stub_server import StubServer

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def stub():
    with StubServer() as server:
        yield server


def test_a_bug_in_the_clients_reading_is_an_internal_error_sent_once(stub, monkeypatch):
    # content_text called with one argument where field() needs two: a TypeError raised in _read
    monkeypatch.setattr(reply, "content_text", reply.field)
    client = LiteLLMClient(provider="openai", api_base=stub.base_url, api_key="k-test", num_retries=3,
                           backoff_base=0.01)
    stub.reset()
    with pytest.raises(errors.InternalError) as raised:
        client.query_model(messages=MESSAGES, model="m")
    message = str(raised.value)
    assert message.startswith("internal error: TypeError: ")
    assert "(at recipe/clients/litellm_client.py:" in message  # the line that raised it
    assert stub.stats()["requests"] == 1  # not retried
    assert client.stats.failures == {"InternalError": 1} and client.stats.retries == 0
    assert not is_transient("InternalError")
    assert pickle.loads(pickle.dumps(raised.value)).args == raised.value.args


def test_a_reply_that_does_not_decode_is_still_malformed_and_retried():
    stub = StubServer(malformed=1.0).start()
    try:
        client = LiteLLMClient(provider="openai", api_base=stub.base_url, api_key="k-test", num_retries=2,
                               backoff_base=0.01)
        with pytest.raises(errors.MalformedResponseError):
            client.query_model(messages=MESSAGES, model="m")
        assert stub.stats()["requests"] == 3
    finally:
        stub.stop()


def test_a_bug_in_a_stage_names_its_place_and_a_users_own_error_keeps_its_class():
    from recipe.stages.records import record_id

    try:
        record_id(None)  # recipe's code given what it never expects: an AttributeError inside recipe
    except AttributeError as exc:
        ours = failure_record("generate", exc, {"prompt": "p"})
    assert ours["_error"]["class"] == "InternalError"
    assert "AttributeError" in ours["_error"]["message"] and "recipe/stages/records.py:" in ours["_error"]["message"]
    try:
        {}["missing"]  # raised here, in the user's (the test's) code, not in recipe's
    except KeyError as exc:
        theirs = failure_record("generate", exc, {"prompt": "p"})
    assert theirs["_error"]["class"] == "KeyError"
