"""One bad record never kills the run (issue 10, section 7): each case below once did.

Every case runs a real recipe against the stub server (real HTTP on 127.0.0.1) over real files;
the circuit-breaker cases run the CLI as a real process.
"""

from __future__ import annotations



import recipe
from conftest import cli, error_rows, outputs, write_jsonl
from conftest import stub_overrides as overrides
from recipe.stages import FilterStage
from recipe.stages.records import is_error


def test_fields_named_self_cls_and_class_render_like_any_other(stub_server, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "first", "self": "s", "cls": "c", "__class__": "k"},
        {"prompt": "second", "self": "s2"},
    ])
    prompt = "recipe.stages.generate.prompt='{{ prompt }} / {{ cls | default(\"-\") }} / {{ __class__ | default(\"-\") }}'"
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}", prompt)), output_dir=str(tmp_path / "out"))
    assert summary.failed == 0
    assert sorted(r["response"] for r in outputs(tmp_path / "out")) == ["echo: first / c / k", "echo: second / - / -"]


def test_arithmetic_on_a_field_of_the_wrong_type_fails_only_that_record(stub_server, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": "x"}, {"n": 41}])
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}", "recipe.stages.generate.prompt='{{ n + 1 }}'")),
                         output_dir=str(tmp_path / "out"))
    assert sorted(r["response"] for r in outputs(tmp_path / "out")) == ["echo: 2", "echo: 42"]
    (error,) = error_rows(tmp_path / "out")
    assert error["record"]["n"] == "x" and error["_error"]["class"] == "InputError"
    assert "TypeError" in error["_error"]["message"] and error["_error"]["where"] == "in.jsonl:2"
    assert summary.records == 2 and summary.failed == 1
    assert server.stats()["requests"] == 2


def test_a_10000_level_nested_line_is_one_error_and_its_neighbours_survive(stub_server, tmp_path):
    server = stub_server()
    nested = '{"a": ' * 10000 + "1" + "}" * 10000
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "before"}, nested, {"prompt": "after"}])
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}")), output_dir=str(tmp_path / "out"))
    assert sorted(r["prompt"] for r in outputs(tmp_path / "out")) == ["after", "before"]
    (error,) = error_rows(tmp_path / "out")
    assert error["_error"]["class"] == "InputError" and "nested too deeply" in error["_error"]["message"]
    assert error["_error"]["where"] == f"{source}:2"
    assert summary.records == 2 and summary.failed == 1


def test_empty_and_odd_answers_fail_only_their_records(stub_server, tmp_path):
    """A reply with no choice (an empty stream when streamed) and content that is a JSON object."""
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine one"}, {"prompt": "nothing <<empty>>"},
                                                 {"prompt": "odd <<object>>"}, {"prompt": "fine two"}])
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}", "backend.num_retries=0")),
                         output_dir=str(tmp_path / "out"))
    assert sorted(r["response"] for r in outputs(tmp_path / "out")) == ["echo: fine one", "echo: fine two"]
    errors = {e["record"]["prompt"]: e["_error"] for e in error_rows(tmp_path / "out")}
    assert set(errors) == {"nothing <<empty>>", "odd <<object>>"}
    assert {e["class"] for e in errors.values()} == {"MalformedResponseError"}
    assert "Traceback" not in errors["odd <<object>>"]["message"]
    assert summary.records == 2 and summary.failed == 2


def test_an_empty_stream_is_an_answer_or_an_error_record_never_a_crash(stub_server, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine"}, {"prompt": "nothing <<empty>>"}])
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}", "backend.num_retries=0",
                                                  "+recipe.stages.generate.sampling.stream=true",
                                                  "+recipe.stages.generate.n=2")),
                         output_dir=str(tmp_path / "out"))
    done = {r["prompt"]: r["response"] for r in outputs(tmp_path / "out")}
    failed = {e["record"]["prompt"] for e in error_rows(tmp_path / "out")}
    assert done["fine"] == ["echo: fine", "echo: fine #1"]
    assert (set(done) | failed) == {"fine", "nothing <<empty>>"} and not set(done) & failed
    assert summary.records + summary.failed == 2


