"""Issue 11: hostile input, bad config and leaked secrets, each through ``python -m recipe``.

Every case runs the CLI in a subprocess against the stub server and asserts the exact outcome
(records in, records out, error records), the exit code, at most one ``error:`` line and no
traceback. Where the CLI adds nothing (a file that changes while it is read), the stage is used.
"""

from __future__ import annotations

import base64
import json
import re
import resource
import signal
from pathlib import Path

import pytest

from conftest import cli, parts, write_jsonl

KEY = "sk-hostile-KEY1234567"
ENV_KEY = "sk-from-env-KEY7654321"
STUB = ["backend=openai", "model.name=m", "progress=false"]
WITH_KEY = {"OPENAI_API_KEY": ENV_KEY}  # every run has a key in the environment, which must never show anywhere


def check(result, rc: int, needle: str | None = None) -> None:
    """The exit code, no traceback anywhere, and at most one ``error:`` line (the only stderr line)."""
    text = result.stdout + result.stderr
    assert result.returncode == rc, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text, text[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) <= 1, result.stderr
    if needle is not None:
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert lines == errors and len(errors) == 1, result.stderr
        assert needle in errors[0], errors[0]


def no_secret_anywhere(tmp_path: Path, results, *secrets: str) -> None:
    """Every file under ``tmp_path`` (run folders, outputs, cache) and every output line."""
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
    for result in results:
        for secret in secrets:
            assert secret not in result.stdout and secret not in result.stderr


# --- 1. secrets -------------------------------------------------------------------------------

def test_a_key_never_reaches_disk_or_screen(tmp_path, stub_server):
    server = stub_server(api_key=KEY)
    src = write_jsonl(tmp_path / "cwd" / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    base = [*STUB, f"backend.api_base={server.base_url}", f"input={src}", f"backend.api_key={KEY}"]
    single = cli(tmp_path, *base, env=WITH_KEY)
    check(single, 0)
    assert single.stdout.splitlines()[-1].startswith("2 records, 0 failed, 2 requests")
    sweep = cli(tmp_path, "-m", *base, "sampling.temperature=0.1,0.2", env=WITH_KEY)
    check(sweep, 0)
    assert "[HYDRA] \t#0 : " in sweep.stdout and "backend.api_key=${oc.env:" in sweep.stdout  # pasteable
    assert len(list((tmp_path / "runs").rglob("multirun.yaml"))) == 1
    # a failing job: Hydra prints the job's overrides, the key as the pasteable reference; every
    # record fails the stage added (json.loads of a record), so the job ends in exit code 3
    crash = cli(tmp_path, "-m", *base, "+recipe.stages.check={_target_: recipe.stages.FilterStage, predicate: 'json:loads'}",
                env=WITH_KEY)
    check(crash, 3)
    launched = [line for line in crash.stdout.splitlines() if "[HYDRA] \t#0 : " in line]
    assert len(launched) == 1 and "backend.api_key=${oc.env:" in launched[0], crash.stdout
    assert crash.stderr.startswith("job #0: 2 records failed"), crash.stderr
    # a key from the environment, printed resolved
    resolved = cli(tmp_path, "--cfg", "job", "--resolve", "backend=openai", env=WITH_KEY)
    assert resolved.returncode == 0 and "  api_key: '***'\n" in resolved.stdout, resolved.stdout
    assert f"Bearer {KEY}" in server.stats()["auth_headers"]  # the key was used, only on the wire
    saved = [p.name for p in (tmp_path / "runs").rglob(".hydra/*.yaml")]
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= set(saved)
    no_secret_anywhere(tmp_path, [single, sweep, crash, resolved], KEY, ENV_KEY)


# --- 2. 403 -----------------------------------------------------------------------------------

def test_403_stops_the_run_with_one_line(tmp_path, stub_server):
    server = stub_server(status=403)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 "backend.max_concurrency=1", f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, 2, "403")
    assert server.stats()["requests"] < 40  # stopped, not one failed request per record
    assert parts(tmp_path / "out") == ([], [])


# --- 3. reserved fields -----------------------------------------------------------------------

