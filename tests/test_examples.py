"""The example recipes in ``examples/`` (issue 28 §3): each one runs on the stub server, and what it
writes is checked against what went over the wire and what the example itself declares.

Every ``examples/recipe/*.yaml`` is run (a new example is picked up without touching this file) and
must write records and no error record. The five below also get their own checks: the stub's
answers (judge scores, tool calls, reasoning traces) are read from its ``/_stats``, never recomputed
from its rules; where the stub cannot know the right answer (a word problem, a Python function) the
test's own template override decides which answers are right, and the example's check must keep
exactly those.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

import recipe
from conftest import cli, parts, stub_overrides

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in (EXAMPLES / "recipe").glob("*.yaml"))


def config(name: str, *overrides: str) -> Any:
    """The example's composed recipe, as a run sees it."""
    return recipe.compose(overrides=[f"recipe={name}", *overrides], config_dirs=[str(EXAMPLES)]).recipe


def answers(server) -> dict[str, dict]:
    """The stub's answers to requests with a JSON Schema (here: the judges), by the message answered."""
    return {message: json.loads(content) for message, content in server.stats()["answers"]}


# ---- each example's own checks -----------------------------------------------------------------

def check_support_tickets(server, summary, rows, cfg) -> None:
    """Sampled customers in every record; the judge's scores and verdict are the ones it sent, and
    the replies it scored below ``min_score`` (and only those) were dropped."""
    judged = answers(server)  # the judge is the example's only stage with a schema
    criteria = list(cfg.criteria)
    means = {message: statistics.fmean(a[c] for c in criteria) for message, a in judged.items()}
    deduplicated = sum(summary.stats["deduplicated"].values())
    assert len(judged) == cfg.n - deduplicated, "every ticket left after dedup is judged once"
    below = [m for m, mean in means.items() if mean < cfg.min_score]
    assert summary.stats["filtered"] == len(below) and summary.records == len(judged) - len(below)
    assert 0 < summary.records < cfg.n, "the judge kept some replies and dropped others"
    for row in rows:
        system, user, assistant = row["messages"]
        assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
        customer = row["customer"]
        assert {"name", "first_name", "age", "occupation", "bio"} <= set(customer)
        assert f"answering {customer['first_name']} by" in system["content"]
        assert ("(under warranty)" in system["content"]) == row["under_warranty"]
        (message,) = [m for m in judged if user["content"] in m and assistant["content"] in m]
        sent = judged[message]
        assert row["judge"]["scores"] == {**{c: float(sent[c]) for c in criteria}, "aggregate": means[message]}
        assert row["judge"]["verdict"] == sent["rationale"] and means[message] >= cfg.min_score


WORD_PROBLEM_ANSWER = ("recipe.templates.solve='{{ student.name }} {{ quantity }} {{ item }} {{ price }} {{ coupon }} "
                       "{% if quantity is even %}RIGHT\nAnswer: {{ expected }}"
                       "{% else %}WRONG\nAnswer: {{ expected + 1 }}{% endif %}'")


def check_verified_word_problems(server, summary, rows, cfg) -> None:
    """The stub echoes the test's prompt, whose last line is the right answer when the quantity is
    even: math-verify must keep exactly those, each with the trace the stub sent as reasoning_content."""
    sent = server.stats()["reasoning"]  # [prompt answered, trace], one per problem
    right = [prompt for prompt, _ in sent if "RIGHT" in prompt]
    assert len(sent) == cfg.n and 0 < len(right) < cfg.n
    assert summary.records == len(right) and summary.stats["filtered"] == cfg.n - len(right)
    for row in rows:
        user, assistant = row["messages"]
        p = row["parameters"]
        assert row["expected"] == p["quantity"] * p["price"] - p["coupon"], "the sampled truth is the problem's answer"
        assert f"buys {p['quantity']} {p['item']} at {p['price']} dollars" in user["content"]
        (trace,) = [t for prompt, t in sent if prompt in assistant["content"]]
        assert "RIGHT" in assistant["content"] and assistant["reasoning_content"] == trace
        assert row["correct"] is True and row["final_answer"] == str(row["expected"]) and p["quantity"] % 2 == 0


