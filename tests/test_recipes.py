"""The recipes in recipes/: each composes, builds its stages, and runs end to end.

The ``llm`` tests run the recipes whose stages meet the real model differently (lists, verdicts,
scores and rewrites parsed from its answers, a dialogue) on the embedded model (SmolLM2-135M on
llama.cpp) with tiny counts; every recipe also runs on the stub, where each count and field is exact. Lists, verdicts and scores are structured output (llama.cpp constrains
decoding to their schemas), so the tests assert exact counts: n items per list, one record per
item, nothing failed; besides lineage back to a read record. The words themselves are not
asserted: a 135M model is too weak for that. The preference recipe also runs against a stub
that answers exactly as NVIDIA's reward model does, where the chosen pair can be checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import recipe
from recipe.config import paths
from recipe.config.compose import resolved_container
from recipe.errors import ConfigError, ParseError
from recipe.clients.factory import ClientSpec
from recipe.engine.runner import build_stages
from recipe.stages import AppendSeedsStage, ReadStage, SampleStage, WriteStage
from recipe.stages.records import make_id

from conftest import parts, write_jsonl

RECIPES = sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))
SMALL = ["sampling.max_tokens=48", "sampling.seed=1", "progress=false"]


def test_recipes_are_discovered():
    assert {"generate", "open_qa", "writing", "closed_qa", "math", "python", "dialogue", "two_turn",
            "nemotron_cc", "preference"} <= set(RECIPES)


def _stages(overrides):
    cfg = recipe.compose(overrides=overrides)
    data = resolved_container(cfg)
    return data, build_stages(data["recipe"], ClientSpec.from_config(data), "/nonexistent/out")


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_recipe_composes_and_builds(name):
    data, stages = _stages([f"recipe={name}"])
    assert data["recipe"]["name"] == name
    assert [s.name for s in stages] == list(data["recipe"]["stages"])
    assert isinstance(stages[0], ReadStage) and isinstance(stages[-1], WriteStage)
    text = (paths.recipes_dir() / f"{name}.yaml").read_text()
    assert text.startswith("#") and f"recipe={name}" in text.split("\nname:")[0], "header shows the command"
    read = stages[0]
    if not read.seeds:  # a recipe that reads input ships a sample (or samples its records), so recipe=NAME alone runs
        if not isinstance(read, SampleStage):
            assert Path(read.path).is_file(), read.path
        records = read(None).compute()
        assert records and not any("_error" in r for r in records)


@pytest.mark.parametrize("name", ["closed_qa", "nemotron_cc"])
def test_sample_documents(name):
    _, stages = _stages([f"recipe={name}"])
    docs = stages[0](None).compute()
    assert 3 <= len(docs) <= 6
    assert len({d["id"] for d in docs}) == len(docs)
    for doc in docs:
        assert 3 <= len(doc["text"].split("\n\n")) <= 4, doc["id"]


def test_overrides_by_stage_and_template_names():
    _, stages = _stages(["recipe=open_qa", "recipe.n_subtopics=4", "recipe.stages.subtopics_list.mode=yaml",
                         "recipe.stages.questions_list.n=7", "recipe.templates.questions='Ask about {{ topic }}'",
                         "recipe.combine_topics=false", "recipe.additional_macro_topics=[Cooking]"])
    by = {s.name: s for s in stages}
    assert by["subtopics_list"].mode == "yaml" and by["subtopics_list"].n == 4
    assert "4 subtopics" in by["subtopics"].prompt
    assert by["questions_list"].n == 7
    assert by["questions"].prompt == "Ask about {{ topic }}"
    assert by["topics"].fields == {"macro_topic": False, "subtopics": True}
    assert by["add_macro_topics"].extra == ["Cooking"]


def test_ignore_conversion_failure_reaches_every_parsing_stage():
    _, stages = _stages(["recipe=math", "recipe.ignore_conversion_failure=false"])
    parsing = [s for s in stages if hasattr(s, "ignore_conversion_failure") and s.name.endswith("_list")]
    assert len(parsing) == 3 and not any(s.ignore_conversion_failure for s in parsing)


def test_python_level_and_bad_level():
    data, stages = _stages(["recipe=python", "recipe.level=advanced"])
    assert stages[0].seeds[0]["level"] == "advanced"
    assert "experienced" in stages[0].seeds[0]["level_description"]
    with pytest.raises(ConfigError):
        _stages(["recipe=python", "recipe.level=wizard"])


def test_nemotron_cc_selection_and_bad_rewrite():
    _, stages = _stages(["recipe=nemotron_cc", "recipe.rewrites=[distill]", "recipe.templates.distill='Short: {{ text }}'"])
    rewrite = stages[1]
    assert rewrite.rewrites == ["distill"] and rewrite.templates["distill"] == "Short: {{ text }}"
    with pytest.raises(ConfigError, match="no template"):
        _stages(["recipe=nemotron_cc", "recipe.rewrites=[poetry]"])


# --- running the recipes -------------------------------------------------------------------

def _roots(stages) -> set[str]:
    """Ids of the records the recipe starts from: read (file or seeds) and appended seeds."""
    ids = {r["_id"] for r in stages[0](None).compute()}
    for stage in stages:
        if isinstance(stage, AppendSeedsStage):
            ids |= {r["_id"] for r in stage.seed_records()}
    return ids


def _check_lineage(records: list[dict], roots: set[str], max_depth: int = 6, width: int = 8) -> None:
    """Each id is a root or ``make_id(parent, i)`` of an id that chains back to a root."""
    wanted = {r["_id"] for r in records} | {r["_parent"] for r in records if r.get("_parent")}
    reachable, layer = set(roots), set(roots)
    for _ in range(max_depth):
        if wanted <= reachable:
            break
        layer = {make_id(parent, i) for parent in layer for i in range(width)}
        reachable |= layer
    for r in records:
        assert r["_id"] in reachable, f"{r['_id']} does not chain back to a read record"
        if r.get("_parent") is None:
            assert r["_id"] in roots
        else:
            assert r["_parent"] in reachable
            assert any(make_id(r["_parent"], i) == r["_id"] for i in range(width)), "_id derives from _parent"


def run_recipe(name: str, server, tmp_path: Path, *overrides: str, out: str = "out"):
    """The recipe on ``server`` into ``tmp_path / out``; the request cache is the test's own, so a
    second run of the same requests (a shorter chain, then the whole) gets the same answers."""
    over = [f"recipe={name}", f"backend.api_base={server.base_url}", "backend.start_local_server=false",
            "backend.on_truncated=keep",  # the 135M model's answers run past SMALL's max_tokens
            *SMALL, *overrides]
    cfg = recipe.compose(overrides=over)
    out = tmp_path / out
    summary = recipe.run(cfg, output_dir=str(out))
    good, bad = parts(out)
    assert summary.records == len(good) and summary.failed == len(bad)
    _, stages = _stages(over)
    _check_lineage(good, _roots(stages))
    _check_lineage([{"_id": b["_id"], "_parent": b["record"].get("_parent")} for b in bad
                    if isinstance(b.get("record"), dict) and b.get("_id")], _roots(stages))
    for b in bad:
        assert b["_error"]["stage"] in cfg.recipe.stages and b["_error"]["class"] and b["_error"]["message"]
    return summary, good, bad


@pytest.mark.llm
def test_generate(llama_server, tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hello."}, {"prompt": "Name a colour."}])
    summary, good, _ = run_recipe("generate", llama_server, tmp_path, f"input={src}")
    assert summary.records == 2 and all(isinstance(r["response"], str) for r in good)


def _removed(summary) -> int:
    """Records the recipe's dedup stage dropped (each record is written, failed, filtered or removed)."""
    return sum(summary.stats["deduplicated"].values())


