"""JudgeStage: rubric scores through structured output, on the stub (exact) and on llama.cpp (range)."""

from __future__ import annotations

import json

import dask.bag as db
import pytest

import recipe
from recipe.errors import ConfigError
from recipe.clients.factory import ClientSpec
from recipe.stages import JudgeStage, PreferencePairsStage

from conftest import outputs

CRITERIA = {"helpfulness": "Does it help?", "correctness": "Is it true?", "clarity": "Is it clear?"}


def stub_spec(server) -> ClientSpec:
    return ClientSpec(provider="openai", model="stub-model", api_base=server.base_url, api_key="k", timeout=10,
                      sampling=(("max_tokens", 64),))


def judgement(value: int, criteria=CRITERIA, low: int = 1, high: int = 5, rationale: bool = False) -> str:
    """A text the stub scores ``value`` on every criterion: with a schema on the wire it answers
    ``low + len(first user message) % (high - low + 1)`` per integer, so with ``prompt="{{ response }}"``
    the length decides. (JSON giving ``value`` too, so the intended score is readable.)
    """
    body = {name: value for name in criteria}
    if rationale:
        body["rationale"] = "short reason"
    text = json.dumps(body)
    while low + len(text) % (high - low + 1) != value:
        text += " "
    return text


def test_exact_scores_aggregate_and_threshold_on_the_stub(stub_server):
    server = stub_server()
    values = [3, 2, 5, 1]
    records = [{"_id": f"r{i}", "prompt": "q", "response": judgement(v)} for i, v in enumerate(values)]
    stage = JudgeStage(client=stub_spec(server), criteria=CRITERIA, prompt="{{ response }}", min_score=3)
    rows = stage(db.from_sequence(records, npartitions=2)).compute(scheduler="threads")
    assert [(r["_id"], r["scores"]) for r in rows] == [
        ("r0", {"helpfulness": 3.0, "correctness": 3.0, "clarity": 3.0, "aggregate": 3.0}),
        ("r2", {"helpfulness": 5.0, "correctness": 5.0, "clarity": 5.0, "aggregate": 5.0})]


def test_schema_is_one_integer_per_criterion_within_the_scale():
    schema = JudgeStage(criteria=CRITERIA, scale=[0, 10], rationale_field="why").schema()
    assert schema["required"] == [*CRITERIA, "rationale"] and schema["additionalProperties"] is False
    assert schema["properties"]["clarity"] == {"type": "integer", "minimum": 0, "maximum": 10}
    assert schema["properties"]["rationale"]["type"] == "string"


def test_judged_list_feeds_preference_pairs_like_a_reward_model(stub_server):
    server = stub_server()
    one = {"helpfulness": "Does it help?"}
    record = {"_id": "p", "prompt": "q", "responses": [judgement(v, one, rationale=True) for v in (5, 2, 3)]}
    judge = JudgeStage(client=stub_spec(server), criteria=one, prompt="{{ response }}",
                       response_field="responses", rationale_field="why")
    rows = PreferencePairsStage(score_key="aggregate")(judge(db.from_sequence([record]))).compute(scheduler="sync")
    responses = record["responses"]
    assert [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in rows] == \
        [(responses[0], responses[1], 5.0, 2.0)]
    assert rows[0]["scores"] == [{"helpfulness": h, "aggregate": h} for h in (5.0, 2.0, 3.0)]
    assert len(rows[0]["why"]) == 3 and all(isinstance(w, str) and w for w in rows[0]["why"])


def test_schema_on_the_wire_and_answers_that_never_validate_become_schema_errors(stub_server):
    server = stub_server(schema_break=1.0)  # every answer breaks the schema
    records = [{"_id": "bad", "prompt": "q", "response": "a"}]
    rows = JudgeStage(client=stub_spec(server), criteria=CRITERIA, prompt="{{ response }}",
                      schema_retries=1)(db.from_sequence(records)).compute(scheduler="sync")
    assert rows[0]["_error"]["stage"] == "judge" and rows[0]["_error"]["class"] == "SchemaError"
    bodies = server.stats()["bodies"]
    assert len(bodies) == 2  # the first try and one retry
    wire = bodies[0]["response_format"]["json_schema"]["schema"]
    assert wire["required"] == list(CRITERIA) and wire["properties"]["correctness"]["maximum"] == 5


def test_bad_rubrics_are_config_errors():
    with pytest.raises(ConfigError, match="criteria"):
        JudgeStage(criteria={})
    with pytest.raises(ConfigError, match="scale"):
        JudgeStage(criteria=CRITERIA, scale=[5, 1])
    with pytest.raises(ConfigError, match="reserved"):
        JudgeStage(criteria={"aggregate": "x"})
    with pytest.raises(ConfigError, match="outside the scale"):
        JudgeStage(criteria=CRITERIA, min_score=9)
    with pytest.raises(ConfigError, match="aggregate must be"):
        JudgeStage(criteria=CRITERIA, aggregate="median")
    with pytest.raises(ConfigError, match="mode must be"):
        JudgeStage(criteria=CRITERIA, mode="reward")
    with pytest.raises(ConfigError, match="need mode judge"):
        JudgeStage(criteria=CRITERIA, mode="reward_model", min_score=3)


@pytest.mark.llm
def test_scores_in_range_and_valid_on_the_real_model(llama_server):
    spec = ClientSpec(provider="openai", model="smollm2", api_base=llama_server.base_url, api_key="none",
                      structured_output="llamacpp", sampling=(("temperature", 0.0), ("max_tokens", 96)))
    records = [{"_id": "a", "prompt": "What is 2 + 2?", "response": "2 + 2 = 4."},
               {"_id": "b", "prompt": "Name a colour.", "response": "Blue."}]
    rows = JudgeStage(client=spec, criteria=CRITERIA, scale=[1, 5])(db.from_sequence(records)).compute(scheduler="threads")
    assert [r.get("_error") for r in rows] == [None, None], rows  # valid under the schema (decoding is constrained)
    assert [r["_id"] for r in rows] == ["a", "b"]
    for row in rows:
        scores = row["scores"]
        assert list(scores) == [*CRITERIA, "aggregate"]
        assert all(float(s).is_integer() and 1 <= s <= 5 for name, s in scores.items() if name != "aggregate")
        assert scores["aggregate"] == pytest.approx(sum(scores[c] for c in CRITERIA) / 3, abs=1e-6)


def test_judged_qa_recipe_runs_on_the_stub(stub_server, tmp_path):
    server = stub_server()
    source = tmp_path / "q.jsonl"
    values = [4, 2, 3]
    source.write_text("".join(json.dumps({"prompt": judgement(v)}) + "\n" for v in values))
    # the answer stage asks for a schema-free text: the stub echoes the question, which the judge scores
    cfg = recipe.compose(["recipe=judged_qa", f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=k", "model.name=stub-model", f"output_dir={tmp_path / 'out'}",
                          "progress=false", "recipe.templates.judge='{{ prompt }}'"])
    summary = recipe.run(cfg)
    rows = outputs(tmp_path / "out")
    assert sorted(r["scores"]["aggregate"] for r in rows) == [3.0, 4.0]  # min_score 3 drops the 2
    assert all(r["response"].startswith("echo: ") for r in rows)
    assert summary.stats["filtered"] == 1
