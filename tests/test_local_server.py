"""The embedded llama.cpp server's threads: every core by default, ``RECIPE_LOCAL_THREADS`` on a
shared machine (read off the running server's own command line)."""

from __future__ import annotations

import os

import pytest

from recipe.clients.llamacpp_server import LlamaCppServer


def _threads_of(server: LlamaCppServer) -> int:
    args = open(f"/proc/{server._server.pid}/cmdline", "rb").read().decode().split("\0")
    return int(args[args.index("--n_threads") + 1])


@pytest.mark.llm
@pytest.mark.parametrize("given", [None, "1"])
def test_recipe_local_threads_sets_the_embedded_servers_threads(monkeypatch, given):
    if given is None:
        monkeypatch.delenv("RECIPE_LOCAL_THREADS", raising=False)
    else:
        monkeypatch.setenv("RECIPE_LOCAL_THREADS", given)
    with LlamaCppServer() as server:
        assert _threads_of(server) == (int(given) if given else os.cpu_count())


def test_a_bad_recipe_local_threads_is_one_line_naming_it(tmp_path):
    from conftest import cli

    result = cli(tmp_path, "progress=false", env={"RECIPE_LOCAL_THREADS": "two"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: RECIPE_LOCAL_THREADS='two'"), lines[0]
