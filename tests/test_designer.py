"""Data Designer configs on our engine (issue 27): ``python -m recipe designer=PATH`` and
``recipe.from_data_designer``.

Each config in ``tests/data/designer/`` was written from Data Designer's tutorials and docs; every
test first has Data Designer's own config builder accept it (the ``recipe[designer]`` extra, part of
``all``), then runs it here against the stub server over HTTP and reads what went over the wire
(the stub's request bodies and answers) and what the run wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest
import yaml

from conftest import SRC, cli, error_rows, outputs, stub_overrides

DATA = Path(__file__).parent / "data" / "designer"


def dd_builder(path: Path):
    """Data Designer's own builder over ``path``: raises if Data Designer refuses the config."""
    dd = pytest.importorskip("data_designer.config", reason="data-designer-config (the recipe[designer] extra) is not installed")
    return dd.DataDesignerConfigBuilder.from_config(str(path))


def config(tmp_path: Path, name: str, change=None) -> Path:
    """``name``'s config copied to ``tmp_path`` (its seed file beside it, by absolute path), checked by
    Data Designer's builder; ``change(dict)`` edits it first."""
    data = yaml.safe_load((DATA / f"{name}.yaml").read_text())
    source = (data.get("seed_config") or {}).get("source")
    if source:
        shutil.copy(DATA / source["path"], tmp_path / source["path"])
        source["path"] = str(tmp_path / source["path"])
    if change:
        change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    dd_builder(path).build()  # Data Designer accepts it
    return path


def run(tmp_path: Path, server, path: Path, *extra: str, out: str = "out", check_exit: int | None = 0):
    return cli(tmp_path, f"designer={path}", f"output_dir={tmp_path / out}", *stub_overrides(server), *extra,
               check_exit=check_exit)


def columns_of(path: Path) -> dict:
    return {c["name"]: c for c in yaml.safe_load(path.read_text())["columns"]}


def render(template: str, record: dict) -> str:
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(**record)


def user_turns(server) -> list[str]:
    return [m["content"] for body in server.stats()["bodies"] for m in body.get("messages", []) if m["role"] == "user"]


def bodies_by_prompt(server) -> dict[str, dict]:
    return {[m["content"] for m in b["messages"] if m["role"] == "user"][0]: b for b in server.stats()["bodies"]}


BOOK = {"_id", "_parent", "_source"}


# ---- the six tutorial configs ---------------------------------------------------------------------------

def test_product_reviews_keep_data_designers_names_and_send_its_prompts(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "product_reviews")
    cols = columns_of(path)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10  # no target.records: Data Designer's preview size
    names = {"product_category", "product_subcategory", "number_of_stars", "review_id", "customer_name",
             "product_name", "customer_review"}
    assert [set(r) - BOOK for r in records] == [names] * 10  # customer (drop) and review_style (processor) dropped
    sent = bodies_by_prompt(server)
    assert len(server.stats()["bodies"]) == 20 and server.stats()["requests"] == 20
    subcategories = cols["product_subcategory"]["params"]["values"]
    for r in records:
        assert r["product_subcategory"] in subcategories[r["product_category"]]
        assert r["review_id"].startswith("REV-") and len(r["review_id"]) == 12
        assert isinstance(r["number_of_stars"], int) and 1 <= r["number_of_stars"] <= 5
        first = sent[render(cols["product_name"]["prompt"], r)]
        # the review's prompt carries the product name the wire answered, and the hidden columns' values
        prompt = [p for p in sent if p.startswith("Review " + r["product_name"] + " as " + r["customer_name"])]
        assert len(prompt) == 1, r
        second = sent[prompt[0]]
        assert second["messages"][0] == {"role": "system", "content": cols["customer_review"]["system_prompt"]}
        for body in (first, second):  # the alias's inference parameters, per request
            assert 0.5 <= body["temperature"] <= 0.9 and body["top_p"] == 0.95 and body["max_tokens"] == 300
    assert len({b["temperature"] for b in server.stats()["bodies"]}) > 10, "a temperature drawn per request"


