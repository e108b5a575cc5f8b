"""A server in a child process on 127.0.0.1: started, waited for, stopped and reaped, one way.

The embedded llama.cpp server (:mod:`recipe.clients.llamacpp_server`), the test stub
(:mod:`recipe.testing.stub_server`) and the tests' Redis and Dask processes all need the same
steps, and the same care: a start-up that fails or is interrupted (Ctrl-C included) leaves no
orphan, and a failure says what the child last printed. The standard library's ``subprocess``
has the parts but not this sequence, and no library we depend on offers it.
"""

from __future__ import annotations

import socket
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from recipe.errors import LocalServerError


def free_port() -> int:
    """A port nothing listens on now (the child binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_description(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGILL``: how a child ended, in words."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


class ServerProcess:
    """One child process serving something.

    Args:
        command: what to run.
        what: names the server in errors ("the llama.cpp server").
        capture_stdout: keep stdout as a pipe (:attr:`stdout`) for a readiness line; stderr then
            goes to the log. Otherwise both go to the log.
        watchdog_stdin: give the child a pipe as stdin and hold its write end until :meth:`stop`:
            a child that watches it exits when we stop it or die.
        new_session: run the child in its own process group (a terminal's Ctrl-C reaches it
            only through us).
        error: the exception class start-up failures raise.
        popen: what starts the child (``subprocess.Popen``, or anything with its signature and
            the part of its interface used here: ``pid``, ``stdin``, ``stdout``, ``poll``,
            ``wait``, ``terminate``, ``kill``).
    """

    def __init__(self, command: Sequence[str], what: str, *, capture_stdout: bool = False,
                 watchdog_stdin: bool = False, new_session: bool = False, env: dict | None = None,
                 cwd: str | None = None, error: type[Exception] = LocalServerError,
                 popen: Callable[..., Any] = subprocess.Popen):
        self.command = [str(part) for part in command]
        self.what = what
        self.capture_stdout = capture_stdout
        self.watchdog_stdin = watchdog_stdin
        self.new_session = new_session
        self.env = env
        self.cwd = cwd
        self.error = error
        self.popen = popen
        self._process: Any = None
        self._exit_code: int | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The child's exit code (negative: the signal that killed it); None while it runs. Kept
        after :meth:`stop`, so a failed start can still say how the child ended."""
        return self._process.poll() if self._process is not None else self._exit_code

    @property
    def stdout(self):
        return self._process.stdout if self._process is not None else None

    def start(self, ready: Callable[[], Any] | None = None, timeout: float = 60.0, hint: str = "",
              interval: float = 0.1) -> Any:
        """Launch the child and call ``ready()`` until it returns something true, which is returned.

        The child exiting first, or ``timeout`` seconds passing, raises :attr:`error` naming the
        server (and, for an exit, its last line of output); on any way out but success the child
        is stopped. Without ``ready`` the child is only launched.
        """
        self._log = tempfile.TemporaryFile()
        try:
            self._process = self.popen(
                self.command, stdout=subprocess.PIPE if self.capture_stdout else self._log,
                stderr=self._log if self.capture_stdout else subprocess.STDOUT,
                stdin=subprocess.PIPE if self.watchdog_stdin else subprocess.DEVNULL,
                start_new_session=self.new_session, env=self.env, cwd=self.cwd)
            if ready is None:
                return None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    raise self.error(f"{self.what} {exit_description(code)} while starting: {self.last_line()}")
                value = ready()
                if value:
                    return value
                time.sleep(interval)
            raise self.error(f"{self.what} did not answer within {timeout:.0f} s{hint}")
        except BaseException:  # Ctrl-C or SIGTERM during the start-up included: no orphan
            self.stop()
            raise

    def output(self) -> str:
        """The end of what the child wrote to its log."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def last_line(self) -> str:
        lines = [line.strip() for line in self.output().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "no output"

    def terminate(self) -> None:
        """Ask the child to stop (stdin closed, then SIGTERM), without waiting for it."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()  # a watchdog in the child exits at once
        if process.poll() is None:
            process.terminate()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the child, killing it after ``grace`` seconds, and wait until it is gone."""
        self.terminate()
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
            self._exit_code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
