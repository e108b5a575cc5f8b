"""Structured output: each backend's wire form, the cache key, validation, and the schema stages.

Wire forms are checked in the JSON the stub server received. With a schema in the request, the
stub answers with a value valid under it (strings read ``"<key> about <first 30 characters of the
first user turn>"``, keeping only letters, digits and plain punctuation where the schema has a
pattern; numbers are ``minimum + len(prompt) % (range + 1)``, the range 0..9 unless the schema
gives one; an enum takes item ``len(prompt) % len(enum)``), so stage results can be asserted exactly. ``schema_break`` makes an
exact fraction of those answers invalid, and the stub logs which ones it broke.
"""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from pydantic import BaseModel

import recipe
from recipe.errors import ConfigError, SchemaError
from recipe.clients import structured_output
from recipe.config.list_schema import list_schema
from recipe.cache.sqlite import RequestCache
from recipe.clients.formatters import ChatTemplateFormatter, NemotronFormatter
from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient
from recipe.clients.event_loop import run_sync
from recipe.testing.stub_server import StubServer

from conftest import SRC, cli, parts, write_jsonl

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def stub():
    with StubServer() as server:
        yield server


def _client(server, provider, dialect=None, **kwargs) -> LiteLLMClient:
    base = server.base_url.removesuffix("/v1") if provider == "ollama" else server.base_url
    return LiteLLMClient(provider=provider, api_base=base, api_key="sk-test-structured-0000", num_retries=0,
                         structured_output=dialect, **kwargs)


def _schema_fields(body: dict) -> dict:
    return {k: body[k] for k in ("response_format", "guided_json", "nvext", "format", "grammar") if k in body}


# ---- the wire, per backend ---------------------------------------------------------------------

OPENAI_FORM = {"response_format": {"type": "json_schema",
                                   "json_schema": {"name": "response", "schema": SCHEMA, "strict": False}}}
WIRE = [  # provider, backend.structured_output, formatter route?, path, what the body carries
    ("openai", None, False, "/v1/chat/completions", OPENAI_FORM),
    ("hosted_vllm", None, False, "/v1/chat/completions", OPENAI_FORM),
    ("hosted_vllm", None, True, "/v1/completions", {"guided_json": SCHEMA}),
    ("nvidia_nim", None, False, "/v1/chat/completions", OPENAI_FORM),
    ("ollama", None, False, "/api/chat", {"format": SCHEMA}),
    ("ollama", None, True, "/api/generate", {"format": SCHEMA}),
    ("hosted_vllm", "llamacpp", False, "/v1/chat/completions",
     {"response_format": {"type": "json_object", "schema": SCHEMA}}),
    ("openai", None, True, "/v1/completions", {}),  # OpenAI's text route takes no schema
    ("hosted_vllm", "none", False, "/v1/chat/completions", {}),
]


@pytest.mark.parametrize("provider,dialect,text,path,expected", WIRE,
                         ids=[f"{p}-{d or 'auto'}-{'text' if t else 'chat'}" for p, d, t, _, _ in WIRE])
def test_each_backend_gets_the_schema_in_its_own_form(stub, provider, dialect, text, path, expected):
    stub.reset()
    formatter = NemotronFormatter() if text else None
    out = _client(stub, provider, dialect).query_model(messages=MESSAGES, model="stub-model", max_tokens=9,
                                                      conversation_formatter=formatter, response_format=SCHEMA)
    stats = stub.stats()
    assert stats["by_path"] == {path: 1}
    body = stats["bodies"][0]
    assert _schema_fields(body) == expected
    assert body.get("max_tokens", body.get("options", {}).get("num_predict")) == 9
    if expected and not text:
        assert json.loads(out[0]) == {"answer": "answer about Name a colour."}
    assert structured_output.supports(structured_output.dialect_for(provider, dialect), text) == bool(expected)


def test_llamacpp_raw_text_route_sends_a_gbnf_grammar(stub):
    stub.reset()
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}}, "required": ["colour"]}
    _client(stub, "hosted_vllm", "llamacpp").query_model(
        messages=MESSAGES, model="m", conversation_formatter=ChatTemplateFormatter.smollm2(), response_format=schema)
    body = stub.stats()["bodies"][0]
    assert set(_schema_fields(body)) == {"grammar"}
    grammar = body["grammar"]
    assert "root ::=" in grammar and '"\\"red\\""' in grammar and '"\\"green\\""' in grammar
    from llama_cpp import LlamaGrammar

    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp's own parser accepts it