def test_persona_qa_sends_each_alias_its_model_and_temperatures(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "persona_qa")
    cols = columns_of(path)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10
    sent = bodies_by_prompt(server)
    asker = "meta/llama-3.3-70b-instruct"
    for r in records:
        assert r["asker_age"] == r["persona"]["age"] and isinstance(r["asker_age"], int)
        assert 25 <= r["asker_age"] <= 65
        # the most used alias (answerer) is the run's model, which model.name=stub-model overrode;
        # the other alias keeps its own model on its stage
        question = sent[render(cols["question"]["prompt"], r)]
        assert question["model"] == asker and question["temperature"] == 0.9
        answer = sent[render(cols["answer"]["prompt"], r)]
        assert answer["model"] == "stub-model" and answer["temperature"] in (0.2, 0.6)
        assert answer["messages"][0] == {"role": "system", "content": render(cols["answer"]["system_prompt"], r)}
        assert sent[render(cols["second_answer"]["prompt"], r)]["model"] == "stub-model"


def test_code_dataset_keeps_the_code_out_of_its_fence(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "code_dataset")
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10
    for r in records:
        assert r["code"] == f'def {r["function_name"]}():\n    return "{r["topic"]}"'
    turns = user_turns(server)
    assert sum("Reply with the python code only, in one markdown code block." in t for t in turns) == 10


def _fenced(text: str, lang: str) -> str:
    """The body of ``text``'s ``lang`` block."""
    return text.split(f"```{lang}\n", 1)[1].split("```", 1)[0].strip()


def test_python_validation_column_gives_data_designers_is_valid_per_record(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "code_with_validation")
    run(tmp_path, server, path, "target.records=16")
    records = outputs(tmp_path / "out")
    assert len(records) == 16
    codes = {_fenced(turn, "python") for turn in user_turns(server)}  # the stub echoes the draft it was sent
    names = {r["function_name"] for r in records}
    assert names == {"parse_rows", "copy tree"}, "both names drawn"
    for r in records:
        assert r["code"] in codes  # the code that came over the wire, out of its fence
        assert set(r) >= {"topic", "function_name", "code", "code_validity"}
        assert not any(k.startswith("_code_validity") for k in r), "the checks' own fields are not written"
        if r["function_name"] == "parse_rows":
            assert r["code_validity"] == {"is_valid": True, "error_messages": ""}
        else:  # `def copy tree():` is a syntax error
            assert r["code_validity"]["is_valid"] is False
            assert r["code_validity"]["error_messages"].startswith("code do not compile: SyntaxError")


def test_sql_validation_column_parses_each_target_in_its_dialect_keyed_by_column(stub_server, tmp_path):
    """Backquoted names are MySQL's, TOP is T-SQL's: the same answers are judged by the dialect the
    config names, each target column on its own; sql:ansi is sqlglot's generic SQL."""
    def dialect_of(code_lang: str):
        def change(data: dict) -> None:
            for column in data["columns"]:
                if column["column_type"] == "llm-code":
                    column["code_lang"] = code_lang
                if column["column_type"] == "validation":
                    column["validator_params"]["code_lang"] = code_lang
        return change

    for dialect, named in (("postgres", "postgres"), ("tsql", "tsql"), ("ansi", "generic SQL")):
        server = stub_server()
        path = config(tmp_path, "sql_with_validation", change=dialect_of(f"sql:{dialect}"))
        run(tmp_path, server, path, "target.records=24", out=dialect)
        records = outputs(tmp_path / dialect)
        assert len(records) == 24
        sent = user_turns(server)
        assert {r["quoting"] for r in records} == {"name", "`name`"} and {r["rows"] for r in records} == {"ALL", "TOP 5"}
        for r in records:
            assert r["sql_query"] == f"SELECT {r['quoting']} FROM {r['table_name']}"
            assert r["count_query"] == f"SELECT {r['rows']} COUNT(*) FROM {r['table_name']}"
            assert any(r["sql_query"] in t for t in sent) and any(r["count_query"] in t for t in sent)
            verdict = r["sql_validity"]
            assert set(verdict) == {"sql_query", "count_query"}
            assert verdict["sql_query"]["is_valid"] is (r["quoting"] == "name")
            assert verdict["count_query"]["is_valid"] is (r["rows"] == "ALL" or dialect == "tsql")
            for result in verdict.values():
                assert (result["error_messages"] == "") is result["is_valid"]
                if not result["is_valid"]:
                    assert f"does not parse as {named}:" in result["error_messages"]