LISTS = "sampling.max_tokens=160"  # room for a list of 2 items of up to 200 characters


@pytest.mark.llm
def test_open_qa(llama_server, tmp_path):
    summary, good, bad = run_recipe("open_qa", llama_server, tmp_path, LISTS, "recipe.n_macro_topics=1",
                                    "recipe.n_subtopics=2", "recipe.n_openlines=1", "recipe.n_revisions=1")
    # 1 macro topic -> itself + exactly 2 subtopics = 3 topics -> 1 question each (a near-duplicate
    # question is dropped before revision) -> 1 revision each.
    assert summary.failed == 0 and summary.records + _removed(summary) == 3
    assert len({r["macro_topic"] for r in good}) == 1
    for r in good:
        assert len(r["macro_topics"]) == 1 and len(r["subtopics"]) == 2 and len(r["revisions"]) == 1
        assert r["topics"] == [r["macro_topic"], *r["subtopics"]] and r["topic"] in r["topics"]
        assert all(isinstance(x, str) and x.strip() for x in (r["question"], r["revised_question"], *r["subtopics"]))
    assert len({r["topic"] for r in good}) == len(good) == summary.records and {r["topic"] for r in good} <= set(good[0]["topics"])


@pytest.mark.llm
@pytest.mark.parametrize("name,flag", [("math", "is_math")])  # python: the same chain (exact on the stub)
def test_math_and_python(llama_server, tmp_path, name, flag):
    sizes = [LISTS, "recipe.n_macro_topics=1", "recipe.n_subtopics=1", "recipe.n_openlines=1"]
    # the topics the model wrote, from the chain up to the classifier (its answers then come from the cache)
    _, topics, _ = run_recipe(name, llama_server, tmp_path, *sizes, f"~recipe.stages.{flag}", "~recipe.stages.problems",
                              "~recipe.stages.problems_list", "~recipe.stages.problem", "~recipe.stages.dedup_problems",
                              "~recipe.stages.solution", "~recipe.stages.second_solution", "~recipe.stages.check_answer",
                              out="topics")
    # 1 macro topic + exactly 1 subtopic = 2 topics; a subtopic written identical to its macro topic is the same topic
    assert len(topics) in (1, 2) and len({t["topic"] for t in topics}) == len(topics)
    # the two solutions' agreement is kept as a verdict (filter off): every problem is seen checked
    summary, good, _ = run_recipe(name, llama_server, tmp_path, *sizes, "recipe.stages.check_answer.filter=false")
    asked = summary.stats["structured_by_schema"]["verdict"]["asked"]
    assert summary.failed == 0 and asked == len(topics), "one verdict per topic"
    # each topic: yes and exactly 1 problem (or removed as a duplicate), or no and filtered
    assert summary.records + summary.stats["filtered"] + _removed(summary) == asked
    assert len(good) == summary.records and {r["topic"] for r in good} <= {t["topic"] for t in topics}
    for r in good:
        assert r[flag] == "yes" and r["topic"] in r["topics"] and len(r["subtopics"]) == 1
        assert r["problems"] == [r["problem"]] and r["problem"].strip()
        assert r["solution"].strip() and r["second_solution"].strip() and isinstance(r["verification"]["valid"], bool)