def test_records_carrying_reserved_fields_get_their_own_error_records(tmp_path, stub_server):
    server = stub_server()
    rows = [{"prompt": "a"}, {"prompt": "b", "_error": "mine"}, {"prompt": "c", "_error": None},
            {"prompt": "d", "_id": 7}, {"prompt": "e", "_source": "crm"}, {"prompt": "f", "_parent": "p1"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, 3)
    assert result.stdout.splitlines()[-1].startswith("1 record, 5 failed, 1 request ")
    good, bad = parts(tmp_path / "out")
    assert [g["response"] for g in good] == ["echo: a"]
    assert sorted(b["record"]["prompt"] for b in bad) == ["b", "c", "d", "e", "f"]
    assert {(b["_error"]["stage"], b["_error"]["class"]) for b in bad} == {("read", "InputError")}
    by_prompt = {b["record"]["prompt"]: b["_error"]["message"] for b in bad}
    assert "field _error is reserved" in by_prompt["b"] and "field _id is reserved" in by_prompt["d"]
    assert "field _source is reserved" in by_prompt["e"] and "field _parent is reserved" in by_prompt["f"]
    assert len({b["_id"] for b in bad}) == 5


def test_an_errors_file_fed_back_in_is_retried(tmp_path, stub_server):
    failing, working = stub_server(fail_500=1.0), stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in ("a", "b", "c")])
    first = cli(tmp_path, *STUB, f"backend.api_base={failing.base_url}", f"input={src}",
                "backend.num_retries=0", f"output_dir={tmp_path / 'first'}", env=WITH_KEY)
    check(first, 3)
    _, bad = parts(tmp_path / "first")
    assert len(bad) == 3 and {b["_error"]["class"] for b in bad} == {"ServerError"}
    errors_file = next((tmp_path / "first" / "errors").glob("part-*.jsonl"))
    retry = cli(tmp_path, *STUB, f"backend.api_base={working.base_url}", f"input={errors_file}",
                f"output_dir={tmp_path / 'retry'}", env=WITH_KEY)
    check(retry, 0)
    assert retry.stdout.splitlines()[-1].startswith("3 records, 0 failed, 3 requests")
    good, bad = parts(tmp_path / "retry")
    assert bad == [] and sorted(g["response"] for g in good) == ["echo: a", "echo: b", "echo: c"]
    # the retried records keep the identity they had: _id and _source point at the first input
    assert {g["_id"] for g in good} == {b["_id"] for b in parts(tmp_path / "first")[1]}
    assert sorted(g["_source"] for g in good) == ["in.jsonl:1", "in.jsonl:2", "in.jsonl:3"]


# --- 4. null, blank and structured prompts ------------------------------------------------------

def test_null_and_blank_prompts_are_input_errors_and_structures_are_json(tmp_path, stub_server):
    server = stub_server()
    rows = [{"prompt": None}, {"prompt": ""}, {"prompt": "   "}, {"prompt": ["a", "b"]}, {"prompt": {"k": 1}},
            {"prompt": "ok"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, 3)
    assert result.stdout.splitlines()[-1].startswith("3 records, 3 failed, 3 requests")
    good, bad = parts(tmp_path / "out")
    assert sorted(g["response"] for g in good) == sorted(['echo: ["a", "b"]', 'echo: {"k": 1}', "echo: ok"])
    assert sorted(json.dumps(b["record"]["prompt"]) for b in bad) == sorted(['null', '""', '"   "'])
    assert {b["_error"]["class"] for b in bad} == {"InputError"}
    assert sorted(b["_error"]["message"].rsplit(" ", 1)[1] for b in bad) == ["blank", "blank", "null"]


# --- 5. bare CR, 7. BOM ----------------------------------------------------------------------

@pytest.mark.parametrize("raw, rc, good_expected, malformed", [
    (b'{"prompt":\r "a"}\n{"prompt": "b",\r"n": 2}\n', 0, [("in.jsonl:1", "echo: a"), ("in.jsonl:2", "echo: b")], 0),
    (b'{"prompt": "a"}\r{"prompt": "b"}\r', 3, [], 1),
    (b"\xef\xbb\xbf" + '{"prompt": "caf\u00e9"}\n{"prompt": "b"}\n'.encode(), 0,
     [("in.jsonl:1", "echo: caf\u00e9"), ("in.jsonl:2", "echo: b")], 0),
], ids=["a-bare-cr-inside-a-line-does-not-split-the-record",
        "cr-only-line-endings-are-one-malformed-line-not-two-records-with-one-id", "a-utf8-bom-is-read-as-utf8"])
def test_line_endings_and_bom(tmp_path, stub_server, raw, rc, good_expected, malformed):
    server = stub_server()
    src = tmp_path / "in.jsonl"
    src.write_bytes(raw)
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, rc)
    good, bad = parts(tmp_path / "out")
    assert sorted((g["_source"], g["response"]) for g in good) == good_expected
    assert len(bad) == malformed and server.stats()["requests"] == len(good_expected)
    for b in bad:
        assert b["_error"]["where"].endswith("in.jsonl:1") and "malformed JSON" in b["_error"]["message"]


# --- 6. the input changes during the run ----------------------------------------------------------

