"""Scale: N records through read -> generate -> write on a 2-worker LocalCluster, and memory.

N records (default 1,000,000; ``--rows N``; smoke: 400) in 64 partitions (smoke: 8) go through the
generate recipe against a zero-latency stub server, cache disabled, on a LocalCluster of 2
worker processes built exactly as ``recipe.run`` builds it (``recipe.engine.cluster.dask_context``,
``build_stages``, cluster limits). A run of N/10 records comes first and is the baseline.
Reported: records/s, and each worker's peak RSS (VmHWM from /proc/self/status, read in the
workers at the end of each run). Goal: peak RSS grows < 20% from N/10 to N, and stays < 1 GiB.
Smoke: the runs share one cluster (see ``_common.Clusters``), so the peaks are cumulative.

``--s3``: the same N records read from and written to object storage (moto's S3-compatible
server on 127.0.0.1, through s3fs), against a local-disk run of N records as the baseline
(smoke: 100 records).

    python bench/scale.py [--smoke] [--rows N] [--s3]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import Clusters, banner, peak_rss_mib, report, rows as rows_arg, save, small, stub_overrides, timed, write_prompts  # noqa: E402

PARTITIONS = 8 if small() else 64


def vmhwm_mib() -> float:
    """This process's peak resident set size (Linux VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_s3() -> object:
    """moto's S3 server on 127.0.0.1 and a bucket; the environment points s3fs (and workers) at it."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("bench")
    return server


def pipeline(clusters: Clusters, base_url: str, rows: int, tmp: str,
             store: str | None = None) -> tuple[float, int, list[float]]:
    """(records/s, records written, peak RSS MiB of each worker) of one run of ``rows`` records."""
    import recipe
    from recipe.config.compose import resolved_container
    from recipe.clients.factory import ClientSpec
    from recipe.stages.build import build_stages
    from recipe.engine.plan import settings
    from recipe.clients.cluster_limits import enable_cluster_limits

    input_path = os.path.join(tmp, f"in-{rows}.jsonl")
    write_prompts(input_path, rows)
    if store is not None:  # the input goes up first; its upload is not timed
        from recipe import storage

        local, input_path = input_path, f"{store}/in-{rows}.jsonl"
        fs, inner = storage.filesystem(input_path)
        fs.put_file(local, inner)
    size = max(1, -(-rows // PARTITIONS))
    cfg = recipe.compose(stub_overrides(base_url, input_path, "dask.n_workers=2", f"dask.partition_size={size}",
                                        "cache.enabled=false"))
    data = resolved_container(cfg)
    out = f"{store}/out-{rows}" if store is not None else os.path.join(tmp, f"out-{rows}")
    with clusters.open(settings(data)["dask"]) as client:
        enable_cluster_limits(client)
        with timed() as t:
            bag = None
            for stage in build_stages(data["recipe"], ClientSpec.from_config(data), out, size):
                bag = stage(bag)
            parts = client.compute(bag).result()
        peaks = sorted(client.run(vmhwm_mib).values())
    written = sum(p["records"] for p in parts)
    failed = sum(p["errors"] for p in parts)
    print(f"  {rows} rows: {len(parts)} partitions, {written} written, {failed} failed, {t['seconds']:.1f} s, "
          f"worker peaks {', '.join(f'{p:.0f}' for p in peaks)} MiB")
    return written / t["seconds"], written, peaks


def main() -> None:
    from recipe.testing.stub_server import StubServer

    banner("scale")
    rows = rows_arg(smoke=400)
    if "--s3" in sys.argv:
        return main_s3(100 if small() else rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp, StubServer() as server, Clusters(shared=small()) as clusters:
        base_rate, base_n, base_peaks = pipeline(clusters, server.base_url, rows // 10, tmp)
        server.reset()
        rate, n, peaks = pipeline(clusters, server.base_url, rows, tmp)
        requests = server.stats()["requests"]
    assert n == rows and base_n == rows // 10, "records went missing"
    assert requests == rows, f"{requests} requests for {rows} records"
    results.append(report(f"{rows // 10} records (baseline)", base_rate, base_rate, "rec/s"))
    results.append(report(f"{rows} records", rate, base_rate, "rec/s"))
    results.append(report(f"peak worker RSS, {rows // 10} records (baseline)", max(base_peaks), max(base_peaks), "MiB"))
    results.append(report(f"peak worker RSS, {rows} records", max(peaks), max(base_peaks), "MiB"))
    print(f"driver peak RSS: {peak_rss_mib():.0f} MiB")
    growth = max(peaks) / max(base_peaks) - 1
    ok = growth < 0.2 and max(peaks) < 1024
    print(f"goal growth < 20% and < 1 GiB per worker: {'met' if ok else 'NOT met'} ({growth:+.0%}, {max(peaks):.0f} MiB)")
    save("scale", results)


def main_s3(rows: int) -> None:
    """N records on local disk (baseline), then the same N from and to S3 (moto on 127.0.0.1)."""
    from recipe.testing.stub_server import StubServer

    results = []
    s3 = start_s3()
    try:
        with tempfile.TemporaryDirectory() as tmp, StubServer() as server, Clusters(shared=small()) as clusters:
            base_rate, base_n, base_peaks = pipeline(clusters, server.base_url, rows, tmp)
            server.reset()
            rate, n, peaks = pipeline(clusters, server.base_url, rows, tmp, store="s3://bench")
            requests = server.stats()["requests"]
    finally:
        s3.stop()
    assert n == base_n == rows, "records went missing"
    assert requests == rows, f"{requests} requests for {rows} records"
    results.append(report(f"{rows} records, local disk (baseline)", base_rate, base_rate, "rec/s"))
    results.append(report(f"{rows} records, S3 (moto)", rate, base_rate, "rec/s"))
    results.append(report("peak worker RSS, local disk (baseline)", max(base_peaks), max(base_peaks), "MiB"))
    results.append(report("peak worker RSS, S3 (moto)", max(peaks), max(base_peaks), "MiB"))
    save("scale-s3", results)


if __name__ == "__main__":
    main()