def test_a_validation_column_of_a_skipped_column_is_null(stub_server, tmp_path):
    def skip_some(data: dict) -> None:
        code = next(c for c in data["columns"] if c["name"] == "code")
        code["skip"] = {"when": "{{ topic == 'File I/O' }}"}

    server = stub_server()
    path = config(tmp_path, "code_with_validation", change=skip_some)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    skipped = [r for r in records if r["topic"] == "File I/O"]
    assert 0 < len(skipped) < 10
    for r in records:
        if r in skipped:
            assert r["code"] is None and r["code_validity"] is None
        else:
            assert r["code_validity"]["is_valid"] is (r["function_name"] == "parse_rows")
    assert server.stats()["requests"] == 10 - len(skipped)


@pytest.mark.parametrize("shape", ["reasoning_content", "inline"])
def test_extract_reasoning_content_keeps_the_trace_under_data_designers_name(stub_server, tmp_path, shape):
    def reason(data: dict) -> None:
        for column in data["columns"]:
            if column["name"] in ("answer", "quality"):
                column["extract_reasoning_content"] = True

    server = stub_server(think=shape)
    path = config(tmp_path, "judged_dataset", change=reason)
    cols = columns_of(path)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10
    traces = {prompt: trace for prompt, trace in server.stats()["reasoning"]}
    for r in records:
        assert {k for k in r if k.endswith("__reasoning_content")} == {
            "answer__reasoning_content", "quality__reasoning_content"}, "only the columns that ask for it"
        assert r["answer__reasoning_content"] == traces[render(cols["answer"]["prompt"], r)]
        assert "<think>" not in r["answer"] and r["answer__reasoning_content"] not in r["answer"]
        (judged,) = [p for p in traces if p.startswith(render(cols["quality"]["prompt"], r))]
        assert r["quality__reasoning_content"] == traces[judged]
        assert set(r["quality"]) == {"helpfulness", "accuracy", "aggregate"}


def test_structured_extraction_from_a_seed_dataset_shaped_by_schema_transform(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "structured_extraction")
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    docs = {json.loads(line)["doc_id"]: json.loads(line)["document"] for line in (DATA / "seed_docs.jsonl").read_text().splitlines()}
    answers = dict((prompt, json.loads(content)) for prompt, content in server.stats()["answers"])
    template = columns_of(path)["extraction"]["prompt"]
    assert len(records) == 10
    for r in records:
        assert set(r) - {"_id", "_parent"} == {"id", "text", "facts"}
        assert r["text"] == docs[r["id"]]
        assert r["facts"] == answers[render(template, {"language": "English", "document": r["text"]})]
    counts = sorted(sum(r["id"] == d for r in records) for d in docs)
    assert counts == [3, 3, 4], "no seed row repeats before every row was taken"


def test_judged_dataset_scores_each_rubric_and_skips_as_data_designer_does(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "judged_dataset")
    cols = columns_of(path)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10
    answers = {prompt: json.loads(content) for prompt, content in server.stats()["answers"]}
    hard = [r for r in records if r["difficulty"] == "hard"]
    assert 0 < len(hard) < 10
    for r in records:
        if r["difficulty"] == "easy":  # skipped, and the column built on it skipped too (propagate_skip)
            assert r["follow_up"] is None and r["follow_up_answer"] is None
        else:
            assert r["follow_up"] is not None and r["follow_up_answer"] is not None
        (judged,) = [v for p, v in answers.items() if p.startswith(render(cols["quality"]["prompt"], r))]
        assert r["quality"] == {"helpfulness": judged["helpfulness"], "accuracy": judged["accuracy"],
                                "aggregate": (judged["helpfulness"] + judged["accuracy"]) / 2}
    # question, answer, judge; follow-ups if hard. Two records may share a prompt (same subject and
    # difficulty): the second is then a cache hit, or a request when both were in flight at once.
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["requests"] + stats["cache_hits"] == 10 * 3 + 2 * len(hard)
    assert server.stats()["requests"] == stats["requests"]
    judge_prompts = [p for p in answers if p.startswith("Judge this answer")]
    assert all("helpfulness: Does the answer help the asker? (1 = Not helpful; 2 = Somewhat helpful; "
               "3 = Helpful; 4 = Very helpful)" in p and "from 1 (worst) to 4 (best)" in p for p in judge_prompts)


def _samplers_only(data: dict) -> None:
    data["columns"] = [c for c in data["columns"] if not c["column_type"].startswith("llm")]


@pytest.mark.slow
def test_conditional_params_and_constraints_hold_and_distributions_match_over_20000_records(stub_server, tmp_path):
    from scipy import stats

    server = stub_server()
    path = config(tmp_path, "conditional_constraints", change=_samplers_only)
    run(tmp_path, server, path, "target.records=20000", "sampling.seed=5")
    records = outputs(tmp_path / "out")
    assert len(records) == 20000 and server.stats()["requests"] == 0
    for r in records:  # constraints and the conditional
        assert 10 < r["price"] < 120 and r["discount"] < r["price"], r
        assert 0 <= r["units"] <= 10 and r["label"] == f"{r['tier']}-{r['stars']}"
    import datetime as dt

    gaps = {(dt.date.fromisoformat(r["shipped"]) - dt.date.fromisoformat(r["listed"])).days for r in records}
    assert gaps <= set(range(1, 15)) and len(gaps) == 14
    premium = [r["price"] for r in records if r["tier"] == "premium"]
    budget = [r["price"] for r in records if r["tier"] == "budget"]
    # Data Designer redraws only the column a constraint is on, given the columns before it: the tiers
    # keep their weights, each tier's price is its declared normal truncated to (10, 120), and the
    # discount is uniform on (0, min(price, 60)).
    assert stats.chisquare([len(budget), len(premium)], [15000, 5000]).pvalue > 0.001
    for prices, (mean, sd) in ((budget, (20, 5)), (premium, (100, 10))):  # the conditional's parameters
        truncated = stats.truncnorm((10 - mean) / sd, (120 - mean) / sd, loc=mean, scale=sd)
        assert stats.kstest(prices, truncated.cdf).pvalue > 0.001
    assert stats.kstest([r["discount"] / min(r["price"], 60) for r in records], "uniform").pvalue > 0.001
    # stars: Data Designer's uniform(1, 5) rounded to int: 1 and 5 half as likely as 2, 3, 4
    counts = [sum(r["stars"] == k for r in records) for k in range(1, 6)]
    expected = [20000 * w for w in (1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8)]
    assert stats.chisquare(counts, expected).pvalue > 0.001, counts
    # bernoulli_mixture: 0 with probability 0.7, else an exponential draw (scale 10)
    refunds = [r["refund"] for r in records]
    assert stats.binomtest(sum(x == 0 for x in refunds), 20000, 0.7).pvalue > 0.001
    assert stats.kstest([x for x in refunds if x != 0], stats.expon(scale=10).cdf).pvalue > 0.001
    returns = [sum(r["returns"] == k for r in records) for k in range(4)]
    poisson = [stats.poisson(2).pmf(k) for k in range(4)]
    assert stats.chisquare(returns + [20000 - sum(returns)],
                           [20000 * p for p in poisson] + [20000 * (1 - sum(poisson))]).pvalue > 0.001


# ---- the engine's options on a Data Designer config -----------------------------------------------------

