"""A remote store that cannot be used is one ``error:`` line naming it, never a traceback nor "input
file not found" (issue 21, item 16); ``target.records`` works on an ``s3://`` output_dir (issue 22 §4)."""

from __future__ import annotations

import json

from conftest import cli, stub_overrides, write_prompts

from recipe import storage
from recipe.clients.subprocess_server import free_port


def _no_credentials(monkeypatch, tmp_path) -> None:
    """Nothing where botocore looks for credentials: environment, files, the instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _one_error_line(result, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_an_s3_output_dir_without_credentials_is_one_line(stub_server, s3_bucket, tmp_path, monkeypatch):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 4)
    _no_credentials(monkeypatch, tmp_path)
    result = cli(tmp_path, *stub_overrides(server), f"input={source}", f"output_dir={s3_bucket}/out", timeout=180)
    _one_error_line(result, f"{s3_bucket}/out", "credentials")
    assert server.stats()["requests"] == 0


def test_an_s3_input_without_credentials_is_not_called_missing(stub_server, s3_bucket, tmp_path, monkeypatch):
    server = stub_server()
    storage.atomic_write_bytes(f"{s3_bucket}/in/a.jsonl", b'{"prompt": "question 0"}\n')
    _no_credentials(monkeypatch, tmp_path)
    result = cli(tmp_path, *stub_overrides(server), f"input={s3_bucket}/in/a.jsonl", timeout=180)
    line = _one_error_line(result, f"{s3_bucket}/in/a.jsonl", "credentials")
    assert "not found" not in line


def test_an_s3_endpoint_that_is_down_is_one_line(stub_server, s3_bucket, tmp_path, monkeypatch):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 4)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", down)
    result = cli(tmp_path, *stub_overrides(server), f"input={source}", f"output_dir={s3_bucket}/out", timeout=300)
    _one_error_line(result, f"{s3_bucket}/out", down)
    assert server.stats()["requests"] == 0


def test_target_records_on_an_s3_output_dir_trims_there(stub_server, s3_bucket, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 40)
    out = f"{s3_bucket}/out"
    args = [*stub_overrides(server), f"input={source}", f"output_dir={out}"]
    cli(tmp_path, *args, "target.records=5", check_exit=0)
    rows = [json.loads(line) for part in storage.listdir(out, "part-*.jsonl")
            for line in storage.read_text(part).splitlines()]
    assert [r["prompt"] for r in rows] == [f"question {i}" for i in range(5)]
    assert json.loads(storage.read_text(f"{out}/stats.json"))["records"] == 5
    cli(tmp_path, *args, check_exit=0)  # then the whole input: the trimmed partition is finished
    rows = [json.loads(line) for part in storage.listdir(out, "part-*.jsonl")
            for line in storage.read_text(part).splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(f"question {i}" for i in range(40))
    assert server.stats()["requests"] == 40
