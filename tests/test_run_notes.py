"""What the summary tells a user: an attempt account that cannot be read (issue 21, item 8), why no
record came out, and what a small ``target.records`` pays (item 18)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli, outputs, stub_overrides, write_prompts


def _stats(folder: Path) -> dict:
    return json.loads((folder / "stats.json").read_text())


def _notes(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note: ")]


def test_an_unreadable_attempt_account_is_named_and_the_rest_is_counted(stub_server, tmp_path):
    server = stub_server(usage=(10, 5))
    out = tmp_path / "out"
    args = [*stub_overrides(server), f"output_dir={out}", "dask.partition_size=4",
            f"input={write_prompts(tmp_path / 'a.jsonl', 8)}"]
    cli(tmp_path, *args, check_exit=0)
    first = _stats(out)
    sent = server.stats()["requests"]
    assert first["requests"] == sent
    # attempt 1's account damaged: attempt 2 (nothing left to do) says so
    (out / "attempts" / "attempt-001.json").write_text('{"attempt": 1, "usage": {"requests": 8, "prompt_tok')
    second = cli(tmp_path, *args, check_exit=0)
    assert any("attempts/attempt-001.json" in note and "not counted" in note for note in _notes(second)), second.stderr
    assert _stats(out)["requests"] == 0 and _stats(out)["unreadable_attempts"] == ["attempts/attempt-001.json"]
    # a readable account with one damaged count: the other counts still add up
    attempt = json.loads((out / "attempts" / "attempt-002.json").read_text())
    attempt["usage"].update(requests=sent, prompt_tokens="a lot", completion_tokens=5 * sent)
    (out / "attempts" / "attempt-002.json").write_text(json.dumps(attempt))
    third = cli(tmp_path, *args, check_exit=0)
    stats = _stats(out)
    assert stats["requests"] == sent and stats["completion_tokens"] == 5 * sent and stats["prompt_tokens"] == 0
    assert stats["unreadable_attempts"] == ["attempts/attempt-001.json", "attempts/attempt-002.json (usage.prompt_tokens)"]
    assert any("attempt-002.json (usage.prompt_tokens)" in note for note in _notes(third)), third.stderr
    # every count the client keeps is checked, not a list of some of them: each damaged one is named
    from dataclasses import fields

    from recipe.clients.usage import UsageStats

    counters = sorted(f.name for f in fields(UsageStats) if type(f.default) in (int, float) and f.name != "prompt_tokens")
    attempt["usage"].update({name: "damaged" for name in counters}, prompt_tokens=10 * sent)
    (out / "attempts" / "attempt-002.json").write_text(json.dumps(attempt))
    fourth = cli(tmp_path, *args, check_exit=0)
    assert "Traceback" not in fourth.stderr
    named = [f"attempts/attempt-002.json (usage.{name})" for name in counters]
    assert sorted(_stats(out)["unreadable_attempts"]) == sorted(["attempts/attempt-001.json", *named])


def test_a_judge_that_drops_every_record_is_not_called_an_empty_input(stub_server, tmp_path):
    server = stub_server(pick="first")  # the lowest score on every criterion: below min_score
    source = write_prompts(tmp_path / "in.jsonl", 12)
    result = cli(tmp_path, *stub_overrides(server), "recipe=judged_qa", f"input={source}",
                 f"output_dir={tmp_path / 'out'}", check_exit=0)
    assert _stats(tmp_path / "out")["filtered"] == 12
    notes = _notes(result)
    assert notes == ["note: no records were produced: 12 filtered out"], result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = cli(tmp_path, *stub_overrides(server), f"input={empty}", f"output_dir={tmp_path / 'out2'}", check_exit=0)
    assert _notes(result) == ["note: no records were produced: the input is empty"]


def test_target_records_1_pays_for_one_partition_not_a_wave_of_them(stub_server, tmp_path):
    server = stub_server()
    source = write_prompts(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out"
    cli(tmp_path, *stub_overrides(server), f"input={source}", f"output_dir={out}", "target.records=1", check_exit=0)
    assert [r["prompt"] for r in outputs(out)] == ["question 0"]
    plan = json.loads((out / "run.json").read_text())["plan"]
    first_partition = plan[1][1][3] - plan[0][1][3]  # lines in partition 0: [kind, [path, start, end, first line]]
    assert server.stats()["requests"] == first_partition < 32
