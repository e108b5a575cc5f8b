"""cache.url=redis://...: one request cache for a whole cluster, entries identical to the SQLite cache's."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
import redis

import recipe
from recipe.errors import ConfigError
from recipe.cache.redis import PREFIX, RedisCache


def write_inputs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def stub_overrides(server, *extra: str) -> list[str]:
    return ["backend=openai", f"backend.api_base={server.base_url}", "backend.api_key=test-key",
            "model.name=stub-model", "progress=false", "sampling.temperature=0.3", *extra]


def redis_entries(url: str) -> dict[str, tuple[str, str]]:
    store = redis.Redis.from_url(url, decode_responses=True)
    return {key.removeprefix(PREFIX): (store.hget(key, "digest"), store.hget(key, "value"))
            for key in store.scan_iter(match=PREFIX + "*")}


def test_entries_are_the_sqlite_caches_entries(stub_server, redis_server, tmp_path):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 10)
    recipe.run(recipe.compose(stub_overrides(server, f"input={source}", f"cache.dir={tmp_path / 'sqlite'}")),
               output_dir=str(tmp_path / "a"))
    recipe.run(recipe.compose(stub_overrides(server, f"input={source}", f"cache.url={redis_server}")),
               output_dir=str(tmp_path / "b"))
    assert server.stats()["requests"] == 20, "the Redis run did not read the SQLite cache"
    with sqlite3.connect(tmp_path / "sqlite" / "requests.sqlite") as conn:
        sqlite = {key: (digest, value) for key, digest, value in conn.execute("SELECT key, digest, value FROM responses")}
    assert len(sqlite) == 10
    assert redis_entries(redis_server) == sqlite, "one entry per request, same keys, same checksums, same payloads"


def test_one_cache_for_the_whole_cluster(stub_server, redis_server, tmp_path, monkeypatch):
    server = stub_server()
    source = write_inputs(tmp_path / "in.jsonl", 24)
    overrides = stub_overrides(server, f"input={source}", f"cache.url={redis_server}", "dask.n_workers=2",
                               "dask.partition_size=6")
    first = recipe.run(recipe.compose(overrides), output_dir=str(tmp_path / "a"))
    assert first.records == 24 and server.stats()["requests"] == 24
    assert len(RedisCache(redis_server)) == 24
    # Another "machine": a fresh local cache dir and fresh worker processes. Redis answers everything.
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "elsewhere"))
    second = recipe.run(recipe.compose(overrides), output_dir=str(tmp_path / "b"))
    assert server.stats()["requests"] == 24, "a rerun elsewhere in the cluster pays nothing again"
    assert second.stats["cache_hits"] == 24 and second.records == 24


def test_a_damaged_entry_is_never_served(redis_server):
    cache = RedisCache(redis_server)
    parts = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    cache.put(parts, ["hello"])
    assert cache.get(parts) == ["hello"]
    store = redis.Redis.from_url(redis_server, decode_responses=True)
    (key,) = list(store.scan_iter(match=PREFIX + "*"))
    store.hset(key, "value", json.dumps({"v": ["tampered"]}))
    assert cache.get(parts) is None and cache.corrupt == 1
    cache.put(parts, ["hello again"])
    assert cache.get(parts) == ["hello again"]


def test_an_unreachable_redis_stops_the_run_before_any_request(stub_server, tmp_path):
    server = stub_server()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    cfg = recipe.compose(stub_overrides(server, f"input={write_inputs(tmp_path / 'in.jsonl', 2)}",
                                        f"cache.url=redis://127.0.0.1:{port}/0"))
    with pytest.raises(ConfigError) as info:
        recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert f"redis://127.0.0.1:{port}/0" in str(info.value) and "cannot reach Redis" in str(info.value)
    assert server.stats()["requests"] == 0


def test_a_password_in_the_url_is_refused_without_echoing_it(tmp_path):
    cfg = recipe.compose(["backend=openai", "backend.api_base=http://127.0.0.1:1/v1", "backend.api_key=k",
                          "cache.url=redis://:hunter2@127.0.0.1:6379/0"])
    with pytest.raises(ConfigError) as info:
        recipe.run(cfg, output_dir=str(tmp_path / "out"))
    assert "REDIS_PASSWORD" in str(info.value) and "hunter2" not in str(info.value)
