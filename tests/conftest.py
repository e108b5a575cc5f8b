"""Shared fixtures: the real llama.cpp server with SmolLM2, stub servers, isolated dirs."""

from __future__ import annotations


import pytest

from recipe.services.llamacpp_server import LlamaCppServer
from recipe.testing.stub_server import StubServer


@pytest.fixture(scope="session")
def llama_server():
    """The embedded default model, started once for the whole test session."""
    with LlamaCppServer(n_ctx=2048) as server:
        yield server


@pytest.fixture
def stub_server():
    """A factory of OpenAI-compatible stub servers on 127.0.0.1, stopped after the test."""
    servers: list[StubServer] = []

    def start(**options) -> StubServer:
        server = StubServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own request cache and run dir, never the user's."""
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))
    yield


@pytest.fixture(autouse=True)
def fresh_clients():
    """Clients are shared per process; tests start from none."""
    from recipe.factory import forget_clients

    forget_clients()
    yield
    forget_clients()