@pytest.mark.llm
def test_python_solutions_run_on_the_real_model(llama_server, tmp_path):
    """The python recipe end to end on SmolLM2: a solution and tests per problem, run in the
    sandbox. Every problem keeps its verdict (filter off), so each one is seen judged."""
    summary, good, _ = run_recipe("python", llama_server, tmp_path, LISTS, "recipe.n_macro_topics=1",
                                  "recipe.n_subtopics=1", "recipe.n_openlines=1",
                                  "recipe.stages.check_solution.filter=false")
    asked = summary.stats["structured_by_schema"]["verdict"]["asked"]
    assert summary.failed == 0 and asked in (1, 2)
    assert summary.records + summary.stats["filtered"] + _removed(summary) == asked, "each topic: 1 problem or filtered"
    kept_topics = summary.records + _removed(summary)  # one problems list each, then a solution and tests per problem
    assert summary.stats["requests"] + summary.stats["cache_hits"] == 1 + 1 + asked + kept_topics + 2 * summary.records
    for r in good:
        check = r["validation"]
        assert r["solution"].strip() and r["tests"].strip() and check["valid"] is (check["error"] is None)
        compiled = not check["error"] or not check["error"].startswith(("code do not compile", "tests do not compile",
                                                                       "no Python code"))
        assert check.get("ran", False) is compiled, check
        if compiled:  # it ran in the sandbox, offline
            assert {"network", "pid"} <= set(check["isolation"]) and isinstance(check["seconds"], float)


@pytest.mark.llm
@pytest.mark.parametrize("name,turns", [("dialogue", ["user", "assistant", "user", "assistant"])])  # two_turn: stub
def test_dialogues(llama_server, tmp_path, name, turns):
    src = write_jsonl(tmp_path / "o.jsonl", [{"openline": "Why do cats purr?"}])
    summary, good, _ = run_recipe(name, llama_server, tmp_path, f"input={src}", "recipe.user_styles=[concise]",
                                  "sampling.max_tokens=32")
    assert summary.records == 1
    conversation = good[0]["conversation"]
    assert [t["role"] for t in conversation] == turns
    assert conversation[0]["content"] == "Why do cats purr?" and good[0]["style"] == "concise"


@pytest.mark.llm
def test_nemotron_cc(llama_server, tmp_path):
    doc = {"id": "d1", "text": "Owls hunt at night. Their large eyes gather light.\n\nTheir soft feathers make "
                               "their flight almost silent, so mice do not hear them coming."}
    src = write_jsonl(tmp_path / "d.jsonl", [doc])
    summary, good, bad = run_recipe("nemotron_cc", llama_server, tmp_path, f"input={src}",
                                    "recipe.rewrites=[diverse_qa,knowledge_list]",  # the two parsed from the answer
                                    "recipe.max_num_pairs=2")
    # each rewrite: one record, or one error record naming it (the recipe has no dedup stage)
    assert summary.records + summary.failed == 2 and not _removed(summary)
    assert sorted([r["rewrite"] for r in good] + [b["record"]["rewrite"] for b in bad]) == ["diverse_qa", "knowledge_list"]
    for b in bad:  # an answer the rewrite's parser cannot read: what a small model's answer may be
        assert b["_error"]["class"] == "ParseError" and f"rewrite {b['record']['rewrite']!r}" in b["_error"]["message"]
    for r in good:
        assert r["id"] == "d1" and r["source_text"] == doc["text"] and r["text"].strip()
        if r["rewrite"] == "diverse_qa":
            assert r["text"].startswith(doc["text"]) and 1 <= r["text"].count("\nQuestion: ") <= 2
        if r["rewrite"] == "knowledge_list":
            assert all(line.strip() and not line.lstrip().startswith(("-", "*")) for line in r["text"].splitlines())