def test_target_records_makes_exactly_that_many(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "code_dataset")
    run(tmp_path, server, path, "target.records=23")
    records = outputs(tmp_path / "out")
    assert len(records) == 23 and len({r["_id"] for r in records}) == 23
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["records"] == 23 and stats["requests"] + stats["cache_hits"] == 46  # equal prompts: one request


def _task_ids(data: dict) -> None:
    """Every record's prompts distinct: a uuid column in the instruction's prompt. (Records asking the
    same share one batch line; stats.json's cost_usd then counts that line once per record: reported.)"""
    data["columns"].insert(0, {"name": "task_id", "column_type": "sampler", "sampler_type": "uuid", "params": {}})
    instruction = next(c for c in data["columns"] if c["name"] == "instruction")
    instruction["prompt"] += " (task {{ task_id }})"


@pytest.mark.slow
def test_batch_runs_at_the_batch_price(stub_server, tmp_path):
    from test_batch_resume import batch_price

    server = stub_server(usage=(1000, 500))
    path = config(tmp_path, "code_dataset", change=_task_ids)
    run(tmp_path, server, path, "model.name=gpt-4o", "backend.batch=true", "backend.batch_poll_seconds=0.2",
        "budget.max_usd=10")
    records = outputs(tmp_path / "out")
    assert len(records) == 10 and all(r["code"] == f'def {r["function_name"]}():\n    return "{r["topic"]}"'
                                      for r in records)
    stub = server.stats()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    cols = columns_of(path)
    distinct = (len({render(cols["instruction"]["prompt"], r) for r in records})
                + len({render(cols["code"]["prompt"], r) for r in records}))
    # one batch line per distinct prompt (records asking the same share its answer)
    assert stub["batch_lines"] == stats["requests"] == distinct == 20
    assert stub["batches_created"] >= 2  # the code stage's batch waits for the instructions
    assert stats["cost_usd"] == pytest.approx(stats["requests"] * batch_price("gpt-4o"))


@pytest.mark.slow
def test_budget_stops_the_run_and_the_same_command_with_more_resumes_it(stub_server, tmp_path):
    from test_batch_resume import online_price

    server = stub_server(usage=(1000, 500))
    path = config(tmp_path, "code_dataset")
    price = online_price("gpt-4o")
    first = run(tmp_path, server, path, "model.name=gpt-4o", f"budget.max_usd={price * 5.5}", "dask.partition_size=2",
                check_exit=4)
    assert "budget" in first.stderr
    assert server.stats()["requests"] <= 6
    run(tmp_path, server, path, "model.name=gpt-4o", "budget.max_usd=10", "dask.partition_size=2")
    assert len(outputs(tmp_path / "out")) == 10
    asked = server.stats()["requests"]
    assert asked <= 20
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["cost_usd"] == pytest.approx(asked * price)  # the whole run's cost, across the resume


@pytest.mark.slow
def test_runs_on_a_two_worker_cluster_with_the_same_records(stub_server, tmp_path, two_workers):
    server = stub_server()
    path = config(tmp_path, "judged_dataset")
    run(tmp_path, server, path, "dask.partition_size=3", out="local")
    run(tmp_path, server, path, "dask.partition_size=3", f"dask.address={two_workers}", "cache.enabled=false",
        out="cluster")
    local, cluster = outputs(tmp_path / "local"), outputs(tmp_path / "cluster")
    assert len(cluster) == 10 and cluster == local


def test_cfg_job_shows_the_compiled_recipe(tmp_path):
    path = config(tmp_path, "product_reviews")
    result = cli(tmp_path, f"designer={path}", "--cfg", "job", check_exit=0)
    shown = yaml.safe_load(result.stdout)
    stages = shown["recipe"]["stages"]
    assert list(stages) == ["sample", "expressions_1", "product_name", "customer_review", "write"]
    assert stages["customer_review"]["_target_"] == "recipe.stages.GenerateStage"
    # dropped: customer (drop: true), review_style (drop_columns), the float draw stars are rounded from
    assert stages["write"]["fields"] == {"drop": ["customer", "review_style", "_number_of_stars__value"]}
    assert shown["model"]["name"] == "nvidia/nemotron-3-nano-30b-a3b" and shown["backend"]["provider"] == "nvidia_nim"


