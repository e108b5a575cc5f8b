"""Dedup: N short texts with 20% near-duplicates through read -> dedup -> write on a 2-worker LocalCluster.

N texts (default 1,000,000; ``--rows N``; smoke: 2000) of 30 to 40 random words. A fifth of
them are near-duplicates of an earlier original: one word in the text swapped, and for half of
those the case and spacing changed too. The ground truth is known, so the MinHash stage's
precision and recall are exact. Runs on a LocalCluster of 2 worker processes built as
``recipe.run`` builds it. Baseline, measured in the same run: read -> write with no dedup
stage. Reported: wall time (and ratio to the baseline), each worker's peak RSS (VmHWM), the
exact method's time on the same data, precision and recall. Smoke: the runs share one cluster
(see ``_common.Clusters``), so the peaks are cumulative.

``--exact``: the exact method alone, on texts whose duplicates are exact copies (half of them
with case and spacing changed, which normalisation undoes). Baseline, in the same run: a plain
Python set of normalised texts in one process (read, normalise, keep the first); the stage must
keep exactly the records the set keeps. Also reported against read -> write on the cluster.

    python bench/dedup.py [--smoke] [--rows N] [--no-exact] [--exact]
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import Clusters, banner, report, save, small, timed  # noqa: E402
from scale import vmhwm_mib  # noqa: E402

DUP_FRACTION = 0.2


def write_input(path: str, rows: int, seed: int = 0, exact: bool = False) -> set[str]:
    """The input file; returns the ``id`` of every near-duplicate (the ground truth). With
    ``exact``, duplicates keep every word (only case and spacing may change)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    originals: list[list[str]] = []
    dups: set[str] = set()
    with open(path, "w") as handle:  # streamed; only the originals' words are kept
        for i in range(rows):
            if originals and rng.random() < DUP_FRACTION:
                words = list(rng.choice(originals))
                if not exact:
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                text = " ".join(words)
                if rng.random() < 0.5:
                    text = "  ".join(w.upper() if rng.random() < 0.3 else w for w in words)
                dups.add(str(i))
            else:
                words = [rng.choice(vocab) for _ in range(rng.randint(30, 40))]
                originals.append(words)
                text = " ".join(words)
            handle.write(json.dumps({"id": str(i), "text": text}) + "\n")
    return dups


def pipeline(clusters: Clusters, input_path: str, out: str, method: str | None,
             partition_size: int) -> tuple[float, set[str], list[float]]:
    """(seconds, ids kept, peak RSS MiB of each worker) of one run on a 2-worker cluster (a fresh one
    unless ``clusters`` is shared)."""
    from recipe.config.schema import DaskConfig
    from recipe.stages import DedupStage, ReadStage, WriteStage

    with clusters.open(DaskConfig(n_workers=2, threads_per_worker=2)) as client:
        with timed() as t:
            bag = ReadStage(path=input_path, partition_size=partition_size)()
            if method:
                bag = DedupStage(field="text", method=method, output_dir=out)(bag)
            parts = client.compute(WriteStage(path=out)(bag)).result()
        peaks = sorted(client.run(vmhwm_mib).values())
    kept: set[str] = set()
    for part in sorted(Path(out).glob("part-*.jsonl")):
        kept.update(json.loads(line)["id"] for line in part.read_text().splitlines())
    written = sum(p["records"] for p in parts)
    print(f"  {method or 'no dedup'}: {len(parts)} partitions, {written} kept, {t['seconds']:.1f} s, "
          f"worker peaks {', '.join(f'{p:.0f}' for p in peaks)} MiB", flush=True)
    return t["seconds"], kept, peaks


def python_set(input_path: str) -> tuple[float, set[str]]:
    """The baseline of ``--exact``: one process, one set of normalised texts, first occurrence kept."""
    from recipe.stages.quality.dedup import normalize

    seen: set[str] = set()
    kept: set[str] = set()
    with timed() as t:
        with open(input_path) as handle:
            for line in handle:
                record = json.loads(line)
                key = normalize(record["text"])
                if key not in seen:
                    seen.add(key)
                    kept.add(record["id"])
    print(f"  python set: {len(kept)} kept, {t['seconds']:.1f} s", flush=True)
    return t["seconds"], kept