@pytest.mark.llm
def test_preference_judge(llama_server, tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Give one tip for sleeping well."}])
    # the judged responses without the pairing (a tie would drop the record); the whole recipe then
    # gets the same answers from the cache, so its outcome is known from them
    _, (judged,), _ = run_recipe("preference", llama_server, tmp_path, f"input={src}", "~recipe.stages.pairs",
                                 out="judged")
    assert len(judged["responses"]) == len(judged["scores"]) == 2
    for s in judged["scores"]:  # the judge's shape: the rubric's one criterion and its aggregate
        assert set(s) == {"helpfulness", "aggregate"} and s["helpfulness"] == s["aggregate"]
        assert float(s["helpfulness"]).is_integer() and 1 <= s["helpfulness"] <= 5
    summary, good, _ = run_recipe("preference", llama_server, tmp_path, f"input={src}")
    assert summary.failed == 0
    assert summary.stats["structured_by_schema"]["judgement"]["asked"] == 2, "both responses judged as structured output"
    _, stages = _stages(["recipe=preference"])
    assert type(stages[2]).__name__ == "JudgeStage"
    (low, low_score), (high, high_score) = sorted(zip(judged["responses"], (s["helpfulness"] for s in judged["scores"])),
                                                  key=lambda pair: pair[1])
    if low_score == high_score:  # a tie gives no preference: the prompt is dropped
        assert (summary.records, summary.stats["filtered"]) == (0, 1)
    else:
        assert (summary.records, summary.stats["filtered"]) == (1, 0)
        assert (good[0]["chosen"], good[0]["rejected"]) == (high, low)
        assert (good[0]["chosen_score"], good[0]["rejected_score"]) == (high_score, low_score)


# --- stubs: exact answers --------------------------------------------------------------------
#
# Every recipe runs once on the stub server, which answers each list as a JSON list of exactly n
# items ("items <i> about <the prompt's start>"), each verdict and score by ``pick`` (first: "yes"
# and the scale's minimum, last: "no" and the maximum; ``<<first>>``/``<<last>>`` in a conversation
# decide for that record), and any other prompt with ``echo: <prompt>``. Each count and each field
# is known exactly; where a value follows the stub's own rule (a score), the test reads it from
# what the stub answered on the wire, never from a copy of the rule.

STUB_ECHO_CHARS = 185  # items made from different prompts differ; with "items N about " under 200 characters


def stub_recipe(name: str, server, tmp_path: Path, *overrides: str):
    """Run recipe ``name`` on ``server``; (summary, records, error records, asked), where ``asked``
    is the number of answers the run asked for: sent to the stub or served from the cache."""
    over = [f"recipe={name}", "backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=stub",
            "model.name=stub-model", "progress=false", *overrides]
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(overrides=over), output_dir=str(out))
    good, bad = parts(out)
    assert summary.records == len(good) and summary.failed == len(bad) == 0, bad[:1]
    _, stages = _stages(over)
    _check_lineage(good, _roots(stages))
    return summary, good, server.stats()["requests"] + summary.stats["cache_hits"]


def _sample(name: str) -> list[dict]:
    return [json.loads(line) for line in (paths.recipes_dir() / "data" / name).read_text().splitlines() if line.strip()]


def _items(n: int, start: str) -> list[str]:
    return [f"items {i} about {start}" for i in range(1, n + 1)]


def test_stub_generate(stub_server, tmp_path):
    server = stub_server()
    prompts = [r["prompt"] for r in _sample("prompts.jsonl")]
    summary, good, asked = stub_recipe("generate", server, tmp_path)
    assert asked == summary.records == len(prompts) == 8
    assert sorted((r["prompt"], r["response"]) for r in good) == sorted((p, f"echo: {p}") for p in prompts)


def test_stub_open_qa(stub_server, tmp_path):
    server = stub_server(pick="first", echo_chars=STUB_ECHO_CHARS)
    summary, good, asked = stub_recipe("open_qa", server, tmp_path, "~recipe.stages.dedup_questions")
    # 3 macro topics, each itself + 2 subtopics = 9 topics; 2 questions each; 1 revision each
    assert summary.records == 9 * 2 * 1 and summary.stats["filtered"] == 0
    assert asked == 1 + 3 + 9 + 18, "1 macro list, 3 subtopic lists, 9 question lists, 18 revisions"
    assert len({r["macro_topic"] for r in good}) == 3 and len({r["topic"] for r in good}) == 9
    assert len({r["question"] for r in good}) == 18
    for r in good:
        assert len(r["macro_topics"]) == 3 and r["macro_topic"] in r["macro_topics"]
        assert [s[:14] for s in r["subtopics"]] == ["items 1 about ", "items 2 about "]
        assert all(f"of {r['macro_topic'][:60]}" in s for s in r["subtopics"]), "subtopics of this macro topic"
        assert r["topics"] == [r["macro_topic"], *r["subtopics"]] and r["topic"] in r["topics"]
        assert len(r["questions"]) == 2 and r["question"] in r["questions"]
        assert r["revisions"] == [r["revised_question"]]
        assert r["revised_question"].startswith(f"items 1 about Here is a question: {r['question'][:100]}")
    macro = good[0]["macro_topics"]
    assert [m[:14] for m in macro] == ["items 1 about ", "items 2 about ", "items 3 about "]
    assert len({m[14:] for m in macro}) == 1, "one list answered for all three"


