"""SampleStage through the CLI: declared distributions, conditions, constraints, determinism, bad input.

Every run here is ``python -m recipe`` on a recipe written to a config dir, as a user writes one;
the records are read back from the run folder. Statistical checks use scipy's tests at a fixed
seed, so they are repeatable (and fail on a sampler that ignores its weights or parameters).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import cli, cli_process, error_rows, outputs, stub_overrides, write_jsonl

CATEGORY = {"sampler": "category", "values": ["Books", "Garden", "Toys"], "weights": [5, 3, 2]}
SUBCATEGORY = {"sampler": "subcategory", "parent": "category",
               "values": {"Books": ["novel", "poetry"], "Garden": ["tools", "seeds", "pots"], "Toys": ["lego"]}}
COLUMNS = {
    "category": CATEGORY,
    "subcategory": SUBCATEGORY,
    "rating": {"sampler": "uniform", "low": 1, "high": 5, "convert_to": "int"},
    "tone": {"sampler": "category", "values": ["neutral"],
             "conditional": {"rating <= 2": {"values": ["angry", "upset"]}, "rating == 5": {"values": ["glad"]}}},
    "price": {"sampler": "gaussian", "mean": 20, "stddev": 10, "round": 2},
    "items": {"sampler": "poisson", "mean": 3},
    "start": {"sampler": "datetime", "start": "2024-01-01", "end": "2024-12-31"},
    "end": {"sampler": "timedelta", "dt_min": -5, "dt_max": 30, "reference": "start"},
    "total": {"expression": "price * items", "round": 2},
    "helper": {"sampler": "bernoulli", "p": 0.5, "drop": True},
}
CONSTRAINTS = ["price > 5", "end > start"]


def write_recipe(tmp_path: Path, stages: dict, name: str = "sampled") -> Path:
    """A recipe ``name`` in ``tmp_path/conf/recipe/``; returns the config dir."""
    conf = tmp_path / "conf"
    (conf / "recipe").mkdir(parents=True, exist_ok=True)
    (conf / "recipe" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "stages": stages}, sort_keys=False))
    return conf


def sample_recipe(columns: dict, n: int | None = 100, constraints: list | None = None, before: dict | None = None) -> dict:
    sample = {"_target_": "recipe.stages.SampleStage", "seed": "${sampling.seed}", "columns": columns,
              "constraints": constraints or []}
    if n is not None:
        sample["n"] = n
    return {**(before or {}), "sample": sample, "write": {"_target_": "recipe.stages.WriteStage", "format": "jsonl"}}


def run(tmp_path, server, conf: Path, *extra: str, out: str = "out", check_exit: int | None = 0, **kw):
    return cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / out}",
               *stub_overrides(server), *extra, check_exit=check_exit, **kw)


def part_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(Path(directory).glob("part-*.jsonl")))


@pytest.fixture
def big_run(tmp_path, stub_server):
    """20,000 records of COLUMNS under CONSTRAINTS."""
    server = stub_server()
    conf = write_recipe(tmp_path, sample_recipe(COLUMNS, n=20_000, constraints=CONSTRAINTS))
    run(tmp_path, server, conf, "sampling.seed=3", "dask.partition_size=2500")
    return outputs(tmp_path / "out"), server


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_weights_hold_in_a_chi_square_test_over_20000_records(big_run):
    from scipy import stats

    records, server = big_run
    assert len(records) == 20_000 and server.stats()["requests"] == 0
    counts = [sum(r["category"] == v for r in records) for v in CATEGORY["values"]]
    weights = CATEGORY["weights"]
    expected = [len(records) * w / sum(weights) for w in weights]
    assert stats.chisquare(counts, expected).pvalue > 0.001, counts
    ratings = [sum(r["rating"] == k for r in records) for k in range(1, 6)]  # integer uniform: 1..5 alike
    assert stats.chisquare(ratings).pvalue > 0.001, ratings
    # poisson(3): its pmf over 0..8 and the tail
    items = [r["items"] for r in records]
    observed = [items.count(k) for k in range(9)] + [sum(i >= 9 for i in items)]
    pmf = [stats.poisson.pmf(k, 3) for k in range(9)]
    assert stats.chisquare(observed, [len(items) * p for p in pmf + [1 - sum(pmf)]]).pvalue > 0.001
    # gaussian, truncated by the constraint price > 5: the KS test against that truncated normal
    lower = (5 - 20) / 10
    truncated = stats.truncnorm(lower, float("inf"), loc=20, scale=10)
    assert stats.kstest([r["price"] for r in records], truncated.cdf).pvalue > 0.001


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_subcategories_conditions_and_constraints_hold_on_every_record(big_run):
    records, _ = big_run
    for r in records:
        assert r["subcategory"] in SUBCATEGORY["values"][r["category"]], r
        expected = ["angry", "upset"] if r["rating"] <= 2 else ["glad"] if r["rating"] == 5 else ["neutral"]
        assert r["tone"] in expected, r
        assert r["price"] > 5 and r["end"] > r["start"], r
        assert r["total"] == round(r["price"] * r["items"], 2)
        assert "helper" not in r
    assert {r["subcategory"] for r in records} == {s for v in SUBCATEGORY["values"].values() for s in v}
    assert {r["tone"] for r in records} == {"angry", "upset", "glad", "neutral"}
    assert len({r["_id"] for r in records}) == len(records)


def test_same_seed_gives_identical_bytes_with_threads_partition_sizes_and_two_workers(tmp_path, stub_server,
                                                                                     two_workers):
    server = stub_server()
    columns = {**COLUMNS, "who": {"sampler": "person"}, "id": {"sampler": "uuid", "short": True}}
    conf = write_recipe(tmp_path, sample_recipe(columns, n=3000, constraints=CONSTRAINTS))
    run(tmp_path, server, conf, "sampling.seed=11", "dask.partition_size=100", out="p100")
    run(tmp_path, server, conf, "sampling.seed=11", "dask.partition_size=1000", out="p1000")
    run(tmp_path, server, conf, "sampling.seed=11", "dask.partition_size=700", f"dask.address={two_workers}",
        out="cluster")
    run(tmp_path, server, conf, "sampling.seed=12", "dask.partition_size=1000", out="other")
    first = part_bytes(tmp_path / "p100")
    assert len(first.splitlines()) == 3000
    assert part_bytes(tmp_path / "p1000") == first
    assert part_bytes(tmp_path / "cluster") == first
    assert part_bytes(tmp_path / "other") != first  # the seed is what changes the values


def test_a_kill_9_and_a_rerun_give_the_records_of_an_uninterrupted_run(tmp_path, stub_server):
    import time

    server = stub_server(latency=0.05)
    columns = {"category": CATEGORY, "price": COLUMNS["price"], "who": {"sampler": "person"}}
    stages = sample_recipe(columns, n=400)
    stages = {"sample": stages["sample"],
              "ask": {"_target_": "recipe.stages.GenerateStage", "prompt": "Describe {{ category }} for {{ who.name }}",
                      "output_field": "text"},
              "write": stages["write"]}
    conf = write_recipe(tmp_path, stages)
    common = ["--config-dir", str(conf), "recipe=sampled", *stub_overrides(server), "dask.partition_size=20",
              "backend.max_concurrency=4"]
    proc = cli_process(tmp_path, *common, f"output_dir={tmp_path / 'killed'}")
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "killed").glob("manifests/*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert len(list((tmp_path / "killed").glob("manifests/*.json"))) < 20, "killed part-way"
    cli(tmp_path, *common, f"output_dir={tmp_path / 'killed'}", check_exit=0)
    cli(tmp_path, *common, f"output_dir={tmp_path / 'whole'}", check_exit=0)
    killed, whole = outputs(tmp_path / "killed"), outputs(tmp_path / "whole")
    assert len(whole) == 400
    assert killed == whole


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_columns_added_to_incoming_records_do_not_depend_on_partitioning(tmp_path, stub_server):
    server = stub_server()
    write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(500)])
    columns = {"level": {"sampler": "category", "values": ["easy", "hard"]},
               "label": {"expression": "topic ~ '-' ~ level"}}
    read = {"read": {"_target_": "recipe.stages.ReadStage", "path": str(tmp_path / "in.jsonl")}}
    conf = write_recipe(tmp_path, sample_recipe(columns, n=None, before=read))
    run(tmp_path, server, conf, "dask.partition_size=7", out="a")
    run(tmp_path, server, conf, "dask.partition_size=500", out="b")
    a = outputs(tmp_path / "a")
    assert [r["topic"] for r in a] == [f"t{i}" for i in range(500)]
    assert all(r["label"] == f"{r['topic']}-{r['level']}" for r in a)
    assert {r["level"] for r in a} == {"easy", "hard"}
    assert part_bytes(tmp_path / "a") == part_bytes(tmp_path / "b")


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_an_expression_failing_on_one_record_makes_that_record_an_error(tmp_path, stub_server):
    server = stub_server()
    columns = {"k": {"sampler": "binomial", "n": 3, "p": 0.5}, "inverse": {"expression": "1 / k"},
               "x": {"sampler": "gaussian", "mean": 0, "stddev": 1}, "y": {"expression": "x * 1.1", "round": 3}}
    conf = write_recipe(tmp_path, sample_recipe(columns, n=400))
    run(tmp_path, server, conf, "dask.partition_size=400", check_exit=3)  # the CLI's exit code when records failed
    good, bad = outputs(tmp_path / "out"), error_rows(tmp_path / "out")
    assert len(good) + len(bad) == 400
    assert bad and all("ZeroDivisionError" in e["_error"]["message"] and e["_error"]["stage"] == "sample" for e in bad)
    assert all(r["k"] > 0 and r["inverse"] == 1 / r["k"] for r in good)
    assert len(bad) == 400 - len(good) and 20 < len(bad) < 80  # binomial(3, 0.5): k = 0 one time in 8
    # partitions with and without a failing record evaluate expressions differently (record by record,
    # or over whole columns): the values are the same either way
    run(tmp_path, server, conf, "dask.partition_size=7", out="small", check_exit=3)
    assert part_bytes(tmp_path / "small") == part_bytes(tmp_path / "out")


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_a_constraint_that_rejects_almost_everything_stops_with_one_line(tmp_path, stub_server):
    server = stub_server()
    columns = {"x": {"sampler": "uniform", "low": 0, "high": 1}}
    conf = write_recipe(tmp_path, sample_recipe(columns, n=2000, constraints=["x > 0.5", "x > 0.9999"]))
    result = run(tmp_path, server, conf, check_exit=None, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "constraints[1] 'x > 0.9999' accepted" in lines[0] and "Traceback" not in result.stderr


BAD = [
    ({"c": {"sampler": "gamma", "a": 1}}, "columns.c: unknown sampler 'gamma'"),
    ({"c": {"sampler": "bernoulli", "p": 1.5}}, "columns.c: p=1.5 is out of range"),
    ({"c": {"sampler": "gaussian", "mean": 0, "stddev": -1}}, "columns.c: stddev=-1 is out of range"),
    ({"c": {"sampler": "gaussian", "mean": 0}}, "columns.c: missing parameter 'stddev'"),
    ({"c": {"sampler": "uniform", "low": 5, "high": 1}}, "columns.c: low=5 > high=1"),
    ({"c": {"sampler": "category", "values": ["a", "b"], "weights": [1]}}, "columns.c: weights has 1 entries but values has 2"),
    ({"c": {"sampler": "category", "values": ["a", "b"], "weights": [1, -1]}}, "columns.c: weights must not be negative"),
    ({"c": {"sampler": "category", "values": ["a", "b"], "weights": [0, 0]}}, "columns.c: weights sum to 0"),
    ({"p": {"sampler": "category", "values": ["a", "b"]},
      "c": {"sampler": "subcategory", "parent": "p", "values": {"a": ["x"]}}}, "columns.c: values has no entry for 'b'"),
    ({"c": {"sampler": "scipy", "dist": "nosuchdist"}}, "columns.c: dist='nosuchdist' is not a scipy.stats distribution"),
    ({"c": {"expression": "later + 1"}, "later": {"sampler": "uniform", "low": 0, "high": 1}},
     "columns.c: expression 'later + 1' refers to column 'later', which is not before it"),
    ({"c": {"sampler": "subcategory", "parent": "nowhere", "values": {"a": ["x"]}}},
     "columns.c: parent='nowhere' is not a column before this one"),
    ({"c": {"expression": "1 +* 2"}}, "columns.c: expression '1 +* 2' does not parse"),
    ({"a": {"sampler": "uniform", "low": 0, "high": 1, "conditional": {"a >": {"low": 1}}}},
     "columns.a.conditional: expression 'a >' does not parse"),
]


@pytest.mark.parametrize("columns, expected", BAD, ids=[b[1].split(": ", 1)[1][:40] for b in BAD])
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_each_bad_column_is_one_error_line_naming_it_before_any_request(tmp_path, stub_server, columns, expected):
    server = stub_server()
    conf = write_recipe(tmp_path, sample_recipe(columns, n=10))
    result = run(tmp_path, server, conf, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"recipe.stages.sample.{expected}" in lines[0], lines[0]
    assert server.stats()["requests"] == 0 and not (tmp_path / "out").exists()


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_scipy_person_dataset_and_datetime_columns(tmp_path, stub_server):
    from scipy import stats

    server = stub_server()
    write_jsonl(tmp_path / "products.jsonl", [{"sku": f"s{i}", "name": f"product {i}"} for i in range(50)])
    hub = tmp_path / "hub_folder" / "data"
    hub.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"city": [f"c{i}" for i in range(7)]}), hub / "train-00000.parquet")
    columns = {
        "z": {"sampler": "scipy", "dist": "gamma", "params": {"a": 2.0, "scale": 3.0}},
        "woman": {"sampler": "person", "sex": "Female", "age_range": [30, 40], "locale": "en_GB"},
        "product": {"sampler": "dataset", "path": str(tmp_path / "products.jsonl"), "replace": False},
        "sku_only": {"sampler": "dataset", "path": str(tmp_path / "products.jsonl"), "field": "sku"},
        "city": {"sampler": "dataset", "path": str(tmp_path / "hub_folder"), "field": "city"},
        "when": {"sampler": "datetime", "start": "2024-03-01T00:00:00", "end": "2024-03-01T23:59:59", "unit": "s",
                 "convert_to": "%H:%M"},
    }
    conf = write_recipe(tmp_path, sample_recipe(columns, n=2000))
    run(tmp_path, server, conf, "dask.partition_size=300")
    records = outputs(tmp_path / "out")
    assert len(records) == 2000
    assert stats.kstest([r["z"] for r in records], stats.gamma(2.0, scale=3.0).cdf).pvalue > 0.001
    for r in records:
        assert r["woman"]["sex"] == "Female" and 30 <= r["woman"]["age"] <= 40
        assert r["woman"]["country"] == "United Kingdom"
        assert r["sku_only"] in {f"s{i}" for i in range(50)} and r["city"] in {f"c{i}" for i in range(7)}
        assert len(r["when"]) == 5 and r["when"][2] == ":"
    # without replacement: every 50 records take each row once
    for start in range(0, 2000, 50):
        assert sorted(r["product"]["sku"] for r in records[start:start + 50]) == sorted(f"s{i}" for i in range(50))
    assert len({r["city"] for r in records}) == 7 and len({r["woman"]["name"] for r in records}) > 500


@pytest.mark.parametrize("stages, expected", [
    ({"sample": {"_target_": "recipe.stages.SampleStage", "columns": {"x": {"sampler": "uniform", "low": 0, "high": 1}}},
      "write": {"_target_": "recipe.stages.WriteStage"}}, "recipe.stages.sample: a sample stage first in a recipe needs n"),
    ({"read": {"_target_": "recipe.stages.ReadStage", "seeds": ["a", "b"]},
      "sample": {"_target_": "recipe.stages.SampleStage", "columns": {"x": {"expression": "missing_field + 1"}}},
      "write": {"_target_": "recipe.stages.WriteStage"}}, "stage 'sample' reads 'missing_field'"),
    ({"read": {"_target_": "recipe.stages.ReadStage", "seeds": ["a", "b"]},
      "sample": {"_target_": "recipe.stages.SampleStage", "columns": {"d": {
          "sampler": "dataset", "path": "../in.jsonl", "replace": False}}},
      "write": {"_target_": "recipe.stages.WriteStage"}}, "recipe.stages.sample.columns.d: replace: false takes each row once"),
    ({"read": {"_target_": "recipe.stages.ReadStage", "seeds": ["a", "b"]},
      "sample": {"_target_": "recipe.stages.SampleStage", "n": 5, "columns": {"x": {"sampler": "uniform", "low": 0, "high": 1}}},
      "write": {"_target_": "recipe.stages.WriteStage"}}, "recipe.stages.sample: a sample stage with n is a recipe's source"),
])
@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_a_sample_stage_in_the_wrong_place_is_one_error_line(tmp_path, stub_server, stages, expected):
    server = stub_server()
    write_jsonl(tmp_path / "in.jsonl", [{"x": 1}])
    conf = write_recipe(tmp_path, stages)
    result = run(tmp_path, server, conf, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


@pytest.mark.slow  # seconds each (bench/RESULTS.md: the fast tier)
def test_target_records_takes_the_first_records_of_the_whole_run(tmp_path, stub_server):
    server = stub_server()
    columns = {"category": CATEGORY, "price": COLUMNS["price"], "who": {"sampler": "person"}}
    conf = write_recipe(tmp_path, sample_recipe(columns, n=400, constraints=["price > 5"]))
    run(tmp_path, server, conf, "dask.partition_size=50", out="whole")
    run(tmp_path, server, conf, "target.records=130", out="target")
    whole, target = outputs(tmp_path / "whole"), outputs(tmp_path / "target")
    assert len(target) == 130 and target == whole[:130]


def test_a_sampler_only_recipe_on_the_default_backend_starts_no_model_server(tmp_path):
    """No stage asks the run's model, so the embedded llama.cpp server is not started (it took a
    model load and a port for nothing, and failed where recipe[local] is not installed)."""
    conf = write_recipe(tmp_path, sample_recipe({"rating": {"sampler": "uniform", "low": 1, "high": 5,
                                                            "convert_to": "int"}}, n=30))
    result = cli(tmp_path, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp_path / 'out'}",
                 "progress=false", "backend.model_path=/nonexistent/model.gguf", check_exit=0)
    assert "30 records, 0 failed" in result.stdout, result.stderr[-2000:]
    assert sorted({r["rating"] for r in outputs(tmp_path / "out")}) == [1, 2, 3, 4, 5]


def test_the_dataset_sampler_reads_a_file_and_names_a_field_it_lacks(tmp_path):
    """The fast tier's look at the ``dataset`` sampler (the whole run is the slow test above)."""
    from recipe.stages.samplers import datasets

    path = str(write_jsonl(tmp_path / "products.jsonl", [{"sku": f"s{i}", "price": i} for i in range(5)] + ["7"]))
    assert datasets.rows(path) == tuple([{"sku": f"s{i}", "price": i} for i in range(5)] + [{"value": 7}])
    assert datasets.check({"path": path, "field": "sku"}) == []
    assert datasets.check({"path": path, "field": "colour"}) == [
        f"field='colour' is not a field of {path} (its fields: sku, price)"]
    (missing,) = datasets.check({"path": str(tmp_path / "empty.jsonl")})  # no such file: one problem naming it
    assert "empty.jsonl" in missing


def test_a_changed_dataset_file_is_a_new_run_as_a_changed_input_file_is(tmp_path, stub_server):
    """The rows a ``dataset`` sampler draws from decide the records: the file (or a folder's files)
    is part of the run's identity, so editing it gives a new run folder instead of a resumed run
    that mixes rows of the old file with rows of the new one."""
    import recipe

    server = stub_server()
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"city": f"old {i}"} for i in range(5)])
    conf = write_recipe(tmp_path, sample_recipe({"city": {"sampler": "dataset", "path": str(rows), "field": "city"}}, n=20))

    def once():
        return recipe.run(recipe.compose(["recipe=sampled", *stub_overrides(server)], config_dirs=[str(conf)]))

    first, again = once(), once()
    assert again.output_dir == first.output_dir and again.stats["this_attempt"]["requests"] == 0
    write_jsonl(rows, [{"city": f"new {i}"} for i in range(5)])
    changed = once()
    assert changed.output_dir != first.output_dir
    assert {r["city"] for r in outputs(Path(changed.output_dir))} <= {f"new {i}" for i in range(5)}
    assert {r["city"] for r in outputs(Path(first.output_dir))} <= {f"old {i}" for i in range(5)}