def test_from_data_designer_takes_a_builder_and_recipe_run_runs_it(stub_server, tmp_path):
    import recipe

    server = stub_server()
    builder = dd_builder(config(tmp_path, "code_dataset"))
    cfg = recipe.from_data_designer(builder, [*stub_overrides(server), f"output_dir={tmp_path / 'api'}",
                                              "target.records=4"])
    assert list(cfg.recipe.stages) == ["sample", "instruction", "code", "code__extract", "write"]
    recipe.run(cfg)
    records = outputs(tmp_path / "api")
    assert len(records) == 4 and all(r["code"] == f'def {r["function_name"]}():\n    return "{r["topic"]}"'
                                     for r in records)


def test_a_column_reading_a_trace_runs_after_the_column_that_makes_it(stub_server, tmp_path):
    """A prompt over ``answer__reasoning_content``, declared before ``answer``: Data Designer's DAG
    puts it after ``answer`` (the trace is ``answer``'s side effect), and so do we."""
    def critique_first(data: dict) -> None:
        data["columns"].insert(2, {"name": "critique", "column_type": "llm-text", "model_alias": "writer",
                                   "prompt": "Critique this reasoning: {{ answer__reasoning_content }}"})
        next(c for c in data["columns"] if c["name"] == "answer")["extract_reasoning_content"] = True

    server = stub_server(think="reasoning_content")
    path = config(tmp_path, "judged_dataset", change=critique_first)
    cols = columns_of(path)
    run(tmp_path, server, path)
    records = outputs(tmp_path / "out")
    assert len(records) == 10 and not error_rows(tmp_path / "out")
    traces = dict(server.stats()["reasoning"])
    sent = user_turns(server)
    for r in records:
        assert r["answer__reasoning_content"] == traces[render(cols["answer"]["prompt"], r)]
        assert render(cols["critique"]["prompt"], r) in sent and r["critique"]


# ---- refusals: one line, before any request -------------------------------------------------------------

def _add(column: dict, models: list | None = None):
    def change(data: dict) -> None:
        data["columns"].append(column)
        data["model_configs"] += models or []
    return change


