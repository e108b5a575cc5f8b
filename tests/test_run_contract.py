"""What a run promises beyond its records: the inputs it reads (a glob, a list), the pace it keeps
(``tpm``), what it costs (``cost_usd``) and what its exit code says (3: records failed).

Real parts: ``recipe.run`` or ``python -m recipe`` against the stub server on 127.0.0.1.
"""

from __future__ import annotations

import json

import pytest

import recipe
from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl


def _inputs(tmp_path):
    folder = tmp_path / "in"
    write_jsonl(folder / "a.jsonl", [{"prompt": "a1"}, {"prompt": "a2"}, {"prompt": "a3"}])
    write_jsonl(folder / "b.jsonl", [{"prompt": "b1"}, {"prompt": "b2"}])
    write_jsonl(folder / "c.txt", [{"prompt": "not read"}])
    return folder


@pytest.mark.parametrize("form", ["glob", "list", "stage-list"])
def test_a_glob_or_a_list_of_inputs_reads_every_file_once(stub_server, tmp_path, form):
    server = stub_server()
    folder = _inputs(tmp_path)
    given = {"glob": f"input={folder}/*.jsonl",
             "list": f"input=[{folder / 'a.jsonl'},{folder / 'b.jsonl'}]",
             "stage-list": f"recipe.stages.read.path=[{folder / 'a.jsonl'},{folder / 'b.jsonl'}]"}[form]
    summary = recipe.run(recipe.compose(stub_overrides(server, given)), output_dir=str(tmp_path / "out"))
    rows = outputs(tmp_path / "out")
    assert summary.records == 5 and summary.failed == 0 and server.stats()["requests"] == 5
    assert sorted((r["_source"], r["response"]) for r in rows) == [
        ("a.jsonl:1", "echo: a1"), ("a.jsonl:2", "echo: a2"), ("a.jsonl:3", "echo: a3"),
        ("b.jsonl:1", "echo: b1"), ("b.jsonl:2", "echo: b2")]
    assert len({r["_id"] for r in rows}) == 5, "the same line number in two files is two records"


@pytest.mark.parametrize("given,message", [
    ("[{folder}/a.jsonl,{folder}/missing.jsonl]", "error: input file not found: {folder}/missing.jsonl"),
    ("[]", "error: invalid config: input=[]: must be a path or glob, or a list of them"),
])
def test_a_bad_input_list_is_one_line_before_any_request(stub_server, tmp_path, given, message):
    server = stub_server()
    folder = _inputs(tmp_path)
    result = cli(tmp_path, *stub_overrides(server, "input=" + given.format(folder=folder)), check_exit=2)
    assert result.stderr.strip() == message.format(folder=folder)
    assert server.stats()["requests"] == 0


def test_tpm_paces_requests_by_their_tokens(stub_server, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(24)])
    tpm, max_tokens = 60_000, 100  # each request books at least max_tokens: at most 10 starts per second
    summary = recipe.run(recipe.compose(stub_overrides(
        server, f"input={source}", f"backend.tpm={tpm}", f"sampling.max_tokens={max_tokens}", "cache.enabled=false",
        "backend.max_concurrency=64")), output_dir=str(tmp_path / "out"))
    assert summary.records == 24
    arrivals = sorted(server.stats()["arrivals"])
    # A bound that holds on loaded cores (a late start only shortens the gap after it): never faster
    # than the limit, with 15% for delivery jitter. Unpaced, 24 requests to the stub take well under 1 s.
    steady = arrivals[3:]
    per_second = (len(steady) - 1) / (steady[-1] - steady[0])
    assert per_second <= 1.15 * tpm / 60 / max_tokens, f"{per_second:.1f} requests/s"


def test_cost_usd_is_the_reported_usage_at_the_known_price(stub_server, tmp_path):
    server = stub_server(usage=(1000, 500))  # every answer reports 1000 prompt + 500 completion tokens
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(stub_overrides(server, f"input={source}", "model.name=gpt-4o")),
                         output_dir=str(out))
    # gpt-4o in litellm's price map: $2.5 per million prompt tokens, $10 per million completion tokens
    assert summary.records == 10
    assert json.loads((out / "stats.json").read_text())["cost_usd"] == pytest.approx(10 * (0.0025 + 0.005), rel=1e-9)
    assert summary.stats["cost_usd"] == pytest.approx(0.075, rel=1e-9)


def test_cost_usd_of_a_model_priced_by_the_config(stub_server, tmp_path):
    """``model.price`` prices a model litellm does not know, for ``cost_usd`` as for the budget."""
    server = stub_server(usage=(1000, 500))
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(4)])
    out = tmp_path / "out"
    summary = recipe.run(recipe.compose(stub_overrides(
        server, f"input={source}", "model.name=our-own-model", "model.price.input_per_mtok=3",
        "model.price.output_per_mtok=20")), output_dir=str(out))
    assert summary.records == 4
    # 4 answers x (1000 prompt tokens at $3/M + 500 completion tokens at $20/M) = 4 x $0.013
    assert json.loads((out / "stats.json").read_text())["cost_usd"] == pytest.approx(0.052, rel=1e-9)


def test_exit_code_3_when_records_failed_and_0_when_none_did(stub_server, tmp_path):
    failing, healthy = stub_server(fail_500=0.5), stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    some_failed = cli(tmp_path, *stub_overrides(failing, f"input={source}", "backend.num_retries=0",
                                                f"output_dir={tmp_path / 'a'}"))
    assert some_failed.returncode == 3, some_failed.stderr
    assert some_failed.stdout.splitlines()[-1].startswith("5 records, 5 failed, 10 requests")
    assert len(outputs(tmp_path / "a")) == 5 and len(error_rows(tmp_path / "a")) == 5
    assert "Traceback" not in some_failed.stderr
    none_failed = cli(tmp_path, *stub_overrides(healthy, f"input={source}", f"output_dir={tmp_path / 'b'}"))
    assert none_failed.returncode == 0, none_failed.stderr
    assert none_failed.stdout.splitlines()[-1].startswith("10 records, 0 failed")
