"""NeMo Curator 0.9's own generators, unchanged, on our clients (issue 24: "NeMo Curator 0.9's
generators still run unchanged on our clients").

Our ``LLMClient``/``AsyncLLMClient`` keep NeMo Curator's interface, so ``NemotronGenerator``,
``AsyncNemotronGenerator`` and ``AsyncNemotronCCGenerator`` must run on them as they are. Here they
do, against the stub server over HTTP: the prompts the stub received must be NeMo Curator's own
templates (its ``prompts`` module), and each answer the generator returns must be what the server
answered to that very request body (the body is sent again to the stub, bare, and its reply read).
The stub answers as a reasoning model with ``reasoning_content``, so the generators must also get
answers without the reasoning, as the ABC promises.

How NeMo Curator 0.9 is installed: ``pip install --no-deps nemo-curator==0.9.0``. With its
dependencies it is not installable beside us: it pins ``numpy<2`` and ``datasets<4`` and pulls
torch with the CUDA wheels (peft), spacy, presidio, fasttext, ... (``pip install --dry-run``). Its
``nemo_curator/__init__.py`` imports the whole curator, and ``nemo_curator/synthetic/__init__.py``
imports ``nemotron_cc`` (transformers). The generator modules themselves need only yaml, tqdm,
dask, pandas and openai, which we have. So :func:`generator_modules` stands bare packages in for
those two ``__init__`` files and imports NeMo Curator's generator modules from the installed
package, byte for byte; the sync ``NemotronCCGenerator`` (the one module that needs transformers)
is left out, its async twin is in.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import types
import urllib.request
from pathlib import Path

import pytest

from recipe.clients import model_client as ours
from recipe.clients.event_loop import run_sync
from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient
from recipe.testing.stub_server import StubServer

INSTALL = "pip install --no-deps nemo-curator==0.9.0"  # the README set-up command 1 ends with it
GENERATOR_MODULES = ("prompts", "nemotron", "async_nemotron", "async_nemotron_cc", "mixtral")
MODEL = "nemo-compat-model"


@pytest.fixture(scope="module")
def nemo():
    """NeMo Curator 0.9's generator modules, imported from the installed package unchanged; a
    namespace of ``prompts``, ``nemotron``, ... and ``model_client``. Removed from ``sys.modules``
    afterwards, so nothing else in this process sees the bare packages."""
    spec = importlib.util.find_spec("nemo_curator")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"NeMo Curator 0.9 is not installed: {INSTALL} (see this module's docstring)")
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {k: v for k, v in sys.modules.items() if k == "nemo_curator" or k.startswith("nemo_curator.")}
    for name, folder in (("nemo_curator", root), ("nemo_curator.synthetic", root / "synthetic")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    try:
        from importlib.metadata import version

        assert version("nemo-curator") == "0.9.0", f"NeMo Curator {version('nemo-curator')}; this checks 0.9.0"
        found = {m: importlib.import_module(f"nemo_curator.synthetic.{m}") for m in GENERATOR_MODULES}
        found["model_client"] = importlib.import_module("nemo_curator.services.model_client")
        for module in found.values():  # from the installed package's files, not from anything of ours
            assert Path(module.__file__).is_relative_to(root), module.__file__
        yield types.SimpleNamespace(**found)
    finally:
        for k in [k for k in sys.modules if k == "nemo_curator" or k.startswith("nemo_curator.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def stub():
    """A stub that answers as a reasoning model does, the trace in ``message.reasoning_content``."""
    with StubServer(think="reasoning_content") as server:
        yield server


@pytest.fixture
def wire(stub):
    stub.reset()
    return stub


def sent(server: StubServer) -> list[dict]:
    """The request bodies the server received, in order."""
    return server.stats()["bodies"]


def answered(server: StubServer, body: dict) -> list[dict]:
    """What the server answers to ``body`` sent again as it is, bare (no client of ours): its choices."""
    path = "/chat/completions" if "messages" in body else "/completions"
    request = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as r:
        return json.loads(r.read())["choices"]


def texts_of(server: StubServer, body: dict) -> list[str]:
    """The answers' texts, after checking each choice carried a reasoning trace apart from them."""
    choices = answered(server, body)
    for choice in choices:
        if "message" in choice:
            trace = choice["message"].get("reasoning_content")
            assert trace and trace not in choice["message"]["content"], choice
    return [c["message"]["content"] if "message" in c else c["text"] for c in choices]


