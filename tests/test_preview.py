"""``preview=N`` through the CLI on the stub server: its exact output, nothing written to the run
folder, and the following full run served from the cache for the previewed records."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl


def _masked(text: str) -> str:
    """The output with the wall-clock numbers (a stage's seconds, the time estimate) masked."""
    text = re.sub(r"(?m)^(\S+(?:\s+\d+){7})\s+\d+\.\d\d$", r"\1  <s>", text)
    return re.sub(r"(?m)^  time: about .* of requests at", "  time: about <t> of requests at", text)


def test_preview_prints_records_stages_and_an_estimate_and_the_full_run_reuses_its_answers(tmp_path, stub_server):
    server = stub_server(usage=(5, 7))  # every answer: 5 prompt and 7 completion tokens
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(10)])
    args = ["recipe=generate", f"input={tmp_path / 'p.jsonl'}", "model.price.input_per_mtok=1",
            "model.price.output_per_mtok=2", *stub_overrides(server)]
    preview = cli(tmp_path, *args, "preview=3", check_exit=0)
    assert server.stats()["requests"] == 3
    assert not (tmp_path / "runs").exists()  # no run folder, no .hydra/, no log
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == []

    full = cli(tmp_path, *args, check_exit=0)
    assert server.stats()["requests"] == 10  # 0 requests for the 3 previewed records: the cache answered
    folder = Path(full.stdout.splitlines()[0].removeprefix("output: "))
    stats = json.loads((folder / "stats.json").read_text())
    assert (stats["requests"], stats["cache_hits"]) == (7, 3)
    written = {r["_source"]: r for r in outputs(folder)}
    records = []
    for index, line in enumerate((1, 2, 3), 1):
        record = written[f"p.jsonl:{line}"]  # what the full run wrote for the previewed records
        records += [f"record {index} of 3: _id {record['_id']} (from p.jsonl:{line})",
                    f"  read: prompt = {record['prompt']!r}", f"  generate: response = {record['response']!r}"]
    total_tokens = stats["prompt_tokens"] + stats["completion_tokens"] + 3 * (5 + 7)  # the full run's + the preview's
    cost = stats["cost_usd"] / stats["requests"] * 10
    expected = "\n".join([
        f"preview: 3 of 10 input records through read, generate (nothing written to {folder})", "",
        *records, "",
        "stage     in  out  kept  errors  requests  cached  tokens  seconds",
        "read       3    3     3       0         0       0       0     0.00",
        "generate   3    3     3       0         3       0      36     0.00", "",
        "estimate for the full run (10 input records, at the rates of this preview):",
        f"  records: about {stats['records']}",
        "  requests: about 10 (3 already answered in the request cache)",
        f"  tokens: about {total_tokens} (prompt 50, completion 70)",
        f"  cost: about ${cost:.4f}",
        "  time: about 1 ms of requests at backend.max_concurrency=32", ""])
    assert _masked(preview.stdout) == _masked(expected)


def test_preview_caps_fan_outs_and_shows_error_records_with_their_reason(tmp_path, stub_server):
    server = stub_server()
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": "<<empty>> no answer"}, {"prompt": "later"}])
    preview = cli(tmp_path, "recipe=generate", f"input={tmp_path / 'p.jsonl'}", "backend.num_retries=0",
                  *stub_overrides(server), "preview=2", check_exit=0)
    lines = preview.stdout.splitlines()
    full = cli(tmp_path, "recipe=generate", f"input={tmp_path / 'p.jsonl'}", "backend.num_retries=0",
               *stub_overrides(server), check_exit=3)
    [failed] = error_rows(Path(full.stdout.splitlines()[0].removeprefix("output: ")))
    info = failed["_error"]
    assert f"  error in stage generate at p.jsonl:2: {info['class']}: {info['message']}" in lines
    assert "  failures in generate: 50% (1 of 2 records became error records)" in lines

    # open_qa fans out: 3 macro topics per seed, each explode capped at 2 children per parent
    server = stub_server()
    preview = cli(tmp_path, "recipe=open_qa", "recipe.n_macro_topics=3", *stub_overrides(server), "preview=1",
                  check_exit=0)
    rows = {line.split()[0]: line.split()[1:5] for line in preview.stdout.splitlines()
            if re.match(r"^\S+(\s+\d+){7}\s+\d+\.\d\d$", line)}
    assert rows["macro_topic"] == ["1", "3", "2", "0"]  # in, out, kept, errors
    assert rows["subtopics"][0] == "2"
    assert server.stats()["requests"] == sum(int(line.split()[5]) for line in preview.stdout.splitlines()
                                             if re.match(r"^\S+(\s+\d+){7}\s+\d+\.\d\d$", line))


def test_preview_of_a_bad_count_is_one_error_line(tmp_path):
    result = cli(tmp_path, "recipe=generate", "preview=0", check_exit=2)
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "preview=0: must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr
