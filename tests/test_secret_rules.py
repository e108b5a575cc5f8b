"""Issue 21, items 1, 2, 3, 7, 16 and 17: no key in what recipe writes, uploads or prints to paste;
no file of the user's overwritten; a config's ``_target_`` only ever names a class of its kind.

Each case goes through ``python -m recipe`` against the stub server (or the Hub stub), as a user
would meet it, and reads what happened off the disk, the wire and the stub's stats.
"""

from __future__ import annotations

import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_prompts
from recipe.testing.hub_stub import HubStub

NESTED_KEY = "nvapi-SuperSecret123456"
PLAIN_KEY = "Zq8Lm3Np5Rt7Vx9Bc2Df4Gh6Jk1Ws0Yu3A"  # 34 characters, no sk-/nvapi- prefix to recognise it by


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``secret``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_error_line(result, needle: str) -> str:
    """Exit 2, no traceback, and stderr is exactly one ``error:`` line holding ``needle``."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    assert needle in lines[0], lines[0]
    return lines[0]


# --- item 1: a key nested in an override reaches no file, local or uploaded -------------------------

def test_a_key_nested_in_a_backend_override_reaches_no_file_and_no_upload(stub_server, tmp_path):
    server = stub_server(api_key=NESTED_KEY)  # the key is really used: the stub refuses any other
    source = write_prompts(tmp_path / "cwd" / "in.jsonl", 3)
    out = tmp_path / "out"
    backend = f'backend={{provider:openai,api_base:"{server.base_url}",api_key:{NESTED_KEY}}}'
    args = ["recipe.stages.write.format=hf", "hub.repo_id=me/ds", backend, "model.name=stub-model",
            f"input={source}", f"output_dir={out}", "progress=false"]
    with HubStub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_HUBTOKEN123456"}
        result = cli(tmp_path, *args, env=env, check_exit=0)
        pushed = hub.files["me/ds"]
        assert sorted(pushed) == ["README.md", "data/part-00000.parquet"]
        assert server.stats()["auth_headers"] == [f"Bearer {NESTED_KEY}"]
        for secret in (NESTED_KEY, "hf_HUBTOKEN123456"):
            assert [name for name, data in pushed.items() if secret.encode() in data] == []
            assert files_holding(tmp_path, secret) == []
            assert secret not in result.stdout + result.stderr
        # the card's "Produced by" command is one a user may paste: the key is read from the environment
        card = (out / "README.md").read_text()
        block = card.split("Produced by:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
        command, note = block.strip().splitlines()
        assert "***" not in command and note.startswith("# the API key is not repeated") and "OPENAI_API_KEY" in note
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "recipe"]
        again = cli(tmp_path, *words[3:], env={**env, "OPENAI_API_KEY": NESTED_KEY}, check_exit=0)
    assert "3 records, 0 failed" in again.stdout  # the same run, resumed with the key from the environment
    assert server.stats()["auth_headers"] == [f"Bearer {NESTED_KEY}"]  # never a masked key on the wire
    assert files_holding(tmp_path, NESTED_KEY) == []


# --- item 2: redact first, then cut ------------------------------------------------------------------

class EchoingServer:
    """An OpenAI-compatible endpoint that refuses every request with a 400 whose message echoes the
    request's key several times around the 500th character (as a careless proxy might)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                # the key every 35 characters from 430 to 605: one of them straddles the cut
                message = "x" * 430 + " ".join([key] * 6) + " is not allowed"
                body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_key_echoed_across_the_message_cut_leaves_no_part_in_errors(tmp_path):
    server = EchoingServer()
    try:
        source = write_prompts(tmp_path / "in.jsonl", 2)
        out = tmp_path / "out"
        result = cli(tmp_path, "backend=openai", f"backend.api_base={server.base_url}", f"backend.api_key={PLAIN_KEY}",
                     "model.name=m", "progress=false", "backend.num_retries=0", f"input={source}", f"output_dir={out}")
    finally:
        server.stop()
    assert result.returncode == 3, result.stderr[-3000:]
    pieces = {PLAIN_KEY[i:i + 8] for i in range(len(PLAIN_KEY) - 7)}  # any 8 characters of the key
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        text = path.read_bytes().decode("utf-8", "replace")
        assert [piece for piece in pieces if piece in text] == [], path
    rows = error_rows(out)
    assert len(rows) == 2 and {r["_error"]["class"] for r in rows} == {"BadRequestError"}
    assert all("***" in r["_error"]["message"] and len(r["_error"]["message"]) <= 500 for r in rows)


# --- item 3: a printed command pasted works ---------------------------------------------------------

def test_the_resume_command_has_no_key_and_pasted_with_the_variable_it_names_resumes(stub_server, tmp_path):
    server = stub_server(api_key=PLAIN_KEY, usage=(1000, 500))  # gpt-4o at litellm's price: $0.0075 a request
    source = write_prompts(tmp_path / "in.jsonl", 20)
    args = ["backend=openai", f"backend.api_base={server.base_url}", f"backend.api_key={PLAIN_KEY}",
            "model.name=gpt-4o", "progress=false", f"input={source}", "sampling.max_tokens=500",
            "dask.partition_size=5", "budget.max_usd=0.05"]
    first = cli(tmp_path, *args, check_exit=4)
    (line,) = [ln for ln in first.stderr.splitlines() if "resume with a higher budget: " in ln]
    command = shlex.split(line.split("resume with a higher budget: ", 1)[1])
    assert PLAIN_KEY not in first.stderr and "***" not in line
    assert "backend.api_key=${oc.env:OPENAI_API_KEY}" in command
    assert "note: the API key is not repeated" in first.stderr and "export OPENAI_API_KEY first" in first.stderr
    sent = server.stats()["requests"]
    second = cli(tmp_path, *command[3:], env={"OPENAI_API_KEY": PLAIN_KEY})
    assert second.returncode in (0, 4), second.stderr[-3000:]
    assert server.stats()["requests"] > sent  # the pasted command resumed the run and was let in
    assert server.stats()["auth_headers"] == [f"Bearer {PLAIN_KEY}"]  # never '***' as the key


def test_sweep_lines_print_overrides_that_work_when_pasted(stub_server, tmp_path):
    server = stub_server(api_key=PLAIN_KEY)
    source = write_prompts(tmp_path / "in.jsonl", 1)
    sweep = cli(tmp_path, "-m", "backend=openai", f"backend.api_base={server.base_url}", f"backend.api_key={PLAIN_KEY}",
                "model.name=m", "progress=false", f"input={source}", "sampling.temperature=0.1,0.2",
                env={"MY_API_KEY": PLAIN_KEY}, check_exit=0)
    lines = [line for line in sweep.stdout.splitlines() if "] \t#" in line]
    assert len(lines) == 2, sweep.stdout
    assert all("backend.api_key=${oc.env:MY_API_KEY}" in line and "***" not in line for line in lines), lines
    assert PLAIN_KEY not in sweep.stdout + sweep.stderr


# --- item 7: never overwrite a file recipe did not write --------------------------------------------

def test_format_hf_refuses_a_folder_holding_the_users_readme(stub_server, tmp_path):
    server = stub_server()
    cwd = tmp_path / "cwd"
    source = write_prompts(cwd / "in.jsonl", 2)
    (cwd / "README.md").write_text("# my project\n\nmy own notes\n")
    hf = [*stub_overrides(server), f"input={source}", "recipe.stages.write.format=hf"]
    refused = cli(tmp_path, *hf, "output_dir=.")
    one_error_line(refused, "README.md")
    assert (cwd / "README.md").read_text() == "# my project\n\nmy own notes\n"
    assert server.stats()["requests"] == 0 and not (cwd / "data").exists()
    # a folder of its own: the card is written, and a rerun may rewrite the card it wrote
    for _ in range(2):
        cli(tmp_path, *hf, f"output_dir={tmp_path / 'ds'}", check_exit=0)
    assert "synthetic data made with recipe" in (tmp_path / "ds" / "README.md").read_text()


# --- item 16: one line for a target that is not a stage; an added stage runs before the write --------

@pytest.mark.parametrize("target", ["collections.OrderedDict", "pathlib.Path", "os.getcwd", "no.such.Stage"])
def test_a_stage_target_that_is_not_a_stage_class_is_one_line(stub_server, tmp_path, target):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    result = cli(tmp_path, *stub_overrides(server), f"input={source}", f"+recipe.stages.extra={{_target_:{target}}}")
    one_error_line(result, f"recipe.stages.extra._target_='{target}'")
    assert server.stats()["requests"] == 0


def test_a_stage_added_with_plus_runs_before_the_write(stub_server, tmp_path):
    server = stub_server()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "keep.py").write_text("def even(record):\n    return int(record['prompt'].split()[-1]) % 2 == 0\n")
    source = write_prompts(tmp_path / "in.jsonl", 10)
    args = [*stub_overrides(server), f"input={source}", f"output_dir={tmp_path / 'out'}",
            "+recipe.stages.keep={_target_:recipe.stages.FilterStage,predicate:'keep:even'}"]
    first = cli(tmp_path, *args, check_exit=0)
    written = outputs(tmp_path / "out")
    assert sorted(r["prompt"] for r in written) == [f"question {i}" for i in (0, 2, 4, 6, 8)]
    assert first.stdout.splitlines()[-1].startswith("5 records, 0 failed, 10 requests")
    again = cli(tmp_path, *args, check_exit=0)  # committed: nothing is done again
    assert server.stats()["requests"] == 10 and "this attempt: 0 requests" in again.stdout
    assert again.stdout.splitlines()[-1].startswith("5 records, 0 failed")


# --- item 17: printing a config builds nothing ------------------------------------------------------

def test_cfg_job_builds_no_stage_and_a_non_stage_target_is_refused(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "victim").write_text("precious")
    result = cli(tmp_path, "--cfg", "job", "+recipe.stages.victim={_target_:tarfile.TarFile,mode:w}")
    one_error_line(result, "recipe.stages.victim._target_='tarfile.TarFile': not a Stage class")
    assert (cwd / "victim").read_text() == "precious"
    fine = cli(tmp_path, "--cfg", "job", "recipe=generate", check_exit=0)
    assert "WriteStage" in fine.stdout


def test_a_formatter_target_that_is_not_a_formatter_is_one_line(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 2)
    result = cli(tmp_path, *stub_overrides(server), f"input={source}", "formatter._target_=pathlib.Path")
    one_error_line(result, "formatter._target_='pathlib.Path': not a ConversationFormatter class")
    assert server.stats()["requests"] == 0