def test_openai_strict_only_for_closed_schemas(stub):
    closed = {**SCHEMA, "additionalProperties": False}
    bounded = {**closed, "properties": {"answer": {"type": "string", "maxLength": 9}}}  # outside strict's subset
    for schema, strict in ((SCHEMA, False), (closed, True), (bounded, False),
                           (list_schema(2), True)):
        stub.reset()
        _client(stub, "openai").query_model(messages=MESSAGES, model="m", response_format=schema)
        assert stub.stats()["bodies"][0]["response_format"]["json_schema"]["strict"] is strict


class Colour(BaseModel):
    name: str
    hex: str


def test_pydantic_model_and_async_client(stub):
    stub.reset()
    client = AsyncLiteLLMClient(provider="hosted_vllm", api_base=stub.base_url, num_retries=0)
    out = run_sync(client.query_model(messages=MESSAGES, model="m", response_format=Colour))
    sent = stub.stats()["bodies"][0]["response_format"]["json_schema"]
    assert sent["name"] == "Colour" and sent["schema"] == Colour.model_json_schema()
    assert Colour.model_validate_json(out[0]).name == "name about Name a colour."


def test_nim_n_and_schema_pass_the_allowlist(stub):
    stub.reset()
    out = _client(stub, "nvidia_nim").query_model(messages=MESSAGES, model="m", n=2, response_format=SCHEMA)
    body = stub.stats()["bodies"][0]
    assert body["n"] == 2 and "response_format" in body and len(out) == 2


def test_schemas_enter_the_cache_key(stub, tmp_path):
    stub.reset()
    client = _client(stub, "openai", cache=RequestCache(str(tmp_path / "c")))
    other = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    first = client.query_model(messages=MESSAGES, model="m", response_format=SCHEMA)
    assert client.query_model(messages=MESSAGES, model="m", response_format=SCHEMA) == first  # a hit
    assert stub.stats()["requests"] == 1
    assert json.loads(client.query_model(messages=MESSAGES, model="m", response_format=other)[0]) == \
        {"colour": "colour about Name a colour."}
    client.query_model(messages=MESSAGES, model="m")  # no schema: yet another answer
    assert stub.stats()["requests"] == 3


# ---- checking answers ----------------------------------------------------------------------------

def test_parse_accepts_valid_and_refuses_invalid_with_the_raw_text():
    schema = structured_output.as_schema({"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}},
                                          "required": ["n"]})
    assert structured_output.parse('{"n": 2}', schema) == {"n": 2}
    assert structured_output.parse('```json\n{"n": 1}\n```', schema) == {"n": 1}
    for raw, message in (('{"n": 7}', "n: 7 is greater than the maximum of 3"), ('{"m": 1}', "'n' is a required"),
                         ('{"n": ', "not JSON")):
        with pytest.raises(SchemaError, match=message) as info:
            structured_output.parse(raw, schema)
        assert info.value.raw == raw


def test_parse_through_a_pydantic_model():
    schema = structured_output.as_schema(Colour)
    assert structured_output.parse('{"name": "red", "hex": "#f00"}', schema) == {"name": "red", "hex": "#f00"}
    with pytest.raises(SchemaError, match="hex"):
        structured_output.parse('{"name": "red"}', schema)


def test_load_schema_refuses_bad_values():
    with pytest.raises(ConfigError, match="not found"):
        structured_output.load_schema("no_such_module.Model")
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        structured_output.load_schema({"type": "no-such-type"})
    with pytest.raises(ConfigError, match="structured_output"):
        structured_output.dialect_for("openai", "klingon")


# ---- stages on the stub ----------------------------------------------------------------------------