def user_turn(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def assert_no_reasoning(server: StubServer, answers: list[str]) -> None:
    """None of the traces the server sent reached an answer a generator returned."""
    traces = [trace for _, trace in server.stats()["reasoning"]]
    assert traces, "the stub answered as a reasoning model"
    assert not [a for a in answers for t in traces if t in a]


def test_our_clients_take_every_argument_of_nemo_curators_interface(nemo):
    """Every parameter of NeMo Curator's abstract methods, keyword-only with its default, is ours too
    (a generator's ``model_kwargs`` may pass any of them)."""
    for name in ("LLMClient", "AsyncLLMClient"):
        theirs_cls = getattr(nemo.model_client, name)
        for concrete in (getattr(ours, name), LiteLLMClient if name == "LLMClient" else AsyncLiteLLMClient):
            for method in ("query_model", "query_reward_model"):
                theirs = inspect.signature(getattr(theirs_cls, method)).parameters
                mine = inspect.signature(getattr(concrete, method)).parameters
                for param in theirs.values():
                    if param.name == "self":
                        continue
                    assert param.name in mine, (concrete, method, param.name)
                    assert mine[param.name].kind is inspect.Parameter.KEYWORD_ONLY, (concrete, method, param.name)
                    assert mine[param.name].default == param.default, (concrete, method, param.name)
                assert inspect.iscoroutinefunction(getattr(concrete, method)) == name.startswith("Async")


def test_nemotron_generator_runs_unchanged_on_our_sync_client(nemo, wire):
    prompts = nemo.prompts
    client = LiteLLMClient(provider="openai", api_base=wire.base_url, api_key="sk-nemo-compat", num_retries=0)
    generator = nemo.nemotron.NemotronGenerator(client)

    topics = generator.generate_macro_topics(n_macro_topics=3, model=MODEL)
    subtopics = generator.generate_subtopics(macro_topic="Rivers", n_subtopics=2, model=MODEL,
                                             model_kwargs={"n": 2, "temperature": 0.5, "max_tokens": 64, "seed": 7})
    questions = generator.generate_open_qa_from_topic(topic="Tides", n_openlines=2, model=MODEL)
    mixtral = generator.generate_math_problem(topic="Fractions", n_openlines=1, model=MODEL,
                                              model_kwargs={"conversation_formatter": nemo.mixtral.Mixtral8x7BFormatter()})
    dialogue = generator.generate_dialogue(openline="Why is the sea salty?", user_model=MODEL, assistant_model=MODEL,
                                           n_user_turns=2)
    bodies = sent(wire)
    assert len(bodies) == 7, "one request per generator call, three for a two-turn dialogue"

    # NeMo Curator's own templates, as its generator filled them, are what went over the wire
    assert bodies[0]["messages"] == user_turn(prompts.DEFAULT_MACRO_TOPICS_PROMPT_TEMPLATE.format(n_macro_topics=3))
    assert bodies[1]["messages"] == user_turn(prompts.DEFAULT_SUBTOPICS_PROMPT_TEMPLATE.format(
        macro_topic="Rivers", n_subtopics=2))
    assert {k: bodies[1].get(k) for k in ("n", "temperature", "max_tokens", "seed")} == \
        {"n": 2, "temperature": 0.5, "max_tokens": 64, "seed": 7}, "the generator's model_kwargs reached the wire"
    assert bodies[2]["messages"] == user_turn(prompts.DEFAULT_OPEN_QA_FROM_TOPICS_PROMPT_TEMPLATE.format(
        topic="Tides", n_openlines=2))
    # a NeMo Curator conversation formatter sends its own text to the completions endpoint
    assert bodies[3]["prompt"] == nemo.mixtral.Mixtral8x7BFormatter.format_conversation(user_turn(
        prompts.MATH_PROBLEM_GENERAL_PROMPT_TEMPLATE.format(topic="Fractions", n_openlines=1)))
    assert "messages" not in bodies[3]

    # each answer is the server's answer to that request, the reasoning kept out of it
    assert topics == texts_of(wire, bodies[0])
    assert subtopics == texts_of(wire, bodies[1]) and len(subtopics) == 2
    assert questions == texts_of(wire, bodies[2])
    assert mixtral == texts_of(wire, bodies[3])

    # the dialogue: the assistant, NeMo Curator's user impersonation prompt over the history, the assistant again
    first, impersonated, second = (texts_of(wire, b)[0] for b in bodies[4:7])
    assert bodies[4]["messages"] == user_turn("Why is the sea salty?")
    history = f"User: Why is the sea salty?Assistant: {first}"
    assert bodies[5]["messages"] == user_turn(prompts.DIALOGUE_NORMAL_USER_TURN_PROMPT_TEMPLATE.format(
        conversation_history=history))
    assert dialogue == [{"role": "user", "content": "Why is the sea salty?"}, {"role": "assistant", "content": first},
                        {"role": "user", "content": impersonated}, {"role": "assistant", "content": second}]
    assert bodies[6]["messages"] == dialogue[:3]
    assert_no_reasoning(wire, [*topics, *subtopics, *questions, *mixtral, first, impersonated, second])


def test_async_generators_run_unchanged_on_our_async_client(nemo, wire):
    prompts = nemo.prompts
    client = AsyncLiteLLMClient(provider="openai", api_base=wire.base_url, api_key="sk-nemo-compat", num_retries=0)
    generator = nemo.async_nemotron.AsyncNemotronGenerator(
        client, logger=logging.LoggerAdapter(logging.getLogger("nemo-compat"), {}), max_concurrent_requests=2)
    cc = nemo.async_nemotron_cc.AsyncNemotronCCGenerator(client)
    document = "The Amazon carries more water than any other river."

    async def together():
        return await asyncio.gather(
            generator.generate_macro_topics(n_macro_topics=4, model=MODEL),
            generator.generate_writing_tasks(topic="Glaciers", text_material_type="poem", n_openlines=2, model=MODEL),
            generator.generate_python_problem(topic="Sorting", n_openlines=1, model=MODEL),
            cc.rewrite_to_wikipedia_style(document=document, model=MODEL),
            generator.generate_dialogue(openline="What is a delta?", user_model=MODEL, assistant_model=MODEL,
                                        n_user_turns=2))

    topics, writing, python, wiki, dialogue = run_sync(together())
    bodies = sent(wire)
    assert len(bodies) == 7
    by_messages = {json.dumps(b["messages"]): b for b in bodies}  # concurrent: the order of arrival is free

    def body_for(messages: list[dict]) -> dict:
        assert json.dumps(messages) in by_messages, f"not sent: {messages}"
        return by_messages[json.dumps(messages)]

    assert topics == texts_of(wire, body_for(user_turn(prompts.DEFAULT_MACRO_TOPICS_PROMPT_TEMPLATE.format(
        n_macro_topics=4))))
    assert writing == texts_of(wire, body_for(user_turn(prompts.DEFAULT_WRITING_TASK_PROMPT_TEMPLATE.format(
        topic="Glaciers", text_material_type="poem", n_openlines=2))))
    assert python == texts_of(wire, body_for(user_turn(prompts.PYTHON_PROBLEM_BEGINNER_PROMPT_TEMPLATE.format(
        topic="Sorting", n_openlines=1, language="Python"))))
    assert wiki == texts_of(wire, body_for([
        {"role": "system", "content": prompts.NEMOTRON_CC_SYSTEM_PROMPT},
        {"role": "user", "content": prompts.WIKIPEDIA_REPHRASING_PROMPT_TEMPLATE.format(document=document)}]))
    first = texts_of(wire, body_for(user_turn("What is a delta?")))[0]
    impersonation = user_turn(prompts.DIALOGUE_NORMAL_USER_TURN_PROMPT_TEMPLATE.format(
        conversation_history=f"User: What is a delta?Assistant: {first}"))
    impersonated = texts_of(wire, body_for(impersonation))[0]
    second = texts_of(wire, body_for(dialogue[:3]))[0]
    assert dialogue == [{"role": "user", "content": "What is a delta?"}, {"role": "assistant", "content": first},
                        {"role": "user", "content": impersonated}, {"role": "assistant", "content": second}]
    assert_no_reasoning(wire, [*topics, *writing, *python, *wiki, first, impersonated, second])
