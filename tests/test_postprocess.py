"""The recipes' glue and post-processing stages on fixed inputs, malformed ones included."""

from __future__ import annotations

import asyncio

import dask.bag as db
import pytest

from recipe.errors import ConfigError, InputError, ParseError
from recipe.clients.factory import ClientSpec
from recipe.stages import progress
from recipe.stages import AppendSeedsStage, CombineStage, CrossStage, DialogueStage, PreferencePairsStage
from recipe.stages.llm.nemotron_cc import RewritesStage, clean_knowledge_list, diverse_qa_text
from recipe.stages.records import make_id

ROOT = {"_id": "r", "_parent": None}


def run(stage, records):
    """A stage's partition function, as Dask calls it: bad records become error records."""
    return stage.process_partition([dict(r) for r in records])


# --- combine, cross, append ---------------------------------------------------------------

def test_combine_fields_extra_and_switch():
    record = {**ROOT, "macro_topic": "Food", "subtopics": ["Bread", "food", "Cheese"]}
    out = run(CombineStage(fields={"macro_topic": True, "subtopics": True}, output_field="topics", extra=["Wine"]), [record])
    assert out[0]["topics"] == ["Food", "Bread", "Cheese", "Wine"]  # "food" repeats "Food"
    out = run(CombineStage(fields={"macro_topic": False, "subtopics": True}, output_field="topics"), [record])
    assert out[0]["topics"] == ["Bread", "food", "Cheese"]
    out = run(CombineStage(fields=["subtopics"], output_field="t", unique=False, extra=["Bread"]), [record])
    assert out[0]["t"] == ["Bread", "food", "Cheese", "Bread"]
    assert out[0]["_id"] == "r"


def test_combine_malformed():
    out = run(CombineStage(fields=["missing"], output_field="t"), [ROOT])
    assert out[0]["_error"]["class"] == "MissingFieldError" and "missing" in out[0]["_error"]["message"]
    out = run(CombineStage(fields=["xs"], output_field="t"), [{**ROOT, "xs": []}])
    assert out[0]["_error"]["class"] == "InputError"


def test_cross_stage():
    out = run(CrossStage(field="style", values=["normal", {"style": "complex", "extra": 1}]), [{**ROOT, "q": "hi"}])
    assert [(o["style"], o.get("extra")) for o in out] == [("normal", None), ("complex", 1)]
    assert all(o["q"] == "hi" and o["_parent"] == "r" for o in out) and out[0]["_id"] != out[1]["_id"]
    with pytest.raises(ConfigError, match="empty"):
        CrossStage(field="x", values=[])


def test_append_seeds_stage():
    stage = AppendSeedsStage(name="more", field="topic", values=["Knots", {"topic": "Maps", "level": 2}])
    bag = stage(db.from_sequence([{**ROOT, "topic": "Tea"}], npartitions=1))
    records = bag.compute()
    assert [r["topic"] for r in records] == ["Tea", "Knots", "Maps"]
    assert records[2]["level"] == 2 and all(r["_parent"] is None for r in records)
    assert len({r["_id"] for r in records}) == 3
    assert [r["_id"] for r in stage.seed_records()] == [r["_id"] for r in records[1:]]  # stable
    empty = db.from_sequence([ROOT], npartitions=1)
    assert AppendSeedsStage(values=[])(empty) is empty


def test_append_seeds_first_with_no_values_is_an_empty_source():
    """First in a recipe with nothing to add, it is a source of no records (it returned None,
    which the next stage or the write stage then called methods on)."""
    assert AppendSeedsStage(values=[])(None).compute() == []


# --- preference pairs -----------------------------------------------------------------------

def scored(*values, key="helpfulness"):
    return {**ROOT, "prompt": "p", "responses": [f"r{i}" for i in range(len(values))],
            "scores": [{key: v, "other": 0} for v in values]}


def test_preference_pairs():
    out = run(PreferencePairsStage(), [scored(1.0, 3.5, 2.0)])
    assert (out[0]["chosen"], out[0]["rejected"]) == ("r1", "r0")
    assert (out[0]["chosen_score"], out[0]["rejected_score"]) == (3.5, 1.0) and out[0]["_id"] == "r"
    out = run(PreferencePairsStage(score_key="correctness"), [scored(4, 0, key="correctness")])
    assert out[0]["chosen"] == "r0"