REFUSED = {
    "embedding": (_add({"name": "vec", "column_type": "embedding", "target_column": "instruction", "model_alias": "embedder"},
                       [{"alias": "embedder", "model": "nvidia/nv-embedqa-e5-v5", "provider": "nvidia",
                         "inference_parameters": {"generation_type": "embedding"}}]),
                  "error: Data Designer column 'vec' (embedding): embedding columns are not supported"),
    "mcp_tools": (_add({"name": "tooled", "column_type": "llm-text", "model_alias": "coder", "prompt": "{{ topic }}",
                        "tool_alias": "search"}),
                  "error: Data Designer column 'tooled' (llm-text): MCP tools (tool_alias) are not supported"),
    "remote_validator": (_add({"name": "checked", "column_type": "validation", "target_columns": ["code"],
                               "validator_type": "remote",
                               "validator_params": {"endpoint_url": "http://127.0.0.1:9/validate"}}),
                         "error: Data Designer column 'checked' (validation): remote validators (an HTTP endpoint) "
                         "are not supported: validate with a code validator, or after the run"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_unsupported_column_is_one_error_line_naming_it(stub_server, tmp_path, kind):
    change, line = REFUSED[kind]
    server = stub_server()
    data = yaml.safe_load((DATA / "code_dataset.yaml").read_text())
    change(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if kind != "mcp_tools":  # a tool_alias needs its tool_configs to pass Data Designer's own checks
        dd_builder(path).build()
    result = run(tmp_path, server, path, check_exit=2)
    assert result.stderr.strip() == line
    assert server.stats()["requests"] == 0


def test_image_custom_and_local_callable_columns_are_refused_by_name(tmp_path):
    from recipe.config.designer_compile import compile_recipe
    from recipe.errors import ConfigError

    data = yaml.safe_load((DATA / "code_dataset.yaml").read_text())
    for column, line in (({"name": "picture", "column_type": "image", "prompt": "{{ topic }}", "model_alias": "coder"},
                          "Data Designer column 'picture' (image): image columns are not supported"),
                         ({"name": "mine", "column_type": "custom", "generator_function": "my.fn"},
                          "Data Designer column 'mine' (custom): custom Python column generators are not supported"),
                         # only a builder in Python carries a function: a file's config never passes Data Designer's check
                         ({"name": "checked", "column_type": "validation", "target_columns": ["code"],
                           "validator_type": "local_callable", "validator_params": {"validation_function": "my_fn"}},
                          "Data Designer column 'checked' (validation): local_callable validators (a Python function) "
                          "are not supported: validate with a code validator, or after the run")):
        with pytest.raises(ConfigError) as caught:
            compile_recipe({**data, "columns": data["columns"] + [column]}, "x")
        assert str(caught.value) == line


def test_a_config_data_designer_refuses_is_its_message_in_one_line(stub_server, tmp_path):
    server = stub_server()
    data = yaml.safe_load((DATA / "code_dataset.yaml").read_text())
    data["columns"][0]["params"] = {"weights": [1, 2]}  # a category without values
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(Exception):
        dd_builder(path).build()
    result = run(tmp_path, server, path, check_exit=2)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: designer={path}: Data Designer refused the config: ") and "values" in line
    assert server.stats()["requests"] == 0


def test_without_the_extra_the_config_runs_unchecked_and_says_which_extra_to_install(stub_server, tmp_path):
    server = stub_server()
    path = config(tmp_path, "code_dataset")
    shim = tmp_path / "shim" / "data_designer"  # an import of data_designer fails, as without the extra
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = cli(tmp_path, f"designer={path}", f"output_dir={tmp_path / 'out'}", *stub_overrides(server),
                 env={"PYTHONPATH": f"{shim.parent}:{SRC}"}, check_exit=0)
    assert ("note: Data Designer's config models are not installed, so the config was read without its checks: "
            "pip install 'recipe[designer]'") in result.stderr.splitlines()
    assert len(outputs(tmp_path / "out")) == 10


def test_seed_dataset_from_a_hugging_face_dataset_folder_of_parquet_files(stub_server, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "seed_docs.jsonl").read_text().splitlines()]
    folder = tmp_path / "hf_docs" / "data"  # a dataset folder as the Hub lays it out
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "train-00001-of-00002.parquet")

    def from_folder(data: dict) -> None:
        data["seed_config"]["source"]["path"] = str(folder / "*.parquet")

    server = stub_server()
    path = config(tmp_path, "structured_extraction", change=from_folder)
    run(tmp_path, server, path, "target.records=6")
    records = outputs(tmp_path / "out")
    assert sorted(r["id"] for r in records) == ["d1", "d1", "d2", "d2", "d3", "d3"]
    assert all(r["text"] == {d["doc_id"]: d["document"] for d in rows}[r["id"]] for r in records)


def test_propagate_skip_false_keeps_a_column_that_reads_a_skipped_one():
    from recipe.config.designer_compile import compile_recipe

    data = yaml.safe_load((DATA / "judged_dataset.yaml").read_text())
    stages = compile_recipe(data, "x")[0]["stages"]
    assert stages["follow_up"]["when"].replace("(", "").replace(")", "") == "not difficulty == 'easy'"
    assert stages["follow_up_answer"]["when"].replace("(", "").replace(")", "") == "not difficulty == 'easy'"  # propagated
    assert "when" not in stages["answer"]
    for column in data["columns"]:
        if column["name"] == "follow_up_answer":
            column["propagate_skip"] = False
    assert "when" not in compile_recipe(data, "x")[0]["stages"]["follow_up_answer"]