def _hydra(value) -> str:
    """A value in Hydra's override grammar (what a user types: ``{type:object,required:[a]}``)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    return str(value)


def _stub_run(server, tmp_path, *overrides):
    cfg = recipe.compose(overrides=["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=stub",
                                    "model.name=stub-model", "progress=false", *overrides])
    out = tmp_path / "out"
    summary = recipe.run(cfg, output_dir=str(out))
    return summary, *parts(out), json.loads((out / "stats.json").read_text())


NESTED = {"type": "object", "required": ["title", "tags", "level", "meta"],
          "properties": {"title": {"type": "string", "maxLength": 60},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 30},
                                  "minItems": 2, "maxItems": 2},
                         "level": {"enum": ["easy", "medium", "hard"]},
                         "meta": {"type": "object", "required": ["score"],
                                  "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}}}}}


def test_generate_schema_gives_validated_values_and_lists_for_n(stub_server, tmp_path):
    server = stub_server()
    prompts = ["Tell me about tides.", "Why is the sea salty?"]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    summary, good, bad, stats = _stub_run(server, tmp_path, "recipe=generate", f"input={src}",
                                          f"+recipe.stages.generate.schema={_hydra(NESTED)}",
                                          "+recipe.stages.generate.n=2")
    assert not bad and summary.records == 2
    answers = server.stats()["answers"]  # (prompt, JSON text) as the stub sent them: the expected values
    assert sorted(prompt for prompt, _ in answers) == sorted(prompts * 2)
    for r in good:
        assert len(r["response"]) == 2
        for value in r["response"]:
            jsonschema.validate(value, NESTED)
        assert r["response"] == [json.loads(content) for prompt, content in answers if prompt == r["prompt"]]
    assert stats["schema_retries"] == 0 and stats["schema_failures"] == 0


@pytest.mark.parametrize("retries", [2, 0])
def test_a_stub_breaking_30_percent_retries_and_writes_nothing_invalid(stub_server, tmp_path, retries):
    server = stub_server(schema_break=0.3)
    prompts = [f"Question number {i:02d}?" for i in range(40)]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    summary, good, bad, stats = _stub_run(server, tmp_path, "recipe=generate", f"input={src}",
                                          f"+recipe.stages.generate.schema={_hydra(NESTED)}",
                                          f"+recipe.stages.generate.schema_retries={retries}")
    log = server.stats()["schema_log"]
    tries: dict[str, list[bool]] = {}
    for prompt, broken in log:
        tries.setdefault(prompt, []).append(broken)
    assert sum(b for _, b in log) == round(0.3 * len(log)), "the stub broke exactly 30%"
    every_try_failed = {p for p, t in tries.items() if all(t)}
    assert {b["record"]["prompt"] for b in bad} == every_try_failed
    assert all(len(tries[p]) == retries + 1 for p in every_try_failed)
    for b in bad:
        assert b["_error"]["class"] == "SchemaError" and b["_error"]["raw"]
        with pytest.raises((jsonschema.ValidationError, ValueError)):
            jsonschema.validate(json.loads(b["_error"]["raw"]), NESTED)
    for r in good:  # every written value is valid and is exactly the stub's valid answer
        jsonschema.validate(r["response"], NESTED)
        assert r["response"]["title"] == f"title about {r['prompt'][:30]}"
    assert len(good) + len(bad) == 40 and summary.failed == len(bad)
    assert stats["schema_failures"] == len(bad)
    assert stats["schema_retries"] == len(log) - 40
    first_broken = sum(t[0] for t in tries.values())
    assert stats["structured_by_schema"]["response"] == {
        "asked": 40, "valid_first": 40 - first_broken, "valid_after_retries": first_broken - len(bad),
        "invalid": len(bad)}
    if retries:
        assert stats["schema_retries"] > 0 and len(bad) < 12  # retries rescued answers
    else:
        assert stats["schema_retries"] == 0 and len(bad) == 12  # 30% of 40, none rescued


def test_open_qa_lists_have_exactly_n_items_on_the_stub(stub_server, tmp_path):
    server = stub_server()
    summary, good, bad, stats = _stub_run(server, tmp_path, "recipe=open_qa", "recipe.n_macro_topics=2",
                                          "recipe.n_subtopics=3", "recipe.n_openlines=1", "recipe.n_revisions=1",
                                          "recipe.combine_topics=false",
                                          "~recipe.stages.dedup_questions",  # the stub's lists repeat
                                          # ...so some prompts repeat too: with the cache on, whether a repeat
                                          # reaches the server depended on timing (14 or 15 requests)
                                          "cache.enabled=false")
    assert not bad
    assert len({r["macro_topic"] for r in good}) == 2 and len(good) == 2 * 3
    for r in good:
        assert len(r["subtopics"]) == 3 and r["topic"] in r["subtopics"]
        start = "Give a numbered list of 3 subtopics"[:30]  # the subtopics prompt, as the stub quotes it
        assert r["subtopics"] == [f"items {i} about {start}" for i in (1, 2, 3)]
    lists = [b["response_format"]["json_schema"]["schema"]["properties"]["items"] for b in server.stats()["bodies"]]
    assert len(lists) == 1 + 2 + 6 + 6 and all(x["minItems"] == x["maxItems"] for x in lists)


def _spec(server, **changes):
    from recipe.clients.factory import ClientSpec

    return ClientSpec(provider="openai", model="stub-model", api_base=server.base_url, api_key="stub", **changes)


def _through(stage, records):
    import dask
    import dask.bag as db

    with dask.config.set(scheduler="sync"):
        return stage(db.from_sequence(records, npartitions=1)).compute()


def test_filter_verdicts_and_judge_scores_are_structured(stub_server):
    from recipe.stages import FilterStage, JudgeStage
    from recipe.stages.templates import render

    server = stub_server()
    topics = [{"topic": t} for t in ("Algebra", "Cooking", "Fractions", "Knots", "Geometry")]
    question = "Is {{ topic }} a mathematics topic?"
    kept = _through(FilterStage(name="is_math", client=_spec(server), prompt=question, verdict_field="is_math"), topics)
    said = {prompt: json.loads(content)["answer"] for prompt, content in server.stats()["answers"]}  # off the wire
    assert set(said.values()) == {"yes", "no"}  # both verdicts given: the filter keeps some, drops others
    expected = [t for t in topics if said[render(question, t)] == "yes"]
    assert [r["topic"] for r in kept] == [t["topic"] for t in expected] and all(r["is_math"] == "yes" for r in kept)
    assert all(b["response_format"]["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["yes", "no"]
               for b in server.stats()["bodies"])

    rows = [{"prompt": "Why is the sky blue?", "response": r} for r in ("Light scatters.", "No idea", "Rayleigh.")]
    judge = JudgeStage(name="score", client=_spec(server), criteria={"helpfulness": "Does it answer?"}, scale=[0, 4])
    scored = _through(judge, rows)
    prompts = {r["response"]: render(judge.prompt, {**r, "criteria": judge.criteria, "scale": judge.scale,
                                                    "rationale": False}) for r in rows}
    said = {prompt: json.loads(content) for prompt, content in server.stats()["answers"]}  # verdicts and scores
    assert len({said[prompts[r["response"]]]["helpfulness"] for r in rows}) > 1  # each score is the record's own
    for r in scored:
        score = float(said[prompts[r["response"]]]["helpfulness"])
        assert r["scores"] == {"helpfulness": score, "aggregate": score}
    score = server.stats()["bodies"][-1]["response_format"]["json_schema"]["schema"]["properties"]["helpfulness"]
    assert score == {"type": "integer", "minimum": 0, "maximum": 4}


def test_parse_list_structured_converts_text_where_supported_and_reads_it_elsewhere(stub_server):
    from recipe.stages import ParseListStage

    server = stub_server()
    record = {"response": "Here you go:\n1. Tides\n2. Waves\n3. Currents"}
    out = _through(ParseListStage(name="l", client=_spec(server), mode="structured", n=2), [record])
    start = "The following text contains a list"[:30].strip()  # the conversion prompt, as the stub quotes it
    assert out[0]["response"] == [f"items 1 about {start}", f"items 2 about {start}"]
    items = server.stats()["bodies"][0]["response_format"]["json_schema"]["schema"]["properties"]["items"]
    assert items["minItems"] == items["maxItems"] == 2
    server.reset()
    plain = _through(ParseListStage(name="l", client=_spec(server, structured_output="none"), mode="structured", n=2),
                     [record])
    assert plain[0]["response"] == ["Tides", "Waves"] and server.stats()["requests"] == 0
    given = _through(ParseListStage(name="l", client=_spec(server), mode="yaml", n=2),
                     [{"response": {"items": ["1. Tides", "**Waves**"]}}])
    assert given[0]["response"] == ["Tides", "Waves"] and server.stats()["requests"] == 0


def test_cli_inline_schema_and_user_pydantic_model(stub_server, tmp_path):
    server = stub_server()
    src = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is a tide?"}])
    pkg = tmp_path / "userpkg"
    (pkg / "my_models").mkdir(parents=True)
    (pkg / "my_models" / "__init__.py").write_text("")
    (pkg / "my_models" / "qa.py").write_text(
        "from pydantic import BaseModel\n\nclass Question(BaseModel):\n    question: str\n    difficulty: int\n")
    env = {"PYTHONPATH": os.pathsep.join([SRC, str(pkg)])}
    common = ["recipe=generate", f"input={src}", "backend=openai",
              f"backend.api_base={server.base_url}", "backend.api_key=stub", "model.name=stub-model", "progress=false"]
    for name, schema, fields in (
            ("inline", "{type:object,properties:{answer:{type:string}},required:[answer]}", {"answer": str}),
            ("model", "my_models.qa.Question", {"question": str, "difficulty": int})):
        out = tmp_path / name
        cli(tmp_path, *common, f"output_dir={out}", f"+recipe.stages.generate.schema={schema}", env=env, check_exit=0)
        (prompt, content), = server.stats()["answers"][-1:]  # what the stub answered this run, off the wire
        good, bad = parts(out)
        assert not bad and prompt == "What is a tide?" and [r["response"] for r in good] == [json.loads(content)]
        assert {key: type(value) for key, value in good[0]["response"].items()} == fields  # the schema's shape
    done = cli(tmp_path, *common, f"output_dir={tmp_path / 'bad'}", "+recipe.stages.generate.schema=my_models.qa.Nope",
               env=env, check_exit=2)
    assert "error:" in done.stderr and "my_models.qa.Nope" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the real model ----------------------------------------------------------------------------

REAL = {"type": "object", "required": ["name", "colours", "size", "habitat"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 24},
                       "colours": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 12},
                                   "minItems": 1, "maxItems": 2},
                       "size": {"enum": ["small", "medium", "large"]},
                       "habitat": {"type": "object", "required": ["place"], "additionalProperties": False,
                                   "properties": {"place": {"type": "string", "minLength": 1, "maxLength": 16}}}}}


@pytest.mark.llm
def test_llamacpp_concurrent_requests_all_give_valid_objects(llama_server):
    import asyncio

    client = AsyncLiteLLMClient(provider="hosted_vllm", api_base=llama_server.base_url, num_retries=1,
                                structured_output="llamacpp")
    animals = ["cat", "dog", "owl", "frog", "bee", "fox", "eel", "yak"]

    async def ask(animal: str) -> str:
        messages = [{"role": "user", "content": f"Describe a {animal} as JSON: name, colours, size, habitat."}]
        return (await client.query_model(messages=messages, model="smollm2", max_tokens=120, temperature=0.7,
                                          seed=7, response_format=REAL))[0]

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(ask(a) for a in animals))

    answers = run_sync(all_of_them())
    schema = structured_output.as_schema(REAL)
    values = [structured_output.parse(a, schema) for a in answers]  # raises on any invalid answer
    assert len(values) == len(animals) and all(v["size"] in ("small", "medium", "large") for v in values)


@pytest.mark.llm
def test_llamacpp_grammar_on_the_raw_text_route(llama_server):
    client = LiteLLMClient(provider="hosted_vllm", api_base=llama_server.base_url, num_retries=1,
                           structured_output="llamacpp")
    schema = structured_output.as_schema(structured_output.verdict_schema())
    for question in ("Is the sky blue?", "Is fire cold?"):
        out = client.query_model(messages=[{"role": "user", "content": question}], model="smollm2", max_tokens=16,
                                 conversation_formatter=ChatTemplateFormatter.smollm2(), response_format=schema)
        assert structured_output.parse(out[0], schema)["answer"] in ("yes", "no")


def test_without_constrained_decoding_the_schema_goes_in_the_prompt_and_is_still_enforced(stub_server):
    from recipe.stages import GenerateStage

    server = stub_server()  # no schema on the wire: it echoes the prompt, which is no JSON
    stage = GenerateStage(name="gen", client=_spec(server, structured_output="none"), schema=SCHEMA, schema_retries=2)
    out = _through(stage, [{"prompt": "Name a colour."}])
    bodies = server.stats()["bodies"]
    assert len(bodies) == 3 and not any(_schema_fields(b) for b in bodies)
    first = bodies[0]["messages"][0]["content"]
    assert first.startswith("Name a colour.") and json.dumps(SCHEMA) in first
    assert bodies[2]["messages"][-1]["content"].startswith("That answer is not valid (not JSON")
    assert len(out) == 1 and out[0]["_error"]["class"] == "SchemaError" and out[0]["_error"]["raw"].startswith("echo:")


@pytest.mark.parametrize("name", ["open_qa", "writing", "closed_qa", "math", "python"])
def test_list_mode_switches_every_list_of_a_recipe(name):
    from recipe.config.compose import resolved_container
    from recipe.clients.factory import ClientSpec
    from recipe.engine.runner import build_stages
    from recipe.stages import GenerateStage, ParseListStage

    def stages(*overrides):
        data = resolved_container(recipe.compose(overrides=[f"recipe={name}", *overrides]))
        return build_stages(data["recipe"], ClientSpec.from_config(data), "/nonexistent")

    default = stages()
    makers = {s.input_field: s.n for s in default if isinstance(s, ParseListStage)}
    generated = {s.output_field: s for s in default if isinstance(s, GenerateStage) and s.output_field in makers}
    assert makers and set(generated) == set(makers)
    for field, stage in generated.items():
        items = stage.schema["properties"]["items"]
        assert items["minItems"] == items["maxItems"] == makers[field]
    assert all(s.mode == "structured" for s in default if isinstance(s, ParseListStage))
    nemo = stages("recipe.list_mode=yaml")
    assert all(s.schema is None for s in nemo if isinstance(s, GenerateStage))
    assert all(s.mode == "yaml" for s in nemo if isinstance(s, ParseListStage))