def check_order_assistant_tools(server, summary, rows, cfg) -> None:
    """Every call the stub made is validated against the example's declared tools; the conversations
    kept are exactly those whose call is the goal's own tool, whole: request, call, result, answer."""
    tools = _plain(cfg.tools)
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    tool_of = {goal: tools[0] for goal, tools in cfg.columns.tool["values"].items()}
    log = server.stats()["tool_calls"]  # [first user message, name, arguments, broken?] per call
    assert len(log) == cfg.n and not any(broken for *_, broken in log)

    def goal_in(message: str) -> str:
        (goal,) = [g for g in tool_of if f"want to {g}." in message]
        return goal

    right = [first for first, name, _, _ in log if name == tool_of[goal_in(first)]]
    assert summary.records == len(right) and summary.stats["skipped"]["result"] == cfg.n - len(right)
    assert 0 < len(right) < cfg.n, "some calls were of the goal's tool, some not"
    calls = {first: (name, arguments) for first, name, arguments, _ in log}
    for row in rows:
        system, user, call, result, answer = row["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
        (tool_call,) = call["tool_calls"]
        name, arguments = tool_call["function"]["name"], tool_call["function"]["arguments"]
        assert (name, arguments) == calls[user["content"]] and name == tool_of[row["goal"]]
        jsonschema.validate(json.loads(arguments), declared[name])  # valid under the declared parameters
        assert result["tool_call_id"] == tool_call["id"] and result["content"] and answer["content"]
        assert row["tools"] == tools


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


ROMAN_SOLUTION = """recipe.templates.solve='```python
{% if name == "roman_to_int" %}def roman_to_int(numeral):
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for here, after in zip(numeral, numeral[1:] + " "):
        total += -values[here] if values.get(after, 0) > values[here] else values[here]
    return total
{% else %}def {{ name }}(*args):
    return None
{% endif %}```'"""


def check_tested_functions(server, summary, rows, cfg) -> None:
    """The stub echoes the test's code: a real roman_to_int, and functions that compile but return
    None. The tasks' own tests, run in the sandbox, keep the first and drop the others."""
    tasks = {t["name"]: t for t in _plain(cfg.tasks)}
    assert summary.records == 1 and summary.stats["filtered"] == len(tasks) - 1
    (row,) = rows
    assert row["function"] == "roman_to_int" and row["passed"] is True
    assert row["tests"] == tasks["roman_to_int"]["tests"]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert "def roman_to_int(numeral):" in row["messages"][2]["content"]


def check_dpo_pairs(server, summary, rows, cfg) -> None:
    """Each pair's chosen and rejected are the responses the judge scored highest and lowest on the
    wire; tasks whose responses tied are dropped."""
    judged = answers(server)
    criteria = list(cfg.criteria)
    mean = {message: statistics.fmean(a[c] for c in criteria) for message, a in judged.items()}
    assert len(judged) == cfg.n * cfg.n_responses

    def score(task: str, response: str) -> float:
        (value,) = [v for m, v in mean.items() if f"Task: {task}\n" in m and f"Response: {response}\n" in m]
        return value

    tasks = {m.split("Task: ", 1)[1].split("\n", 1)[0] for m in judged}
    by_task = {t: sorted(v for m, v in mean.items() if f"Task: {t}\n" in m) for t in tasks}
    ties = [t for t, values in by_task.items() if values[0] == values[-1]]
    assert len(tasks) == cfg.n and summary.records == cfg.n - len(ties) and summary.stats["filtered"] == len(ties)
    for row in rows:
        (prompt,), (chosen,), (rejected,) = row["prompt"], row["chosen"], row["rejected"]
        assert (prompt["role"], chosen["role"], rejected["role"]) == ("user", "assistant", "assistant")
        task = prompt["content"]
        assert chosen["content"] != rejected["content"]
        assert row["score_chosen"] == score(task, chosen["content"]) == by_task[task][-1]
        assert row["score_rejected"] == score(task, rejected["content"]) == by_task[task][0]
        assert row["score_chosen"] > row["score_rejected"]
        c = row["constraints"]
        assert f"Write a {c['form']} " in task and f"for {c['audience']}, in at most {c['max_words']} words" in task


@dataclass
class Setup:
    """How an example runs on the stub (server options, the test's overrides) and what is checked."""
    stub: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    check: Callable[..., None] | None = None


SETUPS = {
    "support_tickets": Setup(check=check_support_tickets),
    "verified_word_problems": Setup({"think": "reasoning_content"}, (WORD_PROBLEM_ANSWER,),
                                    check_verified_word_problems),
    "order_assistant_tools": Setup({"echo_chars": 150}, (), check_order_assistant_tools),  # arguments carry the goal
    "tested_functions": Setup({}, (ROMAN_SOLUTION,), check_tested_functions),
    "dpo_pairs": Setup(check=check_dpo_pairs),
}


# ---- the tests -----------------------------------------------------------------------------------

def test_the_five_examples_of_issue_28_are_there():
    assert set(SETUPS) <= set(NAMES), sorted(set(SETUPS) - set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_on_the_stub(name, stub_server, tmp_path):
    setup = SETUPS.get(name, Setup())
    server = stub_server(**setup.stub)
    overrides = [f"recipe={name}", *stub_overrides(server), *setup.overrides]
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(overrides=overrides, config_dirs=[str(EXAMPLES)]), output_dir=str(out))
    rows, errors = parts(out)
    assert not errors and summary.failed == 0, errors[:1]
    assert summary.records == len(rows) > 0
    if setup.check is not None:
        setup.check(server, summary, rows, config(name, *setup.overrides))


def test_every_example_has_its_paragraph_and_command():
    """examples/README.md describes each example, with the command that runs it."""
    text = (EXAMPLES / "README.md").read_text()
    for name in NAMES:
        assert f"python -m recipe --config-dir examples recipe={name}" in text, name


def _from_checkout(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m recipe *args`` run from the checkout's root, as the README's commands are."""
    result = cli(tmp_path, *args, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_the_documented_command_lists_and_runs_the_examples(stub_server, tmp_path):
    """From the checkout, ``--config-dir examples`` lists every example in --help with what it is,
    and ``python -m recipe --config-dir examples recipe=NAME`` runs one (here on the stub)."""
    listed = {}
    for line in _from_checkout(tmp_path, "--config-dir", "examples", "--help").stdout.splitlines():
        words = line.split(maxsplit=1)
        if line.startswith("  ") and len(words) == 2:
            listed[words[0]] = words[1]
    for name in NAMES:
        first = (EXAMPLES / "recipe" / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        assert listed.get(name) and first.startswith(listed[name]), (name, listed.get(name))
    server = stub_server()
    result = _from_checkout(tmp_path, "--config-dir", "examples", "recipe=dpo_pairs", "recipe.n=3",
                            *stub_overrides(server))
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    rows, errors = parts(folder)
    assert folder.name in result.stdout
    assert len(rows) == 3 - json.loads((folder / "stats.json").read_text())["filtered"] and not errors
    assert server.stats()["requests"] == 3 + 3 * 2, "three tasks: two responses each in one request, two judgements"
