"""WriteStage(format="hf"): a directory datasets.load_dataset reads in full, its card, the Hub push."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import recipe
from recipe.errors import HubError
from recipe.testing.hub_stub import HubStub

from conftest import cli

SECRET = "sk-test-HFSECRET42"


def card_parts(directory: Path) -> tuple[dict, str]:
    text = (directory / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def write_prompts(path: Path) -> None:
    path.write_text('{"prompt": "alpha"}\n{"prompt": "beta", "extra": 3}\nnot json\n{"prompt": "gamma"}\n')


def test_cli_run_loads_with_datasets_and_the_card_describes_it(stub_server, tmp_path):
    import datasets

    server = stub_server(api_key=SECRET)
    source = tmp_path / "in.jsonl"
    write_prompts(source)
    out = tmp_path / "out"
    # one malformed line: a failed record, the rest written (exit 3)
    cli(tmp_path, "recipe=generate", f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
        "backend.api_key=${oc.env:TEST_KEY}", "model.name=stub-model", "recipe.stages.write.format=hf",
        f"output_dir={out}", "progress=false", "dask.partition_size=2", env={"TEST_KEY": SECRET}, timeout=180,
        check_exit=3)
    ds = datasets.load_dataset(str(out), split="train")
    assert sorted(zip(ds["prompt"], ds["response"])) == [("alpha", "echo: alpha"), ("beta", "echo: beta"),
                                                        ("gamma", "echo: gamma")]
    assert sorted(ds["extra"], key=str) == [3, None, None]  # a field of one partition only
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert [json.loads(line)["_error"]["class"] for line in (out / "errors" / "part-00001.jsonl").read_text().splitlines()] \
        == ["InputError"]
    meta, body = card_parts(out)
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert meta["size_categories"] == ["n<1K"]
    assert {f["name"]: f["dtype"] for f in meta["dataset_info"]["features"]}["response"] == "string"
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 3
    assert "| recipe | `generate` |" in body and "| model | `stub-model` |" in body and "| backend | `openai` |" in body
    assert "| records | 3 |" in body and "| failed records (kept out of the dataset, in `errors/`) | 1 (InputError: 1) |" in body
    assert "| requests | 3 (0 from the cache) |" in body and "| cost | unknown" in body
    assert '"temperature": 0.7' in body
    assert f"python -m recipe recipe=generate input={source} backend=openai" in body
    assert "'backend.api_key=${oc.env:TEST_KEY}'" in body  # a command to paste: the key read from the environment
    assert SECRET not in (out / "README.md").read_text()


def test_shards_with_different_fields_and_types_load_as_one_dataset(tmp_path):
    import dask.bag as db
    import datasets

    from recipe.stages import WriteStage
    from recipe.stages.io.hf_dataset import finish

    records = [{"_id": "a", "text": "one", "note": None, "score": 1},
               {"_id": "b", "text": "two", "note": None, "score": 2},
               {"_id": "c", "text": "three", "note": "set here", "score": {"helpfulness": 3}},
               {"_id": "d", "text": "four", "tags": ["x", "y"], "score": {"helpfulness": 4}}]
    out = tmp_path / "ds"
    parts = WriteStage(path=str(out), format="hf")(db.from_sequence(records, npartitions=2)).compute(scheduler="sync")
    assert [p["records"] for p in parts] == [2, 2]
    finish(out, {"records": 4, "failed": 0}, {"recipe": {"name": "mine"}})
    ds = datasets.load_dataset(str(out), split="train")
    rows = sorted(ds.to_list(), key=lambda r: r["_id"])
    assert [r["text"] for r in rows] == ["one", "two", "three", "four"]
    assert [r["note"] for r in rows] == [None, None, "set here", None]
    assert [r["tags"] for r in rows] == [None, None, None, ["x", "y"]]
    # score is an int in one shard and a struct in the other: kept as JSON text in both
    assert [json.loads(r["score"]) for r in rows] == [1, 2, {"helpfulness": 3}, {"helpfulness": 4}]


@pytest.mark.llm
def test_real_model_run_loads_with_datasets(llama_server, tmp_path):
    import datasets

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Name a colour. ({i})"}) + "\n" for i in range(3)))
    cfg = recipe.compose([f"input={source}", f"backend.api_base={llama_server.base_url}", "sampling=greedy",
                          "sampling.max_tokens=8", "backend.on_truncated=keep", "recipe.stages.write.format=hf", f"output_dir={tmp_path / 'out'}",
                          "progress=false"])
    summary = recipe.run(cfg)
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert summary.records == len(ds) == 3 and summary.failed == 0
    assert sorted(ds["prompt"]) == [f"Name a colour. ({i})" for i in range(3)]
    assert all(isinstance(r, str) and r for r in ds["response"])
    meta, body = card_parts(tmp_path / "out")
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 3
    assert "| model | `smollm2` |" in body and "| backend | `hosted_vllm` |" in body  # the llamacpp backend


def _hub_run(stub_server, tmp_path, monkeypatch, hub: HubStub, repo: str):
    server = stub_server()
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "alpha"}\n{"prompt": "beta"}\n')
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_TESTTOKEN123")
    cfg = recipe.compose([f"input={source}", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=none", "model.name=stub-model", "recipe.stages.write.format=hf",
                          f"output_dir={tmp_path / 'out'}", "progress=false", f"hub.repo_id={repo}"])
    return recipe.run(cfg)


def test_push_to_a_stub_hub_uploads_the_data_and_the_card(stub_server, tmp_path, monkeypatch):
    with HubStub() as hub:
        _hub_run(stub_server, tmp_path, monkeypatch, hub, "my-org/my-data")
    out = tmp_path / "out"
    assert hub.created == [{"name": "my-data", "organization": "my-org", "visibility": "public", "type": "dataset"}]
    pushed = hub.files["my-org/my-data"]
    local = {str(p.relative_to(out)): p.read_bytes() for p in [out / "README.md", *(out / "data").iterdir()]}
    assert pushed == local
    assert set(hub.auth) == {"Bearer hf_TESTTOKEN123"}
    assert "hf_TESTTOKEN123" not in (out / "README.md").read_text() + (out / "stats.json").read_text()


def test_failed_push_is_one_error_and_the_dataset_stays(stub_server, tmp_path, monkeypatch):
    import datasets

    # A refused commit (a token without write access). A 5xx goes the same way once huggingface_hub's
    # own retries (about 20 s of backoff) are spent.
    with HubStub(fail_commits=403) as hub, pytest.raises(HubError) as caught:
        _hub_run(stub_server, tmp_path, monkeypatch, hub, "my-org/my-data")
    message = str(caught.value)
    assert message.startswith("push to the Hub dataset 'my-org/my-data' failed (") and "\n" not in message
    assert message.endswith(f"the dataset is complete in {tmp_path / 'out'}")
    assert len(datasets.load_dataset(str(tmp_path / "out"), split="train")) == 2