def main_exact(rows: int) -> None:
    size = max(100, rows // 100)
    with tempfile.TemporaryDirectory() as tmp, Clusters(shared=small()) as clusters:
        input_path = os.path.join(tmp, "in.jsonl")
        dups = write_input(input_path, rows, exact=True)
        print(f"  {rows} texts, {len(dups)} exact duplicates (half with case/spacing changed), {size} per partition",
              flush=True)
        baseline, kept_by_set = python_set(input_path)
        plain, kept_all, plain_peaks = pipeline(clusters, input_path, os.path.join(tmp, "plain"), None, size)
        seconds, kept, peaks = pipeline(clusters, input_path, os.path.join(tmp, "exact"), "exact", size)
    assert len(kept_all) == rows, "records went missing without dedup"
    assert kept == kept_by_set, f"the stage kept {len(kept)}, the set {len(kept_by_set)}: not the same records"
    removed = kept_all - kept
    print(f"exact: removed {len(removed)}, the same records as the set; of the {len(dups)} duplicates: "
          f"precision {len(removed & dups) / max(1, len(removed)):.4f}, recall {len(removed & dups) / max(1, len(dups)):.4f}")
    results = [report("python set, one process (baseline)", baseline, baseline, "s"),
               report("read -> write, no dedup, cluster", plain, baseline, "s"),
               report("read -> exact dedup -> write, cluster", seconds, baseline, "s"),
               report("exact dedup against read -> write", seconds, plain, "s"),
               report("peak worker RSS, no dedup (baseline)", max(plain_peaks), max(plain_peaks), "MiB"),
               report("peak worker RSS, exact dedup", max(peaks), max(plain_peaks), "MiB")]
    save("dedup-exact", results)


def main() -> None:
    banner("dedup")
    if "--exact" in sys.argv:
        return main_exact(2000 if small() else int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv
                          else 1_000_000)
    rows = 2000 if small() else int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 1_000_000
    size = max(100, rows // 100)
    with tempfile.TemporaryDirectory() as tmp, Clusters(shared=small()) as clusters:
        input_path = os.path.join(tmp, "in.jsonl")
        dups = write_input(input_path, rows)
        print(f"  {rows} texts, {len(dups)} near-duplicates, {size} per partition", flush=True)
        base, kept_all, base_peaks = pipeline(clusters, input_path, os.path.join(tmp, "plain"), None, size)
        exact, exact_peaks = float("nan"), [float("nan")]
        if "--no-exact" not in sys.argv:
            exact, _, exact_peaks = pipeline(clusters, input_path, os.path.join(tmp, "exact"), "exact", size)
        seconds, kept, peaks = pipeline(clusters, input_path, os.path.join(tmp, "minhash"), "minhash", size)
    assert len(kept_all) == rows, "records went missing without dedup"
    removed = kept_all - kept
    hits = len(removed & dups)
    precision = hits / len(removed) if removed else float("nan")
    recall = hits / len(dups) if dups else float("nan")
    results = [report("read -> write, no dedup (baseline)", base, base, "s"),
               report("read -> exact dedup -> write", exact, base, "s"),
               report("read -> minhash dedup -> write", seconds, base, "s"),
               report("peak worker RSS, no dedup (baseline)", max(base_peaks), max(base_peaks), "MiB"),
               report("peak worker RSS, exact dedup", max(exact_peaks), max(base_peaks), "MiB"),
               report("peak worker RSS, minhash dedup", max(peaks), max(base_peaks), "MiB")]
    print(f"minhash: removed {len(removed)} of {len(dups)} near-duplicates: precision {precision:.4f}, "
          f"recall {recall:.4f}")
    results.append({"label": "precision", "value": precision})
    results.append({"label": "recall", "value": recall})
    save("dedup", results)


if __name__ == "__main__":
    main()
