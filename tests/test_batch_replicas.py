"""Batches over a list of replicas (``backend.api_base: [URL, ...]`` with ``backend.batch=true``, issue 26).

A batch lives on the replica that created it: it goes to the first replica that takes the
connection, its URL is recorded with it, and a resumed run polls that replica, whatever the list
says now. Real stub servers, a real run killed with SIGKILL and resumed through the CLI.
"""

from __future__ import annotations

import json

import pytest
from conftest import cli, cli_process, outputs, write_prompts
from test_batch_resume import COMPLETION, PROMPT, batch_price, kill_when, run_folder, stats_of

N = 20


def replica_args(urls: list[str], source, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base=[{','.join(urls)}]", "backend.api_key=test-key",
            "model.name=gpt-4o", "progress=false", f"input={source}", "sampling.max_tokens=500",
            f"dask.partition_size={N}", "backend.batch=true", "backend.batch_poll_seconds=0.2", *extra]


@pytest.mark.slow  # kills a run and resumes it
def test_cli_batch_goes_to_the_first_live_replica_and_a_resume_polls_that_replica(stub_server, tmp_path):
    dead = stub_server()
    dead_url = dead.base_url
    dead.stop()  # the list's first replica refuses connections
    holder = stub_server(usage=(PROMPT, COMPLETION), batch_seconds=6)
    source = write_prompts(tmp_path / "in.jsonl", N)
    proc = cli_process(tmp_path, *replica_args([dead_url, holder.base_url], source, "budget.max_usd=10"),
                       start_new_session=True)
    kill_when(proc, lambda: list((tmp_path / "runs").glob("*/batches/*.json")), "a batch was recorded")
    folder = run_folder(tmp_path)
    (record,) = [json.loads(p.read_text()) for p in (folder / "batches").glob("*.json")]
    assert record["api_base"] == holder.base_url
    assert holder.stats()["batches_created"] == 1 and holder.stats()["batch_lines"] == N

    # resumed with a live replica first in the list: the batch is polled where it lives, nothing sent again
    newcomer = stub_server(usage=(PROMPT, COMPLETION))
    result = cli(tmp_path, *replica_args([newcomer.base_url, holder.base_url], source, "budget.max_usd=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(r["prompt"] for r in outputs(folder)) == sorted(f"question {i}" for i in range(N))
    assert (holder.stats()["batches_created"], holder.stats()["batch_lines"]) == (1, N), "nothing submitted twice"
    assert newcomer.stats()["batches_created"] == 0 and newcomer.stats()["requests"] == 0
    assert holder.stats()["by_path"]["/v1/files/content"] == 1, "the answers were downloaded from the holder"
    stats = stats_of(tmp_path)
    assert stats["cost_usd"] == pytest.approx(N * batch_price("gpt-4o")), "each answer paid once"