def test_preference_ties_are_dropped_and_counted():
    progress.reset()
    assert run(PreferencePairsStage(), [scored(2.0, 2.0), scored(1, 1, 1)]) == []
    assert progress.snapshot()["filtered"] == 2


@pytest.mark.parametrize("record,message", [
    ({**ROOT, "responses": "one", "scores": [{"helpfulness": 1}]}, "at least 2"),
    ({**ROOT, "responses": ["a"], "scores": [{"helpfulness": 1}]}, "at least 2"),
    ({**ROOT, "responses": ["a", "b"], "scores": [{"helpfulness": 1}]}, "one score per response"),
    ({**ROOT, "responses": ["a", "b"]}, "one score per response"),
    ({**ROOT, "responses": ["a", "b"], "scores": [{"helpfulness": 1}, {"coherence": 2}]}, "no number"),
    ({**ROOT, "responses": ["a", "b"], "scores": [{"helpfulness": 1}, {"helpfulness": "high"}]}, "no number"),
    ({**ROOT, "responses": ["a", "b"], "scores": [{"helpfulness": 1}, None]}, "no number"),
])
def test_preference_malformed(record, message):
    out = run(PreferencePairsStage(), [record])
    assert out[0]["_error"]["class"] == "InputError" and message in out[0]["_error"]["message"]
    assert out[0]["record"] == record


# --- Nemotron-CC post-processing ---------------------------------------------------------

QA = "Here are some pairs:\n1. Question: Why?\nAnswer: Because.\n\n**Question:** How?\n**Answer:** Slowly.\n\nQuestion: Who?\nAnswer: Me."


def test_diverse_qa_text_keeps_1_to_max_pairs():
    assert diverse_qa_text("Doc.", QA, 2) == "Doc.\n\nQuestion: Why?\nAnswer: Because.\n\nQuestion: How?\nAnswer: Slowly."
    assert diverse_qa_text("Doc.", QA, 1).count("Question:") == 1
    assert diverse_qa_text("Doc.", QA, 10).count("Question:") == 3


@pytest.mark.parametrize("answer", ["", "No pairs here.", "Answer: orphan", "Question: only a question?",
                                    "Question:\nAnswer:"])
def test_diverse_qa_malformed(answer):
    with pytest.raises(ParseError):
        diverse_qa_text("Doc.", answer, 3)


def test_knowledge_list():
    text = "Here is the list:\n- Owls hunt at night.\n  * Their flight is silent. \n\n2. Mice cannot hear them."
    assert clean_knowledge_list(text) == "Owls hunt at night.\nTheir flight is silent.\nMice cannot hear them."


@pytest.mark.parametrize("answer", ["", "Here is the list:", "   \n\n", "- \n* "])
def test_knowledge_list_malformed(answer):
    with pytest.raises(ParseError):
        clean_knowledge_list(answer)


# --- LLM-backed stages with a scripted client ---------------------------------------------

