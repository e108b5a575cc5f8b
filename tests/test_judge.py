"""JudgeStage: rubric scores through structured output, on the stub (exact) and on llama.cpp (range)."""

from __future__ import annotations

import json

import dask.bag as db
import pytest

import recipe
from recipe.errors import ConfigError
from recipe.factory import ClientSpec
from recipe.stages import JudgeStage, PreferencePairsStage

CRITERIA = {"helpfulness": "Does it help?", "correctness": "Is it true?", "clarity": "Is it clear?"}


def stub_spec(server) -> ClientSpec:
    return ClientSpec(provider="openai", model="stub-model", api_base=server.base_url, api_key="k", timeout=10,
                      sampling=(("max_tokens", 64),))


def stub_score(text: str, low: int = 1, high: int = 5) -> int:
    """The stub answers a schema with integers ``low + len(first user message) % (high - low + 1)``."""
    return low + len(text) % (high - low + 1)


def test_exact_scores_aggregate_and_threshold_on_the_stub(stub_server):
    server = stub_server()
    answers = ["ok", "good answer", "abcd", "abcde"]  # the stub scores 3, 2, 5 and 1
    assert [stub_score(a) for a in answers] == [3, 2, 5, 1]
    records = [{"_id": f"r{i}", "prompt": "q", "response": a} for i, a in enumerate(answers)]
    stage = JudgeStage(client=stub_spec(server), criteria=CRITERIA, prompt="{{ response }}", min_score=3)
    rows = stage(db.from_sequence(records, npartitions=2)).compute(scheduler="threads")
    assert [(r["_id"], r["scores"]) for r in rows] == [
        ("r0", {"helpfulness": 3.0, "correctness": 3.0, "clarity": 3.0, "aggregate": 3.0}),
        ("r2", {"helpfulness": 5.0, "correctness": 5.0, "clarity": 5.0, "aggregate": 5.0})]
    body = server.stats()["bodies"][0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == list(CRITERIA) and schema["additionalProperties"] is False
    assert schema["properties"]["clarity"] == {"type": "integer", "minimum": 1, "maximum": 5}


def test_judged_list_feeds_preference_pairs_like_a_reward_model(stub_server):
    server = stub_server()
    record = {"_id": "p", "prompt": "q", "responses": ["abcd", "good answer", "ok"]}  # scored 5, 2, 3
    judge = JudgeStage(client=stub_spec(server), criteria={"helpfulness": "Does it help?"}, prompt="{{ response }}",
                       response_field="responses", rationale_field="why")
    rows = PreferencePairsStage(score_key="aggregate")(judge(db.from_sequence([record]))).compute(scheduler="sync")
    assert [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in rows] == \
        [("abcd", "good answer", 5.0, 2.0)]
    assert rows[0]["scores"] == [{"helpfulness": h, "aggregate": h} for h in (5.0, 2.0, 3.0)]
    assert [w.startswith("rationale about") for w in rows[0]["why"]] == [True, True, True]


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


@pytest.mark.llm
def test_scores_in_range_and_valid_on_the_real_model(llama_server):
    spec = ClientSpec(provider="openai", model="smollm2", api_base=llama_server.base_url, api_key="none",
                      sampling=(("temperature", 0.0), ("max_tokens", 48)))
    records = [{"_id": "a", "prompt": "What is 2 + 2?", "response": "2 + 2 = 4."},
               {"_id": "b", "prompt": "Name a colour.", "response": "Blue."}]
    rows = JudgeStage(client=spec, criteria=CRITERIA, scale=[1, 5])(db.from_sequence(records)).compute(scheduler="threads")
    assert [r["_id"] for r in rows] == ["a", "b"], rows  # valid under the schema, or an error record
    for row in rows:
        scores = row["scores"]
        assert list(scores) == [*CRITERIA, "aggregate"]
        assert all(float(s).is_integer() and 1 <= s <= 5 for name, s in scores.items() if name != "aggregate")
        assert scores["aggregate"] == pytest.approx(sum(scores[c] for c in CRITERIA) / 3, abs=1e-6)


def test_judged_qa_recipe_runs_on_the_stub(stub_server, tmp_path):
    server = stub_server()
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["ab", "abcd", "abcdefg"]))
    cfg = recipe.compose(["recipe=judged_qa", f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=k", "model.name=stub-model", f"output_dir={tmp_path / 'out'}",
                          "progress=false", "recipe.stages.judge.prompt='{{ response }}'"])
    summary = recipe.run(cfg)
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("part-*.jsonl")) for line in f.read_text().splitlines()]
    # answers are "echo: <question>"; the judge scores 1 + len(answer) % 5 per criterion; min_score 3
    expected = {p: stub_score(f"echo: {p}") for p in ["ab", "abcd", "abcdefg"]}
    assert sorted((r["prompt"], r["scores"]["aggregate"]) for r in rows) == \
        sorted((p, float(s)) for p, s in expected.items() if s >= 3)
    assert summary.stats["filtered"] == sum(1 for s in expected.values() if s < 3)