def test_an_input_truncated_after_planning_is_an_error_naming_the_file(tmp_path):
    from recipe.errors import InputError
    from recipe.stages import ReadStage

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    bag = ReadStage(path=str(src), partition_size=8)(None)  # blocks planned on the whole file
    src.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(8)))
    with pytest.raises(InputError) as info:
        bag.compute(scheduler="sync")
    assert str(src) in str(info.value) and "changed during the run" in str(info.value)
    assert re.search(r"lines (9|17|25|33) and after are gone", str(info.value))  # a block past the new end


# --- 8. binary Parquet columns ------------------------------------------------------------------

def test_binary_parquet_columns_are_written_as_base64(tmp_path, stub_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    server = stub_server()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "blob": [b"\x00\xff", b"hi"]}), src)
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, 0)
    good, bad = parts(tmp_path / "out")
    assert bad == []
    assert sorted((g["prompt"], g["blob"]) for g in good) == [("a", "AP8="), ("b", "aGk=")]
    assert base64.b64decode(good[0]["blob"]) in (b"\x00\xff", b"hi")


# --- 9. backend.timeout is a deadline per attempt --------------------------------------------------

def test_timeout_bounds_the_whole_attempt_not_each_read(tmp_path, stub_server):
    server = stub_server(drip=1.0)  # a ~300-byte reply at one byte per second
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 "backend.timeout=3", "backend.num_retries=0", f"output_dir={tmp_path / 'out'}", timeout=90, env=WITH_KEY)
    check(result, 3)
    good, bad = parts(tmp_path / "out")
    assert good == [] and len(bad) == 1
    assert bad[0]["_error"]["class"] == "RequestTimeoutError" and "backend.timeout=3" in bad[0]["_error"]["message"]


# --- 10. truncated and empty answers ---------------------------------------------------------------

def test_truncated_answers_follow_on_truncated_and_are_never_cached_as_good(tmp_path, stub_server):
    server = stub_server(finish_reason="length")
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    base = [*STUB, f"backend.api_base={server.base_url}", f"input={src}"]

    default = cli(tmp_path, *base, f"output_dir={tmp_path / 'error'}", env=WITH_KEY)
    check(default, 3)
    good, bad = parts(tmp_path / "error")
    assert good == [] and [b["_error"]["class"] for b in bad] == ["TruncatedError"] * 2
    assert server.stats()["requests"] == 2

    server.reset()
    retried = cli(tmp_path, *base, "backend.on_truncated=retry", "backend.num_retries=2",
                  f"output_dir={tmp_path / 'retry'}", env=WITH_KEY)
    check(retried, 3)
    assert server.stats()["requests"] == 6  # not cached: asked again, 3 attempts each
    assert [b["_error"]["class"] for b in parts(tmp_path / "retry")[1]] == ["TruncatedError"] * 2

    server.reset()
    kept = cli(tmp_path, *base, "backend.on_truncated=keep", f"output_dir={tmp_path / 'keep'}", env=WITH_KEY)
    check(kept, 0)
    assert server.stats()["requests"] == 2
    assert sorted(g["response"] for g in parts(tmp_path / "keep")[0]) == ["echo: a", "echo: b"]


@pytest.mark.parametrize("reply", ["null", "empty"])
def test_an_empty_answer_is_never_a_success_nor_cached(tmp_path, stub_server, reply):
    server = stub_server(reply=reply)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    base = [*STUB, f"backend.api_base={server.base_url}", f"input={src}", "backend.on_truncated=keep"]
    for attempt in ("first", "second"):
        result = cli(tmp_path, *base, f"output_dir={tmp_path / attempt}", env=WITH_KEY)
        check(result, 3)
        good, bad = parts(tmp_path / attempt)
        assert good == [] and [b["_error"]["class"] for b in bad] == ["EmptyAnswerError"] * 2
    assert server.stats()["requests"] == 4  # the second run asked again: nothing was cached


# --- 11. Jinja's sandbox ----------------------------------------------------------------------

def test_a_template_leaving_the_sandbox_is_one_line_naming_it(tmp_path, stub_server):
    server = stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}",
                 """recipe.prompt='{{ "".__class__.__mro__ }}'""", f"output_dir={tmp_path / 'out'}", env=WITH_KEY)
    check(result, 2, "sandbox")
    assert "__class__.__mro__" in result.stderr
    assert server.stats()["requests"] == 0


# --- 12. unwritable folders, full disk ----------------------------------------------------------

@pytest.mark.parametrize("key, where", [("output_dir", "proc"), ("output_dir", "file"), ("cache.dir", "proc"),
                                        ("cache.dir", "file")])