class ScriptedLLM:
    """Answers by the first keyword found in the last message; records the prompts."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.prompts = answers, []

    async def query_model(self, *, messages, model, conversation_formatter=None, **params):
        text = messages[-1]["content"]
        self.prompts.append(messages)
        for key, answer in self.answers.items():
            if key in text:
                return [answer]
        return ["default answer"]

    async def query_answers(self, **kwargs):
        from recipe.clients.reply import Answer

        return [Answer(text) for text in await self.query_model(**kwargs)]


SPEC = ClientSpec(provider="openai", model="m")
TEMPLATES = {"wikipedia": "WIKI {{ text }}", "diverse_qa": "QA {{ text }}", "distill": "DISTILL {{ text }}",
             "extract_knowledge": "EXTRACT {{ text }}", "knowledge_list": "LIST {{ text }}"}
DOC = {**ROOT, "id": "d1", "text": "Owls hunt at night."}


def rewrite(stage, llm, record=DOC):
    return asyncio.run(stage.aprocess(llm, dict(record)))


def test_rewrites_stage_all_five():
    llm = ScriptedLLM({"WIKI": "  An owl is a bird. ", "QA": QA, "DISTILL": "Owls: nocturnal.",
                       "EXTRACT": "Owls are nocturnal hunters.", "LIST": "Facts:\n- Owls hunt.\n- At night."})
    stage = RewritesStage(client=SPEC, templates=TEMPLATES, system="Be faithful.", max_num_pairs=2)
    out = rewrite(stage, llm)
    assert [o["rewrite"] for o in out] == ["wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list"]
    by = {o["rewrite"]: o for o in out}
    assert by["wikipedia"]["text"] == "An owl is a bird."
    assert by["diverse_qa"]["text"].startswith("Owls hunt at night.\n\nQuestion: Why?")
    assert by["diverse_qa"]["text"].count("Question:") == 2
    assert by["knowledge_list"]["text"] == "Owls hunt.\nAt night."
    for i, o in enumerate(out):
        assert o["id"] == "d1" and o["source_text"] == "Owls hunt at night."
        assert o["_parent"] == "r" and o["_id"] == make_id("r", i)
    assert all(p[0] == {"role": "system", "content": "Be faithful."} for p in llm.prompts)


def test_rewrites_stage_selection_and_custom_output():
    stage = RewritesStage(client=SPEC, templates=TEMPLATES, rewrites="distill", output_field="synthetic",
                          original_field=None)
    out = rewrite(stage, ScriptedLLM({"DISTILL": "Short."}))
    assert len(out) == 1 and out[0]["synthetic"] == "Short." and out[0]["text"] == "Owls hunt at night."
    assert "source_text" not in out[0]


def test_rewrites_stage_parse_failure_is_per_rewrite():
    llm = ScriptedLLM({"QA": "I cannot write questions.", "LIST": "   ", "WIKI": "Fine."})
    stage = RewritesStage(client=SPEC, templates=TEMPLATES, rewrites=["wikipedia", "diverse_qa", "knowledge_list"])
    out = rewrite(stage, llm)
    assert out[0]["text"] == "Fine."
    assert [o["_error"]["class"] for o in out[1:]] == ["ParseError", "ParseError"]
    assert out[1]["record"]["rewrite"] == "diverse_qa" and out[1]["_id"] == make_id("r", 1)
    strict = RewritesStage(client=SPEC, templates=TEMPLATES, rewrites=["diverse_qa"], ignore_conversion_failure=False)
    with pytest.raises(ParseError, match="diverse_qa.*ignore_conversion_failure"):
        rewrite(strict, llm)


def test_rewrites_stage_malformed_config_and_record():
    with pytest.raises(ConfigError, match="no template"):
        RewritesStage(templates=TEMPLATES, rewrites=["poem"])
    with pytest.raises(ConfigError, match="empty"):
        RewritesStage(templates=TEMPLATES, rewrites=[])
    with pytest.raises(ConfigError, match="max_num_pairs"):
        RewritesStage(templates=TEMPLATES, max_num_pairs=0)
    with pytest.raises(InputError, match="text"):
        rewrite(RewritesStage(client=SPEC, templates=TEMPLATES), ScriptedLLM({}), {**ROOT, "body": "x"})
    out = rewrite(RewritesStage(client=SPEC, templates={"distill": "{{ missing }}"}, rewrites=["distill"]),
                  ScriptedLLM({}))
    assert out[0]["_error"]["class"] == "InputError"  # a template field the record lacks


USER_TURN = "{{ history }} next message ({{ style }})"


def test_dialogue_reads_style_per_record():
    llm = ScriptedLLM({"next message": "And why?"})
    stage = DialogueStage(client=SPEC, n_user_turns=2, user_turn_prompt=USER_TURN,
                          styles={"concise": "that is short and to the point"})
    out = asyncio.run(stage.aprocess(llm, {**ROOT, "openline": "Hi", "style": "concise"}))
    roles = [t["role"] for t in out[0]["conversation"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert out[0]["conversation"][2]["content"] == "And why?"
    assert "(that is short and to the point)" in llm.prompts[1][0]["content"]
    two = DialogueStage(client=SPEC, n_user_turns=1, end_with_user=True, user_turn_prompt=USER_TURN)
    out = asyncio.run(two.aprocess(ScriptedLLM({}), {**ROOT, "openline": "Hi", "style": "a pirate"}))
    assert [t["role"] for t in out[0]["conversation"]] == ["user", "assistant", "user"]
    with pytest.raises(InputError):
        asyncio.run(two.aprocess(ScriptedLLM({}), {**ROOT, "line": "Hi"}))
    with pytest.raises(ParseError, match="empty user turn"):
        asyncio.run(two.aprocess(ScriptedLLM({"next message": "  "}), {**ROOT, "openline": "Hi"}))
