"""The stub OpenAI server must speak the real wire format and misbehave exactly as asked."""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import openai
import pytest

from recipe.testing.stub_server import StubServer, _Schedule

MSG = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def client(s: StubServer, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key=key, max_retries=0, timeout=10)


def raw(s: StubServer, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    """One POST (or GET without body) on a fresh connection; returns status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def echo():
    with StubServer() as s:
        yield s


def test_chat_shape_and_usage(echo):
    r = client(echo).chat.completions.create(model="my-model", messages=MSG)
    assert r.object == "chat.completion" and r.model == "my-model" and r.id and r.created
    assert len(r.choices) == 1
    c = r.choices[0]
    assert (c.index, c.finish_reason, c.message.role) == (0, "stop", "assistant")
    assert c.message.content == "echo: hello there"
    assert r.usage.prompt_tokens == 5  # ceil(19 chars / 4)
    assert r.usage.completion_tokens == 5  # ceil(17 / 4)
    assert r.usage.total_tokens == 10
    status, headers, body = raw(echo, "/v1/chat/completions", {"model": "m", "messages": MSG})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["choices"][0]["logprobs"] is None


def test_text_completion_shape(echo):
    r = client(echo).completions.create(model="m", prompt="x" * 300 + "tail", max_tokens=5)
    assert r.object == "text_completion" and r.model == "m"
    assert r.choices[0].text == "echo: " + ("x" * 300 + "tail")[-200:]
    assert r.choices[0].finish_reason == "stop" and r.choices[0].index == 0
    assert r.usage.prompt_tokens == 76 and r.usage.total_tokens == 76 + r.usage.completion_tokens


def test_models_and_seed(echo):
    status, _, body = raw(echo, "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "stub-model"
    c = client(echo)
    a = c.chat.completions.create(model="m", messages=MSG, seed=7, n=3)
    b = c.chat.completions.create(model="m", messages=MSG, seed=7, n=3)
    contents = [ch.message.content for ch in a.choices]
    assert contents == [ch.message.content for ch in b.choices]
    assert contents == ["echo: hello there [seed=7]", "echo: hello there [seed=7] #1",
                        "echo: hello there [seed=7] #2"]
    assert [ch.index for ch in a.choices] == [0, 1, 2]


def test_ignore_n():
    with StubServer(ignore_n=True, reply="yes") as s:
        r = client(s).chat.completions.create(model="m", messages=MSG, n=4)
        assert [ch.message.content for ch in r.choices] == ["Yes"]


def test_stream_chat_and_text(echo):
    c = client(echo)
    parts: dict[int, str] = {}
    for chunk in c.chat.completions.create(model="m", messages=MSG, n=2, stream=True):
        assert chunk.object == "chat.completion.chunk"
        for ch in chunk.choices:
            parts[ch.index] = parts.get(ch.index, "") + (ch.delta.content or "")
    assert parts == {0: "echo: hello there", 1: "echo: hello there #1"}
    text = "".join(ch.text for chunk in c.completions.create(model="m", prompt="abc", stream=True)
                   for ch in chunk.choices)
    assert text == "echo: abc"
    status, headers, body = raw(echo, "/v1/completions", {"model": "m", "prompt": "q",
                                                          "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-2] == "data: [DONE]" and events[-1] == ""
    assert all("index" in json.loads(e[6:])["choices"][0] for e in events[:-2])


def test_reply_list():
    with StubServer(reply="list") as s:
        r = client(s).chat.completions.create(model="m", messages=MSG)
        lines = r.choices[0].message.content.split("\n")
        assert len(lines) == 5 and lines[0] == "1. item one about hello there"
        assert lines[4].startswith("5. ")


def test_fault_proportions_exact():
    with StubServer(fail_500=0.1) as s:
        for _ in range(100):
            raw(s, "/v1/chat/completions", {"model": "m", "messages": MSG})
        assert s.stats()["status_counts"] == {"200": 90, "500": 10}
    with StubServer(fail_500=0.1, fail_429=0.05, drop=0.02, malformed=0.05) as s:
        malformed = 0
        for _ in range(100):
            try:
                status, _, body = raw(s, "/v1/completions", {"model": "m", "prompt": "p"})
            except (http.client.HTTPException, ConnectionError):
                continue
            if status == 200:
                try:
                    json.loads(body)
                except ValueError:
                    malformed += 1
        st = s.stats()
        assert st["status_counts"] == {"200": 83, "500": 10, "429": 5, "drop": 2}
        assert malformed == 5 and st["requests"] == 100


@pytest.mark.parametrize("fr", [{"a": 0.1}, {"a": 0.1, "b": 0.05, "c": 0.02, "d": 0.29},
                                {"a": 1 / 3, "b": 1 / 7}])
def test_schedule_exact_over_a_period(fr):
    sched = _Schedule(fr)
    counts = Counter(sched.next() for _ in range(sched.period * 2))
    for k, f in fr.items():
        assert counts[k] == round(f * sched.period) * 2


def test_429_retry_after():
    with StubServer(fail_429=1.0, retry_after=0.7) as s:
        with pytest.raises(openai.RateLimitError) as e:
            client(s).chat.completions.create(model="m", messages=MSG)
        assert e.value.response.headers["retry-after"] == "0.7"


def test_throttle_above():
    with StubServer(latency=0.3, throttle_above=3) as s:
        results: list[int] = []

        def one() -> None:
            results.append(raw(s, "/v1/chat/completions", {"model": "m", "messages": MSG})[0])

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts = Counter(results)
        assert counts[429] >= 1 and counts[200] >= 3 and counts[200] + counts[429] == 10
        status, headers, _ = raw(s, "/v1/models")
        st = s.stats()
        assert st["max_in_flight"] >= 4 and st["status_counts"]["429"] == counts[429]


def test_reward_format():
    with StubServer(reward=True) as s:
        convo = MSG + [{"role": "assistant", "content": "Hi! How can I help?"}]
        r = client(s).chat.completions.create(model="nvidia/nemotron-4-340b-reward",
                                              messages=convo)
        assert len(r.choices) == 1
        content = r.choices[0].message.content
        pairs = [pair.split(":") for pair in content.split(",")]
        assert [name for name, _ in pairs] == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
        lp = r.choices[0].logprobs.content
        assert [(t.token, t.logprob) for t in lp] == [(name, float(value)) for name, value in pairs]
        assert s.stats()["answers"] == [["Hi! How can I help?", content]], "the answer is logged with what it scored"
        assert lp[0].bytes is None and lp[0].top_logprobs == []
        other = client(s).chat.completions.create(
            model="m", messages=MSG + [{"role": "assistant", "content": "No."}])
        assert other.choices[0].message.content != content
    with StubServer(reward=True, reward_content_only=True) as s:
        r = client(s).chat.completions.create(model="m", messages=convo)
        assert r.choices[0].logprobs is None
        assert r.choices[0].message.content.startswith("helpfulness:")


def test_api_key_and_context_length():
    with StubServer(api_key="sekret", context_length=100) as s:
        with pytest.raises(openai.AuthenticationError) as e:
            client(s, "wrong").chat.completions.create(model="m", messages=MSG)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        ok = client(s, "sekret")
        assert ok.chat.completions.create(model="m", messages=MSG, max_tokens=90).choices
        with pytest.raises(openai.BadRequestError) as e:
            ok.chat.completions.create(model="m", messages=MSG, max_tokens=96)
        assert "maximum context length is 100 tokens" in e.value.message
        with pytest.raises(openai.BadRequestError):
            ok.completions.create(model="m", prompt="x" * 404)
        st = s.stats()
        assert set(st["auth_headers"]) == {"Bearer wrong", "Bearer sekret"}
        assert st["status_counts"] == {"401": 1, "200": 1, "400": 2}


def test_stats_and_reset():
    with StubServer(latency=0.05) as s:
        t0 = time.time()
        client(s).chat.completions.create(model="m", messages=MSG)
        assert time.time() - t0 >= 0.05
        client(s).completions.create(model="m", prompt="p")
        st = s.stats()
        assert st["requests"] == 2 and st["max_in_flight"] == 1
        assert st["by_path"] == {"/v1/chat/completions": 1, "/v1/completions": 1}
        assert len(st["arrivals"]) == 2 and t0 - 1 < st["arrivals"][0] <= st["arrivals"][1]
        assert st["bodies"][0]["messages"] == MSG and st["bodies"][1]["prompt"] == "p"
        s.reset()
        st = s.stats()
        assert st["requests"] == 0 and st["bodies"] == [] and st["status_counts"] == {}


def test_start_failure_reports_stderr():
    with pytest.raises(RuntimeError, match="invalid choice"):
        StubServer(reply="bogus").start()


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "maybe", "no"]},
                                           "score": {"type": "integer", "minimum": 1, "maximum": 5},
                                           "topic": {"type": "string"}}}


def _schema_answer(s: StubServer, text: str) -> dict:
    r = client(s).chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                          response_format={"type": "json_object", "schema": SCHEMA})
    return json.loads(r.choices[0].message.content)


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_schema_answers_pick_first_or_last_and_a_marker_decides_per_conversation():
    with StubServer(pick="first", echo_chars=8) as s:
        assert _schema_answer(s, "Is this maths?") == {"answer": "yes", "score": 1, "topic": "topic about Is this"}
        assert _schema_answer(s, "Is this maths? <<last>>") == {"answer": "no", "score": 5, "topic": "topic about Is this"}
        answers = s.stats()["answers"]
        assert [m for m, _ in answers] == ["Is this maths?", "Is this maths? <<last>>"]
        assert [json.loads(c)["answer"] for _, c in answers] == ["yes", "no"], "what was sent, as sent"
    with StubServer(pick="last") as s:
        assert _schema_answer(s, "Is this maths? <<first>>")["answer"] == "yes"
        assert _schema_answer(s, "Is this maths?")["score"] == 5


# ---- the one launcher every child server uses (clients/subprocess_server.py) ----------------


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_child_that_exits_while_starting_names_itself_and_its_last_line():
    import sys

    from recipe.errors import LocalServerError
    from recipe.clients.subprocess_server import ServerProcess

    child = ServerProcess([sys.executable, "-c", "import sys; print('loading'); sys.exit('bad model file')"],
                          "the test server")
    with pytest.raises(LocalServerError, match=r"^the test server exited with code 1 while starting: bad model file$"):
        child.start(lambda: False, timeout=30)
    assert child.pid is None  # reaped
    assert child.returncode == 1  # kept: the embedded server's start names the fix by how its child ended


@pytest.mark.parametrize("why", ["timeout", "interrupt"])
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_a_start_that_times_out_or_is_interrupted_leaves_no_child(why):
    import sys

    from recipe.errors import LocalServerError
    from recipe.clients.subprocess_server import ServerProcess

    # the first ignores SIGTERM: stop() must kill it after the grace period
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if why == "timeout" else ""
    child = ServerProcess([sys.executable, "-c", f"import signal, time; {ignore}print('up', flush=True); time.sleep(60)"],
                          "the test server")
    pids = []

    def ready():
        pids.append(child.pid)
        if why == "interrupt" and len(pids) == 3:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt if why == "interrupt" else LocalServerError) as info:
        child.start(ready, timeout=1.5 if why == "timeout" else 30, hint=" (a hint)")
    if why == "timeout":
        assert str(info.value) == "the test server did not answer within 2 s (a hint)"
    assert pids and _gone(pids[0]) and child.pid is None
