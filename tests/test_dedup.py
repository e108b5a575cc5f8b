"""DedupStage: exact and MinHash dedup across the whole bag, on threads and a 2-process LocalCluster."""

from __future__ import annotations

import json
import random

import dask.bag as db
import pytest

import recipe
from recipe.errors import ConfigError
from recipe.stages import DedupStage, ReadStage
from recipe.stages.quality.dedup import DUPLICATE_OF, normalize

from conftest import outputs

_rng = random.Random(7)
_VOCAB = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 9))) for _ in range(3000)]


def forty_words(rng: random.Random) -> list[str]:
    return [rng.choice(_VOCAB) for _ in range(40)]


def kept_ids(stage: DedupStage, records: list[dict], npartitions: int, scheduler="threads") -> list[str]:
    bag = stage(db.from_sequence(records, npartitions=npartitions))
    return [r["_id"] for r in bag.compute(scheduler=scheduler)]


def test_normalize_folds_unicode_case_and_whitespace():
    assert normalize("  Ｈｅｌｌｏ\tWORLD\n ﬁne ") == "hello world fine"


def test_exact_removes_copies_and_case_and_spacing_variants():
    texts = ["The cat sat on the mat.", "A different sentence.", "the CAT  sat on\tthe mat.",
             "The cat sat on the mat.", "THE CAT SAT ON THE MAT.", "The cat sat on the mat!"]
    records = [{"_id": f"r{i}", "text": t} for i, t in enumerate(texts)]
    assert kept_ids(DedupStage(field="text", method="exact"), records, 3) == ["r0", "r1", "r5"]


def test_minhash_removes_near_copies_with_one_word_in_forty_swapped():
    rng = random.Random(1)
    originals = [forty_words(rng) for _ in range(30)]
    records = [{"_id": f"o{i}", "text": " ".join(w)} for i, w in enumerate(originals)]
    for i, words in enumerate(originals):
        copy = list(words)
        copy[rng.randrange(40)] = rng.choice(_VOCAB)
        records.append({"_id": f"d{i}", "text": " ".join(copy)})
    kept = kept_ids(DedupStage(field="text", method="minhash", threshold=0.8), records, 4)
    assert kept == [f"o{i}" for i in range(30)]


def test_distinct_texts_sharing_a_long_prefix_are_kept():
    prefix = ("Write a Python function that takes a list of integers and a target value, "
              "handles empty input gracefully, and returns ")
    endings = ["the indices of the two numbers that add up to the target, or None when no such pair exists.",
               "the length of the longest strictly increasing run of consecutive elements in the list.",
               "a new list where each element is replaced by the product of all the other elements.",
               "the number of contiguous sublists whose elements sum exactly to the target value.",
               "the smallest positive integer that does not occur anywhere in the list at all."]
    records = [{"_id": f"r{i}", "text": prefix + e} for i, e in enumerate(endings)]
    ids = [r["_id"] for r in records]
    assert kept_ids(DedupStage(field="text", method="minhash"), records, 2) == ids
    assert kept_ids(DedupStage(field="text", method="exact"), records, 2) == ids


def _mixed_records(n_originals: int = 40, seed: int = 3) -> tuple[list[dict], dict[str, str]]:
    """Originals, with copies and near-copies placed after them; returns records and dup -> original.

    A later copy of the same original is a duplicate of the original, not of the earlier copy."""
    rng = random.Random(seed)
    originals = [{"_id": f"o{i}", "text": " ".join(forty_words(rng))} for i in range(n_originals)]
    records, truth = list(originals), {}
    for i in range(n_originals):
        source = originals[rng.randrange(n_originals)]
        words = source["text"].split()
        if i % 2:
            words[rng.randrange(40)] = rng.choice(_VOCAB)
        text = "  ".join(words).upper() if i % 3 == 0 else " ".join(words)
        dup = {"_id": f"d{i}", "text": text}
        records.insert(rng.randrange(records.index(source) + 1, len(records) + 1), dup)
        truth[dup["_id"]] = source["_id"]
    return records, truth


@pytest.mark.parametrize("npartitions", [1, 3, 8, 17])
def test_first_occurrences_kept_whatever_the_partitioning_on_threads(npartitions):
    records, truth = _mixed_records()
    kept = kept_ids(DedupStage(field="text", method="minhash"), records, npartitions)
    assert kept == [r["_id"] for r in records if r["_id"] not in truth]