def test_stub_writing(stub_server, tmp_path):
    server = stub_server(pick="first", echo_chars=STUB_ECHO_CHARS)
    summary, good, asked = stub_recipe("writing", server, tmp_path, "~recipe.stages.dedup_tasks")
    topics, kinds = ["Climate change", "Friendship", "Artificial intelligence"], ["essay", "poem", "short story", "letter"]
    assert summary.records == 3 * 4 * 2 and asked == 3 * 4 + 3 * 4 * 2, "12 task lists, then 1 revision per task"
    assert sorted({(r["topic"], r["text_material_type"]) for r in good}) == sorted((t, k) for t in topics for k in kinds)
    for r in good:
        assert len(r["tasks"]) == 2 and r["task"] in r["tasks"]
        assert f"write a {r['text_material_type']} about {r['topic']}" in r["task"]
        assert r["revisions"] == [r["revised_task"]] and r["task"][:40] in r["revised_task"]
    assert len({r["task"] for r in good}) == 24


def test_stub_closed_qa(stub_server, tmp_path):
    server = stub_server(pick="first", echo_chars=STUB_ECHO_CHARS)
    docs = _sample("documents.jsonl")
    summary, good, asked = stub_recipe("closed_qa", server, tmp_path)
    assert summary.records == 2 * len(docs) == 8 and asked == len(docs)
    assert sorted(r["id"] for r in good) == sorted(d["id"] for d in docs for _ in range(2))
    for r in good:
        assert len(r["questions"]) == 2 and r["question"] in r["questions"]
        assert r["text"][:20] in r["question"], "a question about its own document"
    assert len({r["question"] for r in good}) == 8


@pytest.mark.parametrize("name,flag,pick,kept", [("math", "is_math", "first", True), ("python", "is_python", "first", True),
                                                 ("math", "is_math", "last", False)],
                         ids=["math-yes", "python-yes", "math-no"])
def test_stub_math_and_python(stub_server, tmp_path, name, flag, pick, kept):
    server = stub_server(pick=pick, echo_chars=STUB_ECHO_CHARS)  # first: every verdict "yes"; last: "no"
    summary, good, asked = stub_recipe(name, server, tmp_path, "~recipe.stages.dedup_problems")
    # 3 macro topics, each itself + 2 subtopics = 9 topics, 9 verdicts; a kept topic gets 2 problems,
    # each 2 answers: math a solution and a second one, python a solution and its tests.
    problems = 18 if kept else 0
    assert summary.stats["structured_by_schema"]["verdict"]["asked"] == 9
    assert asked == 1 + 3 + 9 + problems // 2 + 2 * problems
    if name == "math":  # the stub echoes each prompt: both solutions end with the same problem, so agree
        assert summary.stats["filtered"] == (0 if kept else 9) and summary.records == problems
    else:  # an echoed prompt is no Python: no solution passes
        assert summary.stats["filtered"] == 18 and summary.records == 0
    assert len({r["topic"] for r in good}) == (9 if summary.records else 0)
    assert len({r["problem"] for r in good}) == summary.records
    for r in good:
        assert r[flag] == "yes" and r["topic"] in r["topics"] and len(r["subtopics"]) == 2
        assert len(r["problems"]) == 2 and r["problem"] in r["problems"]
        assert r["solution"].startswith("echo: Solve this problem step by step.") and r["solution"].endswith(r["problem"])
        check = r["verification"]
        assert check["valid"] and check["answer"] == check["reference"] and r["second_solution"].endswith(r["problem"])


def test_stub_math_keeps_agreeing_answers(stub_server, tmp_path):
    """The math recipe keeps a problem only when its two answers agree: here the first answer is
    7 for the first problem of each list and 8 for the second, the second answer always 7."""
    server = stub_server(pick="first", echo_chars=STUB_ECHO_CHARS)
    summary, good, _ = stub_recipe("math", server, tmp_path, "~recipe.stages.dedup_problems",
                                   "recipe.templates.solution='{% if problem.startswith(\"items 1\") %}So \\boxed{7}"
                                   "{% else %}So \\boxed{8}{% endif %}'",
                                   "recipe.templates.second_solution='Hence \\boxed{7}'")
    assert summary.records == 9 and summary.stats["filtered"] == 9, "one problem of each topic's 2 disagrees"
    for r in good:
        assert r["problem"].startswith("items 1 ") and r["solution"] == "echo: So \\boxed{7}"
        assert r["verification"] == {"valid": True, "error": None, "answer": "7", "reference": "7"}


