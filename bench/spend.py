"""Spend less: the cost of the same records online and through the batch API, and the requests
``target.records`` saves against running the whole input.

Both against the stub server serving ``gpt-4o`` with a fixed usage per answer (1000 prompt + 500
completion tokens), priced from litellm's model price map; the cost is what ``stats.json`` reports.

1. 1000 records (smoke: 40), ``generate`` recipe: online (the baseline) against ``backend.batch=true``.
2. 5000 inputs (smoke: 400), a filter that keeps half, ``target.records=137`` (smoke: 20): requests sent
   against the whole input (the baseline: one request per input).
3. The same inputs, each twice in a row, then a whole-bag exact dedup of the prompts (a stage that
   spans partitions): requests for ``target.records`` against the whole input.

    python bench/spend.py [--smoke]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import banner, report, save, small, timed  # noqa: E402

from recipe.testing.stub_server import StubServer  # noqa: E402


def _inputs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def _run(overrides: list[str], out: str):
    import recipe

    with timed() as t:
        summary = recipe.run(recipe.compose(overrides), output_dir=out)
    return summary, t["seconds"]


def main() -> None:
    banner("spend")
    records = 40 if small() else 1000
    inputs, target = (400, 20) if small() else (5000, 137)
    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = _inputs(tmp / "in.jsonl", records)
        with StubServer(usage=(1000, 500), batch_seconds=2.0) as server:
            base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=gpt-4o",
                    f"input={source}", "sampling.max_tokens=500", "progress=false", "backend.max_concurrency=64"]
            online, online_s = _run(base + [f"cache.dir={tmp / 'c1'}"], str(tmp / "online"))
            batch, batch_s = _run(base + [f"cache.dir={tmp / 'c2'}", "backend.batch=true",
                                          "backend.batch_poll_seconds=0.5"], str(tmp / "batch"))
            assert online.records == batch.records == records, (online.records, batch.records)
            print(f"online: {online.stats['requests']} requests in {online_s:.1f} s; "
                  f"batch: {batch.stats['batch']['batches']} batches, {batch.stats['batch']['lines']} lines in {batch_s:.1f} s")
            results.append(report(f"cost of {records} records, batch (USD)", batch.stats["cost_usd"],
                                  online.stats["cost_usd"], "USD"))
        from spend_helpers import HALVES_RECIPE

        conf = tmp / "conf" / "recipe"
        conf.mkdir(parents=True)
        (conf / "halves.yaml").write_text(HALVES_RECIPE)
        source = _inputs(tmp / "many.jsonl", inputs)
        results.append(_whole_and_exact(tmp, source, "halves", target, f"requests for {target} of {inputs} (50% filter)"))
        from spend_helpers import DEDUP_RECIPE

        (conf / "halves_dedup.yaml").write_text(DEDUP_RECIPE)
        twice = tmp / "twice.jsonl"  # question 0, question 0, question 2, question 2, ...: the filter keeps all
        twice.write_text("".join(json.dumps({"prompt": f"question {i - i % 2}"}) + "\n" for i in range(inputs)))
        results.append(_whole_and_exact(tmp, twice, "halves_dedup", target,
                                        f"requests for {target} of {inputs}, whole-bag dedup"))
    save("spend", results)


def _whole_and_exact(tmp: Path, source: Path, recipe_name: str, target: int, label: str):
    """The whole input (the baseline) against ``target.records``, each with its own cache."""
    with StubServer() as server:
        base = ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=k", "model.name=m",
                f"input={source}", f"recipe={recipe_name}", f"hydra.searchpath=[file://{tmp / 'conf'}]",
                "progress=false"]
        whole, _ = _run(base + [f"cache.dir={tmp / recipe_name / 'c-whole'}"], str(tmp / recipe_name / "whole"))
        exact, _ = _run(base + [f"cache.dir={tmp / recipe_name / 'c-exact'}", f"target.records={target}"],
                        str(tmp / recipe_name / "exact"))
    assert exact.records == target, exact.records
    print(f"{recipe_name}: whole input {whole.records} records from {whole.stats['requests']} requests; "
          f"target.records={target}: {exact.records} records from {exact.stats['requests']} requests "
          f"in {exact.stats['target']['rounds']} waves")
    return report(label, exact.stats["requests"], whole.stats["requests"], "requests")


if __name__ == "__main__":
    main()