def test_first_occurrences_kept_on_a_two_worker_local_cluster(tmp_path, two_workers):
    from distributed import Client, get_task_stream

    records, truth = _mixed_records(seed=11)
    source = tmp_path / "in.jsonl"
    # `_id` is reserved for recipe's own ids in input files: the test's names travel as `key`
    source.write_text("".join(json.dumps({"key": r["_id"], "text": r["text"]}) + "\n" for r in records))
    with Client(two_workers) as client, get_task_stream(client) as tasks:
        bag = ReadStage(path=str(source), partition_size=7)()  # 12 partitions over both workers
        stage = DedupStage(field="text", method="minhash", keep_removed=True, output_dir=str(tmp_path))
        rows = client.compute(stage(bag)).result()
    assert len({task["worker"] for task in tasks.data}) == 2  # both workers did part of the work
    assert [r["key"] for r in rows] == [r["_id"] for r in records if r["_id"] not in truth]
    removed = outputs(tmp_path / "removed" / "dedup")
    key_of = {r["_id"]: r["key"] for r in rows}
    # each duplicate written once, naming the kept record it duplicates (a dict would hide a repeat)
    assert sorted((r["key"], key_of[r[DUPLICATE_OF]]) for r in removed) == sorted(truth.items())


def test_exact_on_the_cluster_matches_threads(two_workers):
    from distributed import Client

    records, truth = _mixed_records(seed=5)
    exact_dups = {d for d, o in truth.items() if int(d[1:]) % 2 == 0}  # the copies with no word swapped
    expected = [r["_id"] for r in records if r["_id"] not in exact_dups]
    assert kept_ids(DedupStage(field="text"), records, 5) == expected
    with Client(two_workers) as client:
        rows = client.compute(DedupStage(field="text")(db.from_sequence(records, npartitions=9))).result()
    assert [r["_id"] for r in rows] == expected


def test_error_records_pass_and_records_without_the_field_become_errors():
    records = [{"_id": "a", "text": "same"}, {"_error": {"stage": "x", "class": "E", "message": "m"}, "_id": "e"},
               {"_id": "b", "other": 1}, {"_id": "c", "text": "SAME"}]
    rows = DedupStage(field="text")(db.from_sequence(records, npartitions=2)).compute(scheduler="threads")
    assert [r["_id"] for r in rows] == ["a", "e", "b"]
    assert rows[1]["_error"]["class"] == "E"
    assert rows[2]["_error"] == {"stage": "dedup", "class": "MissingFieldError",
                                 "message": "record has no field 'text' to deduplicate"}


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="method must be exact or minhash"):
        DedupStage(method="fuzzy")
    with pytest.raises(ConfigError, match="threshold"):
        DedupStage(method="minhash", threshold=1.5)
    with pytest.raises(ConfigError, match="keep_removed needs output_dir"):
        DedupStage(keep_removed=True)(db.from_sequence([{"text": "x"}]))


def test_stats_count_deduplicated_by_stage_in_a_run(tmp_path):
    lines = ["Hello there.", "hello  THERE.", "Another line.", "Hello there.", "A third line."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    recipe_cfg = {"stages": {"read": {"_target_": "recipe.stages.ReadStage", "path": str(source), "partition_size": 2},
                             "dedup": {"_target_": "recipe.stages.DedupStage", "field": "text", "keep_removed": True},
                             "write": {"_target_": "recipe.stages.WriteStage"}}}
    cfg = recipe.compose(["progress=false", f"output_dir={tmp_path / 'out'}"])
    cfg.recipe = recipe_cfg
    summary = recipe.run(cfg)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert summary.records == 3 and stats["deduplicated"] == {"dedup": 2}
    kept = outputs(tmp_path / "out")
    removed = outputs(tmp_path / "out" / "removed" / "dedup")
    assert [r["text"] for r in kept] == ["Hello there.", "Another line.", "A third line."]
    assert [(r["text"], r[DUPLICATE_OF]) for r in removed] == [("hello  THERE.", kept[0]["_id"]),
                                                              ("Hello there.", kept[0]["_id"])]


def test_open_qa_recipe_drops_repeated_questions(stub_server, tmp_path):
    server = stub_server(reply="list")  # every list item repeats the prompt's first 30 characters
    cfg = recipe.compose(["recipe=open_qa", "backend=openai", f"backend.api_base={server.base_url}",
                          "backend.api_key=stub", "model.name=stub-model", "progress=false", "recipe.n_macro_topics=2",
                          "recipe.n_subtopics=2", "recipe.n_openlines=1", "recipe.n_revisions=2",
                          f"output_dir={tmp_path / 'out'}"])
    summary = recipe.run(cfg)
    # 2 macro topics, each itself + 2 subtopics: 6 topics, one question each, all the same text
    assert summary.stats["deduplicated"] == {"dedup_questions": 5}
    assert summary.records == 1 * 2  # the one question kept, revised twice
    assert server.stats()["by_path"]["/v1/chat/completions"] == 1 + 2 + 6 + 1  # 5 revisions never asked
