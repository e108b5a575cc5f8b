"""Every file under an ``s3://`` output_dir goes through storage (issue 22 §4): dedup's
``keep_removed``, ``format=hf`` and the budget's accounts land in the bucket, and nothing lands
on the local disk under a mangled ``s3:/`` path. (``target.records`` on S3 is in
test_storage_errors.py; a run killed and resumed on S3 in test_storage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli, stub_overrides, write_jsonl

from recipe import storage


def _rows(folder: str, pattern: str = "part-*.jsonl") -> list[dict]:
    return [json.loads(line) for part in storage.listdir(folder, pattern)
            for line in storage.read_text(part).splitlines()]


def _nothing_local(tmp_path: Path) -> None:
    """A path built with ``Path("s3://...")`` collapses to ``s3:/...``: a local folder of that name."""
    assert not [p for p in tmp_path.rglob("s3:*")], sorted(map(str, tmp_path.rglob("s3:*")))


def test_dedup_keep_removed_writes_the_removed_records_into_the_bucket(stub_server, s3_bucket, tmp_path):
    server = stub_server()
    prompts = [f"question {i}" for i in range(10)] + [f"question {i}" for i in range(5)]
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in prompts])
    out = f"{s3_bucket}/out"
    cli(tmp_path, *stub_overrides(server), f"input={source}", f"output_dir={out}", "dask.partition_size=4",
        "+recipe.stages.dedup={_target_:recipe.stages.DedupStage,field:prompt,method:exact,keep_removed:true}",
        check_exit=0)
    kept, removed = _rows(out), _rows(f"{out}/removed/dedup")
    assert sorted(r["prompt"] for r in kept) == sorted(set(prompts))
    assert sorted(r["prompt"] for r in removed) == sorted(prompts[10:])
    assert json.loads(storage.read_text(f"{out}/stats.json"))["deduplicated"] == {"dedup": 5}
    _nothing_local(tmp_path)


def test_format_hf_and_a_budget_on_an_s3_output_dir(stub_server, s3_bucket, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(6)])
    out = f"{s3_bucket}/hf"
    cli(tmp_path, *stub_overrides(server), f"input={source}", f"output_dir={out}", "dask.partition_size=3",
        "recipe.stages.write.format=hf", "budget.max_usd=5", "model.price.input_per_mtok=1000",
        "model.price.output_per_mtok=2000", check_exit=0)
    names = sorted(storage.name(p) for p in storage.listdir(f"{out}/data", "*"))
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    assert "stub-model" in storage.read_text(f"{out}/README.md")  # the dataset card, in the bucket
    stats = json.loads(storage.read_text(f"{out}/stats.json"))
    wire = server.stats()
    assert stats["requests"] == wire["requests"] == 6
    # the budget's spend is the tokens the stub reported, at the given price
    assert stats["budget"]["spent_usd"] == stats["cost_usd"] > 0, stats["budget"]
    assert storage.listdir(f"{out}/attempts", "*.json"), "the attempt's account is in the bucket"
    _nothing_local(tmp_path)


def test_a_batch_run_records_its_batches_in_the_bucket_and_a_rerun_submits_nothing(stub_server, s3_bucket, tmp_path):
    server = stub_server()
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(12)])
    out = f"{s3_bucket}/batch"
    args = [*stub_overrides(server), f"input={source}", f"output_dir={out}", "dask.partition_size=6",
            "backend.batch=true", "backend.batch_poll_seconds=0.2"]
    cli(tmp_path, *args, check_exit=0)
    records = [json.loads(storage.read_text(p)) for p in storage.listdir(f"{out}/batches", "*.json")]
    wire = server.stats()
    assert len(records) == wire["batches_created"] >= 1, (records, wire["batches_created"])
    assert sum(len(r["custom_ids"]) for r in records) == wire["batch_lines"] == 12
    stats = json.loads(storage.read_text(f"{out}/stats.json"))
    assert stats["records"] == 12 and stats["batch"]["recorded"] == len(records)
    cli(tmp_path, *args, check_exit=0)  # the same command: every partition is committed
    assert server.stats()["batches_created"] == wire["batches_created"]
    _nothing_local(tmp_path)