def test_an_unwritable_folder_is_refused_before_the_first_request(tmp_path, stub_server, key, where):
    server = stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    # /proc exists on every Linux and takes no new files, even from root; a file in the path cannot
    # be a folder. (A run used to send its requests and fail writing the results.)
    folder = "/proc" if where == "proc" else str(src / "sub")
    extra = [f"{key}={folder}"] + ([f"output_dir={tmp_path / 'out'}"] if key != "output_dir" else [])
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}", *extra, env=WITH_KEY)
    check(result, 2, f"{key} {folder} cannot be written")
    assert server.stats()["requests"] == 0


def _small_disk() -> None:
    """A disk that fills at 30 kB per file: writes past it fail (EFBIG) instead of killing us."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))


@pytest.mark.parametrize("cache", ["false", "true"])
def test_a_full_disk_is_one_line_and_the_rerun_completes(tmp_path, stub_server, cache):
    server = stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"{i} " + "x" * 5000} for i in range(10)])
    base = [*STUB, f"backend.api_base={server.base_url}", f"input={src}", f"cache.enabled={cache}",
            f"output_dir={tmp_path / 'out'}"]
    full = cli(tmp_path, *base, preexec_fn=_small_disk, env=WITH_KEY)
    check(full, 2, "free some space and run the same command again")
    again = cli(tmp_path, *base, env=WITH_KEY)
    check(again, 0)
    good, bad = parts(tmp_path / "out")
    assert bad == [] and sorted(g["prompt"] for g in good) == sorted(f"{i} " + "x" * 5000 for i in range(10))


# --- 13. YAML syntax errors in a user's config dir -----------------------------------------------

def test_a_yaml_syntax_error_in_a_config_dir_is_one_line_with_file_and_line(tmp_path):
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("model:\n  name: [oops\n  context_length: 5\n")
    result = cli(tmp_path, "--config-dir", str(tmp_path / "myconf"), "+model=broken", env=WITH_KEY)
    check(result, 2, f"{conf / 'broken.yaml'}:3:")
    assert not (tmp_path / "runs").exists()


# --- 14. a failed job of a sweep does not stop the next ------------------------------------------

def test_a_sweep_goes_on_after_a_failed_job_and_the_exit_code_says_so(tmp_path, stub_server):
    refusing, working = stub_server(api_key="another-key-123"), stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    result = cli(tmp_path, "-m", *STUB, f"input={src}",
                 f"backend.api_base={refusing.base_url},{working.base_url}", env=WITH_KEY)
    check(result, 2, "job #0: ")
    assert "Incorrect API key" in result.stderr
    outputs = [Path(l.removeprefix("output: ")) for l in result.stdout.splitlines() if l.startswith("output: ")]
    assert len(outputs) == 1 and result.stdout.index("#1 : ") < result.stdout.index("output: ")  # job #1 ran
    assert "2 records, 0 failed, 2 requests" in result.stdout
    good, bad = parts(outputs[0])
    assert sorted(g["response"] for g in good) == ["echo: a", "echo: b"] and bad == []


# --- 15. values refused before anything runs -------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("backend.provider=nosuchprovider", "backend.provider='nosuchprovider'"),
    ("backend.api_base=notaurl", "backend.api_base='notaurl'"),
    ("+recipe.stages.generate.sampling.temprature=0.5", "recipe.stages.generate.sampling.temprature: unknown key"),
    ("+recipe.stages.generate.sampling.temperature=-1", "recipe.stages.generate.sampling.temperature=-1"),
    ("+recipe.stages.generate.n=0", "recipe.stages.generate.n=0"),
    ("+recipe.stages.generate.n=-2", "recipe.stages.generate.n=-2"),
    ("model.context_length=-1", "model.context_length=-1"),
    ("dask.threads_per_worker=-1", "dask.threads_per_worker=-1"),
    ("backend.on_truncated=sometimes", "backend.on_truncated='sometimes'"),
])
def test_unchecked_values_are_refused_in_one_line_before_anything_runs(tmp_path, stub_server, override, needle):
    server = stub_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    args = [*STUB, f"input={src}", override]
    if not override.startswith("backend.api_base"):
        args.append(f"backend.api_base={server.base_url}")
    result = cli(tmp_path, *args, env=WITH_KEY)
    check(result, 2, needle)
    assert server.stats()["requests"] == 0 and not (tmp_path / "runs").exists()


# --- 16. a 401 on a LocalCluster -----------------------------------------------------------------

def test_a_401_on_a_local_cluster_prints_only_our_line(tmp_path, stub_server):
    server = stub_server(api_key="another-key-123")
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    result = cli(tmp_path, *STUB, f"backend.api_base={server.base_url}", f"input={src}", "dask.n_workers=1",
                 f"output_dir={tmp_path / 'out'}", timeout=180, env=WITH_KEY)
    check(result, 2, "Incorrect API key")
    assert "Compute Failed" not in result.stdout + result.stderr
    assert result.stdout.strip() == ""