def test_stub_python_keeps_passing_solutions(stub_server, tmp_path):
    """The python recipe's solutions run with their tests: the stub echoes the code the templates
    below hold, and the test passes for the first problem of each list only."""
    server = stub_server(pick="first", echo_chars=STUB_ECHO_CHARS)
    solution = "recipe.templates.solution='```python\nproblem = {{ problem | tojson }}\n```'"
    tests = "recipe.templates.tests='```python\nassert problem.startswith(\"items 1 \"), problem[:7]\n```'"
    summary, good, _ = stub_recipe("python", server, tmp_path, "~recipe.stages.dedup_problems", solution, tests,
                                   "recipe.stages.check_solution.filter=false")
    assert summary.records == 18 and summary.stats["filtered"] == 0
    for r in good:
        check = r["validation"]
        assert check["valid"] == r["problem"].startswith("items 1 "), check
        assert check["ran"] and "network" in check["isolation"]
        if not check["valid"]:
            assert check["error"] == "AssertionError: items 2"
            assert check["failed_assertion"] == 'assert problem.startswith("items 1 "), problem[:7]'
    kept = stub_recipe("python", server, tmp_path / "kept", "~recipe.stages.dedup_problems", solution, tests)[0]
    assert kept.records == 9 and kept.stats["filtered"] == 9


@pytest.mark.parametrize("name,user_turns", [("dialogue", 2), ("two_turn", 2)])
def test_stub_dialogues(stub_server, tmp_path, name, user_turns):
    server = stub_server()
    openlines = [r["openline"] for r in _sample("openlines.jsonl")]
    styles = recipe.compose(overrides=[f"recipe={name}"]).recipe.styles
    summary, good, asked = stub_recipe(name, server, tmp_path)
    ends_with_assistant = name == "dialogue"
    turns = 2 * user_turns if ends_with_assistant else 2 * user_turns - 1
    assert summary.records == len(openlines) * 3 == 15
    assert asked == 15 * (turns - 1), "every turn after the openline is one answer"
    assert sorted((r["openline"], r["style"]) for r in good) == sorted((o, s) for o in openlines for s in styles)
    for r in good:
        c = r["conversation"]
        assert [t["role"] for t in c] == (["user", "assistant"] * user_turns)[:turns]
        assert len(c) == turns and c[0]["content"] == r["openline"] and c[1]["content"] == f"echo: {r['openline']}"
        user = c[2]["content"]
        assert user.startswith("echo: Here is a conversation") and c[1]["content"] in user
        assert (styles[r["style"]] or "follow-up request or question.") in user, "the style's instruction"
        if ends_with_assistant:
            assert c[3]["content"] == f"echo: {user}"


def test_stub_nemotron_cc(stub_server, tmp_path):
    server = stub_server()
    docs = {d["id"]: d["text"] for d in _sample("documents.jsonl")}
    summary, good, asked = stub_recipe("nemotron_cc", server, tmp_path)
    rewrites = ["wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list"]
    assert summary.records == asked == len(docs) * len(rewrites) == 20
    assert sorted((r["id"], r["rewrite"]) for r in good) == sorted((d, w) for d in docs for w in rewrites)
    for r in good:
        assert r["source_text"] == docs[r["id"]]
        if r["rewrite"] == "diverse_qa":  # the document, then the pairs read from the answer
            assert r["text"] == docs[r["id"]] + "\n\nQuestion: <question>\nAnswer: <answer>"
        elif r["rewrite"] == "knowledge_list":  # bullets stripped, one fact per line
            assert "<fact>" in r["text"] and not any(line.lstrip().startswith("-") for line in r["text"].splitlines())
        else:
            assert r["text"].startswith("echo: ") and r["text"].endswith(docs[r["id"]])


def _answers(server) -> dict[str, str]:
    """What the stub answered (reward or schema), by the message it answered: read off the wire."""
    return {message: content for message, content in server.stats()["answers"]}


def test_stub_preference_by_judge(stub_server, tmp_path):
    server = stub_server()  # scores vary with the judged text
    prompts = [r["prompt"] for r in _sample("prompts.jsonl")]
    summary, good, asked = stub_recipe("preference", server, tmp_path)
    judged = {m: json.loads(c)["helpfulness"] for m, c in _answers(server).items()}
    assert len(judged) == 16, "2 responses per prompt, each judged once"

    def score(prompt: str, response: str) -> float:
        (value,) = [v for m, v in judged.items() if f"Question: {prompt}\n" in m and f"Answer: {response}\n" in m]
        return value

    ties = [p for p in prompts if score(p, f"echo: {p}") == score(p, f"echo: {p} #1")]
    assert summary.records == len(prompts) - len(ties) and summary.stats["filtered"] == len(ties)
    assert asked == 8 + 16
    for r in good:
        assert r["responses"] == [f"echo: {r['prompt']}", f"echo: {r['prompt']} #1"]
        given = [score(r["prompt"], x) for x in r["responses"]]
        assert [s["helpfulness"] for s in r["scores"]] == given
        assert (r["chosen"], r["rejected"]) == tuple(x for _, x in sorted(zip(given, r["responses"]), reverse=True))
        assert r["chosen_score"] == max(given) > r["rejected_score"] == min(given)