def _odd_predicate(record: dict) -> bool:
    return record["seed"].startswith("keep")  # an AttributeError on a record whose seed is not a string


def test_a_non_llm_stage_follows_the_same_error_policy():
    bag = recipe.stages.ReadStage(seeds=["keep a", 7, "drop b", "keep c"], partition_size=4)()
    rows = FilterStage(name="only_keep", predicate=_odd_predicate)(bag).compute(scheduler="sync")
    assert sorted(r["seed"] for r in rows if not is_error(r)) == ["keep a", "keep c"]
    (error,) = [r for r in rows if is_error(r)]
    assert error["record"]["seed"] == 7
    assert error["_error"] == {"stage": "only_keep", "class": "AttributeError",
                               "message": "'int' object has no attribute 'startswith'"}


# ---- the circuit breaker -------------------------------------------------------------------


def test_a_model_that_does_not_exist_stops_the_run_with_one_line_and_it_resumes(stub_server, tmp_path):
    server = stub_server(models="another-model")
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(400)])
    out = tmp_path / "out"
    args = overrides(server, f"input={source}", f"output_dir={out}", "dask.partition_size=50",
                     "backend.max_concurrency=4")
    stopped = cli(tmp_path, *args)
    assert stopped.returncode == 2, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped:"), stopped.stderr
    assert "ModelNotFoundError" in lines[0] and "does not exist" in lines[0] and "Traceback" not in stopped.stderr
    assert len(error_rows(out)) < 50, "no wall of identical error records"
    assert server.stats()["requests"] < 100, "the run stops soon after the pattern is clear"

    server.set_models("stub-model")  # the cause is fixed: the same command completes the run
    resumed = cli(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["prompt"] for r in outputs(out)) == sorted(f"question {i}" for i in range(400))
    assert not error_rows(out)


def test_record_specific_failures_never_stop_the_run(stub_server, tmp_path):
    """Context-window errors on most records are the records' own: the breaker stays closed."""
    server = stub_server(context_length=64)
    rows = [{"prompt": ("long " * 200) if i % 10 else "short"} for i in range(60)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = recipe.run(recipe.compose(overrides(server, f"input={source}", "backend.num_retries=0",
                                                  "sampling.max_tokens=8")),
                         output_dir=str(tmp_path / "out"))
    assert summary.records == 6 and summary.failed == 54
    assert {e["_error"]["class"] for e in error_rows(tmp_path / "out")} == {"ContextWindowError"}


def _stage_kinds():
    from recipe.stages import CombineStage, DialogueStage, JudgeStage, ParseListStage, RewardStage, RewritesStage

    return [(ParseListStage, {"input_field": "topics"}), (JudgeStage, {"criteria": {"helpful": "Is it helpful?"}}), (RewardStage, {}),
            (DialogueStage, {"user_turn_prompt": "Ask about {{ openline }}"}), (RewritesStage, {"input_field": "text", "rewrites": ["short"], "templates": {"short": "Shorten: {{ text }}"}}), (CombineStage, {"fields": ["a", "b"]})]


def test_a_record_missing_a_field_is_one_error_record_in_every_stage(stub_server):
    """One class and one policy: a record without the field a stage reads becomes a
    MissingFieldError record, also with ignore_conversion_failure=false (that switch is about the
    model's answers), and no request is sent for it."""
    import dask
    import dask.bag as db

    from recipe.clients.factory import ClientSpec
    from recipe.stages.base import LLMStage

    server = stub_server()
    spec = ClientSpec(provider="openai", model="stub-model", api_base=server.base_url, api_key="test-key")
    for cls, params in _stage_kinds():
        extra = {"client": spec, "ignore_conversion_failure": False} if issubclass(cls, LLMStage) else {}
        stage = cls(name="s", **params, **extra)
        with dask.config.set(scheduler="sync"):
            (out,) = stage(db.from_sequence([{"unrelated": 1, "_id": "0123456789abcdef"}], npartitions=1)).compute()
        assert is_error(out), (cls.__name__, out)
        assert out["_error"]["class"] == "MissingFieldError", (cls.__name__, out["_error"])
        assert "record has no field" in out["_error"]["message"]
    assert server.stats()["requests"] == 0