def test_stub_judged_qa(stub_server, tmp_path):
    server = stub_server(pick="first")  # scores at the scale's minimum, unless the prompt says <<last>>
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Why is the sky blue? <<last>>"}, {"prompt": "Name a fruit. <<last>>"},
                                        {"prompt": "Say something."}])
    summary, good, asked = stub_recipe("judged_qa", server, tmp_path, f"input={src}")
    assert summary.records == 2 and summary.stats["filtered"] == 1 and asked == 3 + 3
    assert sorted(r["prompt"] for r in good) == ["Name a fruit. <<last>>", "Why is the sky blue? <<last>>"]
    for r in good:
        assert r["response"] == f"echo: {r['prompt']}"
        assert r["scores"] == {"helpfulness": 5.0, "correctness": 5.0, "clarity": 5.0, "aggregate": 5.0}


def test_preference_with_reward_model(stub_server, tmp_path):
    generator, reward = stub_server(), stub_server(reward=True)
    prompts = [{"prompt": "Tell me about tides."}, {"prompt": "Why is the sea salty?"}, {"prompt": "Hi"}]
    src = write_jsonl(tmp_path / "p.jsonl", prompts)
    cfg = recipe.compose(overrides=[
        "recipe=preference", f"input={src}", "backend=openai", f"backend.api_base={generator.base_url}",
        "backend.api_key=stub", "model.name=stub-model", "progress=false", "recipe.n_responses=3",
        "recipe.stages.score.mode=reward_model", "recipe.stages.score.model=nvidia/nemotron-4-340b-reward",
        "recipe.stages.score.backend.provider=nvidia_nim", f"recipe.stages.score.backend.api_base={reward.base_url}",
        "recipe.stages.score.backend.api_key=nvapi-stub"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    good, bad = parts(tmp_path / "out")
    assert not bad and summary.failed == 0
    # the reward model's answers as they went over the wire: "helpfulness:x,correctness:y,..."
    said = {m: {k: float(v) for k, v in (kv.split(":") for kv in c.split(","))} for m, c in _answers(reward).items()}
    assert len(said) == 9, "3 responses per prompt, each scored once"
    ties = [p["prompt"] for p in prompts if len({said[f"echo: {p['prompt']}{s}"]["helpfulness"] for s in ("", " #1", " #2")}) == 1]
    assert summary.records == len(prompts) - len(ties) and summary.stats["filtered"] == len(ties)
    for r in good:
        assert r["responses"] == [f"echo: {r['prompt']}{s}" for s in ("", " #1", " #2")]
        assert r["scores"] == [said[x] for x in r["responses"]]
        values = [said[x]["helpfulness"] for x in r["responses"]]
        assert r["chosen_score"] == max(values) and r["rejected_score"] == min(values)
        assert said[r["chosen"]]["helpfulness"] == max(values) and said[r["rejected"]]["helpfulness"] == min(values)
    assert reward.stats()["requests"] == 3 * len(prompts), "every response scored by the reward model"


def test_preference_judge_exact_pairs_on_the_stub(stub_server, tmp_path):
    server = stub_server()  # answers "echo: <prompt>", then "... #1" for n=2; a schema gets valid JSON
    prompts = [{"prompt": "Tell me about tides."}, {"prompt": "Why is the sea salty?"}, {"prompt": "tie: Hi"}]
    src = write_jsonl(tmp_path / "p.jsonl", prompts)
    # the judge sees the response itself (its length decides the stub's score), or for "tie:"
    # prompts the prompt alone: every response then scores the same and the prompt is dropped
    judge = '{% if prompt.startswith("tie:") %}{{ prompt }}{% else %}{{ response }}{% endif %}'
    cfg = recipe.compose(overrides=[
        "recipe=preference", f"input={src}", "backend=openai", f"backend.api_base={server.base_url}",
        "backend.api_key=stub", "model.name=stub-model", "progress=false", f"recipe.templates.judge='{judge}'"])
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    good, bad = parts(tmp_path / "out")
    assert not bad and summary.failed == 0 and summary.stats["filtered"] == 1  # the tie
    said = {message: float(json.loads(content)["helpfulness"]) for message, content in _answers(server).items()}
    expected = []
    for p in prompts[:2]:
        responses = [f"echo: {p['prompt']}", f"echo: {p['prompt']} #1"]
        scores = [said[r] for r in responses]  # what the judge answered on the wire for each
        assert scores[0] != scores[1]
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        expected.append((p["prompt"], responses[best], responses[worst], max(scores), min(scores),
                         [{"helpfulness": s, "aggregate": s} for s in scores]))
    assert sorted((r["prompt"], r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"], r["scores"])
                  for r in good) == sorted(expected)


@pytest.mark.parametrize("ignore", [True, False])
def test_conversion_failure_policy(stub_server, tmp_path, ignore):
    server = stub_server()  # echoes the prompt: no list in it, so the macro-topic list cannot parse
    cfg = recipe.compose(overrides=[
        "recipe=open_qa", "backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=stub",
        "model.name=stub-model", "progress=false", "recipe.templates.macro_topics=Say hello",
        "recipe.list_mode=direct",  # NeMo Curator's text path: the echo has no list in it
        f"recipe.ignore_conversion_failure={str(ignore).lower()}"])
    if ignore:
        summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
        good, bad = parts(tmp_path / "out")
        assert summary.records == 0 and summary.failed == 1
        assert bad[0]["_error"]["stage"] == "macro_topics_list" and bad[0]["_error"]["class"] == "ParseError"
    else:
        with pytest.raises(ParseError, match="macro_topics_list.*ignore_conversion_failure"):
            recipe.run(cfg, output_dir=str(tmp_path / "out"))


def test_open_qa_combines_and_appends_topics(stub_server, tmp_path):
    server = stub_server(reply="list")  # five numbered items for every prompt
    cfg = recipe.compose(overrides=[
        "recipe=open_qa", "backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=stub",
        "model.name=stub-model", "progress=false", "recipe.n_macro_topics=2", "recipe.n_subtopics=2",
        "recipe.n_openlines=1", "recipe.n_revisions=2", "recipe.additional_macro_topics=[Cooking]",
        "recipe.additional_subtopics=[Knots]", "recipe.list_mode=direct",
        "~recipe.stages.dedup_questions"])  # the stub's questions repeat across topics (dedup: test_dedup.py)
    summary = recipe.run(cfg, output_dir=str(tmp_path / "out"))
    good, bad = parts(tmp_path / "out")
    assert not bad
    # 3 macro topics (2 trimmed + Cooking), each with itself + 2 subtopics = 9 topics, + Knots = 10;
    # 1 question per topic, 2 revisions per question.
    assert summary.records == 10 * 1 * 2
    topics = {r["topic"] for r in good}
    # The stub's items repeat the prompt's first 30 characters, so every macro topic gets the same
    # two subtopics: 2 generated macro topics + Cooking + 2 subtopics + Knots distinct topics.
    assert "Cooking" in topics and "Knots" in topics and len(topics) == 6
    assert {r["macro_topic"] for r in good if "macro_topic" in r} >= {"Cooking"}
    _, stages = _stages(["recipe=open_qa", "recipe.additional_subtopics=[Knots]"])
    _check_lineage(good, _roots(stages))


def test_stub_product_reviews(stub_server, tmp_path):
    server = stub_server()
    summary, good, asked = stub_recipe("product_reviews", server, tmp_path, "recipe.n=12", "sampling.seed=5")
    assert summary.records == 12 and asked == 12 * 2  # a review and a judgement per record
    data, _ = _stages(["recipe=product_reviews"])
    columns = data["recipe"]["columns"]
    answers = _answers(server)
    for r in good:
        assert set(r) == {"review_id", "product", "customer", "rating", "tone", "date", "title", "text",
                          "would_recommend", "judge_scores", "_id", "_parent"}
        product = r["product"]
        assert product["subcategory"] in columns["subcategory"]["values"][product["category"]]
        assert isinstance(r["rating"], int) and 1 <= r["rating"] <= 5 and product["price"] >= 3
        tones = next((v["values"] for cond, v in columns["tone"]["conditional"].items()
                      if eval(cond, {}, {"rating": r["rating"]})), columns["tone"]["values"])  # noqa: S307 - the recipe's own
        assert r["tone"] in tones
        assert set(r["customer"]) >= {"name", "sex", "age", "city", "state", "country", "occupation", "education", "bio"}
        (review,) = [json.loads(c) for m, c in answers.items() if r["customer"]["bio"] in m and "customer review" in m]
        assert (r["title"], r["text"], r["would_recommend"]) == (review["title"], review["body"], review["would_recommend"])
        asked_judge = f"Product: {product['subcategory']}, rated {r['rating']} of 5 stars, tone {r['tone']}."
        # identical judge prompts (the stub's bodies are short) get one answer: the set has one member
        (judged,) = {c for m, c in answers.items() if asked_judge in m and review["body"] in m}
        judged = json.loads(judged)
        assert r["judge_scores"] == {**{k: float(v) for k, v in judged.items()},
                                     "aggregate": sum(judged.values()) / len(judged)}


def test_stub_persona_chat(stub_server, tmp_path):
    server = stub_server()
    summary, good, asked = stub_recipe("persona_chat", server, tmp_path, "recipe.n=9")
    cfg = recipe.compose(overrides=["recipe=persona_chat"]).recipe
    assert summary.records == 9 and asked == 9 * 4  # the openline, then answer, user turn, answer
    for r in good:
        assert set(r) == {"messages", "persona", "topic", "difficulty", "_id", "_parent"}
        assert r["topic"] in cfg.columns.topic["values"] and r["difficulty"] in cfg.columns.difficulty["values"]
        persona, c = r["persona"], r["messages"]
        assert [t["role"] for t in c] == ["user", "assistant", "user", "assistant"]
        assert c[0]["content"].startswith(f"echo: You are {persona['name']}: {persona['bio']}")
        assert c[1]["content"] == f"echo: {c[0]['content']}"
        assert c[2]["content"].startswith(f"echo: Here is a conversation between {persona['name']} ({persona['age']}, ")
        assert c[3]["content"] == f"echo: {c[2]['content']}"
