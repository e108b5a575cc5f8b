"""``python -m recipe`` for the tests, forked from a process that has already imported everything.

Why: a CLI run spends 2 to 4 s of CPU importing litellm, Hydra and Dask before it reads its first
override, and the suite starts a few hundred of them on a 2-core machine (about half its CPU time).
A *warm* process imports them once and forks one child per run. The child is a new process with
its own pid, process group, working directory, environment and standard streams; it runs
``recipe/__main__.py`` as ``python -m recipe`` does (``runpy``, ``__name__ == "__main__"``) and
exits as the interpreter does (non-daemon threads joined, ``atexit`` run, streams flushed), so the
code under test is the CLI's own, from ``main()`` down. Only the imports are shared, and the child
skips the interpreter's teardown of every imported module (``_leave``).

Nothing stdlib does this for a process that is not our child: ``multiprocessing``'s forkserver
serves its own workers, not a command line with its own streams and exit code, so this is ours.

Runs a test kills or signals mid-run are forked too (``conftest.cli_process``: a
:class:`WarmChild`, the leader of its own process group). Tests that need a real process from its
first instruction (how the CLI takes signals, ``-X importtime``, a different interpreter) pass
``fresh=True``; ``RECIPE_TEST_FRESH_CLI=1`` spawns ``python -m recipe`` for every call. The stub
servers are forked from here as well (``recipe.testing.stub_server.popen``).

The bench scripts' smoke runs (``tests/test_bench.py``) are forked too, as ``python SCRIPT.py``: the
script's own imports are shared, and every side it times still runs in a new interpreter of its own.

Protocol, over a Unix socket: the test sends one JSON line ``{module, argv, env, cwd}`` (``module``:
``python -m MODULE``, ``recipe`` when absent; or ``script``: ``python SCRIPT``) with three file
descriptors attached (stdin, stdout, stderr); the warm process answers ``{"pid": N}`` once forked
and ``{"exit": CODE}`` when the child ends (a signal ``S`` is ``-S``, as ``subprocess`` reports it).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


# ---- the warm process ------------------------------------------------------------------------

# What a run imports only once it runs (the package imports them inside functions, so that
# ``--help`` and ``--cfg job`` stay fast): left to each child, they cost ~0.8 s of CPU per run.
RUN_IMPORTS = ("dask.bag", "distributed", "numpy", "pandas", "pyarrow.compute", "pyarrow.parquet",
               "pyarrow.json", "plotly.graph_objects", "fsspec", "psutil", "cloudpickle", "sqlite3")


def _warm_up() -> None:
    """Import what CLI runs import, and nothing that starts a thread (forking a process
    with threads would copy their locks, held, into every child): every module of the package
    but the test utilities, and the libraries a run imports lazily."""
    import importlib
    import pkgutil

    import recipe
    from recipe.clients.litellm_setup import get_litellm

    for module in pkgutil.walk_packages(recipe.__path__, "recipe."):
        if not module.name.startswith("recipe.testing") and module.name != "recipe.__main__":
            importlib.import_module(module.name)
    for name in RUN_IMPORTS:
        importlib.import_module(name)
    importlib.import_module("recipe.testing.stub_server")  # the stubs are forked from here too
    get_litellm()
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


def _become_cli(request: dict, fds: list[int]) -> None:
    """In the forked child: take the request's streams, directory and environment, then run
    ``python -m recipe ARGV``; ends as the interpreter would (:func:`_leave`)."""
    os.setpgid(0, 0)  # its own group, so a timeout can kill it with the Dask workers it starts
    for signum in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # block-buffered, as a pipe's is
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import runpy
    from functools import partial

    script, module = request.get("script"), request.get("module", "recipe")
    # ``python SCRIPT`` puts the script's folder first on sys.path, ``python -m`` the working directory;
    # then PYTHONPATH's entries (sys.path[0] is this file's folder, which the command would not have)
    rest = sys.path[1:]
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in rest]
    sys.path[:] = [os.path.dirname(os.path.abspath(script)) if script else os.getcwd(), *extra, *rest]
    if script:
        main = Path(script)
        run = partial(runpy.run_path, script, run_name="__main__")
    else:
        main = Path(__import__(module, fromlist=["_"]).__file__)  # a package runs its __main__.py
        main = main.with_name("__main__.py") if main.name == "__init__.py" else main
        run = partial(runpy.run_module, module, run_name="__main__", alter_sys=True)
    sys.argv = [str(main), *request["argv"]]
    try:
        run()
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except KeyboardInterrupt:  # uncaught: the interpreter prints it and dies of SIGINT
        sys.excepthook(*sys.exc_info())
        _leave(None)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _leave(code)


def _exit_code(code: object) -> int:
    """``SystemExit(code)`` as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _leave(code: int | None) -> None:
    """Exit as the interpreter does, in its order (non-daemon threads joined, ``atexit`` run, the
    streams flushed), without its teardown of every module: the child inherited everything the warm
    process imported, and freeing it object by object (a copy-on-write page fault each) cost
    0.2 s of CPU per child, more than a short run itself. ``None``: die of SIGINT."""
    import atexit

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize calls first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code is None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code or 0)


def _serve(path: str) -> None:
    """Accept runs on the socket at ``path``; fork one child per run and report its end. When
    the test process that started it dies without stopping it (a killed pytest), it kills what it
    forked that still runs (stub servers, runs) and exits."""
    parent = os.getppid()
    _warm_up()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    # A child's end wakes the loop through this pipe (SIGCHLD); so does a new connection. The
    # timeout only bounds how late the test process's death is noticed.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    print("ready", flush=True)
    waiting: dict[int, tuple[socket.socket, dict]] = {}  # child pid -> the connection that asked, its request
    cpu_log = os.environ.get("RECIPE_TEST_CPU_LOG")  # a file: one line per child, its CPU seconds
    while True:
        if os.getppid() != parent:
            for pid in waiting:
                _kill_group(pid)
            os._exit(0)
        readable, _, _ = select.select([server, wake_read], [], [], 1.0)
        if wake_read in readable:
            os.read(wake_read, 4096)
        if server in readable:
            conn, _ = server.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_read)
                os.close(wake_write)
                server.close()
                for other, _ in waiting.values():
                    other.close()
                conn.close()
                _become_cli(json.loads(message), fds)
            for fd in fds:
                os.close(fd)
            waiting[pid] = conn, json.loads(message)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while waiting:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            conn, request = waiting.pop(pid)
            if cpu_log:
                with open(cpu_log, "a") as log:
                    log.write(json.dumps({"module": request.get("module") or request["script"], "argv": request["argv"],
                                          "cpu": round(usage.ru_utime + usage.ru_stime, 3)}) + "\n")
            try:
                conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass  # the test gave up on it (timeout)
            conn.close()


# ---- the tests' side -------------------------------------------------------------------------

class WarmCli:
    """One warm process per test process, started on first use and stopped at exit."""

    def __init__(self, env: dict[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="warm-cli-")
        self.path = os.path.join(self._dir, "socket")
        self._process = subprocess.Popen([sys.executable, __file__, self.path], env=env,
                                         stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the warm CLI process did not start (exit {self._process.wait()})")

    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
            input: str | None = None, script: str | None = None) -> subprocess.CompletedProcess:
        """``python -m recipe *argv`` (or ``python SCRIPT *argv``) as ``subprocess.run(...,
        capture_output=True, text=True)``."""
        with tempfile.TemporaryFile("w+", encoding="utf-8") as stdin, \
                tempfile.TemporaryFile("w+", encoding="utf-8") as stdout, \
                tempfile.TemporaryFile("w+", encoding="utf-8") as stderr:
            if input is not None:
                stdin.write(input)
                stdin.flush()
                stdin.seek(0)
            command = [sys.executable, *([script] if script else ["-m", "recipe"]), *argv]
            child = WarmChild(self.path, command, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=str(cwd))
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child.pid)
                raise subprocess.TimeoutExpired(command, timeout) from None
            stdout.seek(0)
            stderr.seek(0)
            return subprocess.CompletedProcess(command, code,
                                               stdout.read(), stderr.read())

    def popen(self, args: list[str], *, stdout=None, stderr=None, stdin=None, env: dict | None = None,
              cwd: str | None = None, text: bool = False, **_ignored) -> "WarmChild":
        """``python -m MODULE ARGS`` forked from the warm process, as ``subprocess.Popen(args, ...)``
        would start it (``recipe.testing.stub_server.popen``: the stub servers)."""
        return WarmChild(self.path, args, stdout=stdout, stderr=stderr, stdin=stdin, text=text,
                         env=dict(os.environ) if env is None else env, cwd=str(cwd or os.getcwd()))


class WarmChild:
    """A process forked by the warm process, with the part of ``subprocess.Popen`` the tests and
    ``recipe.clients.subprocess_server.ServerProcess`` use (``pid``, ``stdout``, ``stderr``,
    ``poll``, ``wait``, ``communicate``, signals). Its parent is the warm process, which reaps it
    and reports its exit code on the connection; it is the leader of its own process group."""

    def __init__(self, path: str, args: list[str], *, stdout, stderr, stdin, env: dict, cwd: str,
                 text: bool = False) -> None:
        assert (args[1:2] == ["-m"] or str(args[1]).endswith(".py")) and stdin != subprocess.PIPE, args
        self.args, self.returncode, self.stdin, self.text = args, None, None, text
        devnull = os.open(os.devnull, os.O_RDWR)
        source = stdin.fileno() if stdin not in (None, subprocess.DEVNULL) else devnull
        pipes: dict[str, tuple[int, int]] = {}
        for name, given in (("stdout", stdout), ("stderr", stderr)):
            if given == subprocess.PIPE:
                pipes[name] = os.pipe()
        out = pipes["stdout"][1] if "stdout" in pipes else (stdout.fileno() if stdout is not None else 1)
        err = (out if stderr == subprocess.STDOUT else pipes["stderr"][1] if "stderr" in pipes
               else stderr.fileno() if stderr is not None else 2)
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(path)
            request = ({"module": args[2], "argv": list(args[3:])} if args[1] == "-m"  # python -m MODULE ...
                       else {"script": str(args[1]), "argv": list(args[2:])})  # python SCRIPT.py ...
            request.update(env=env, cwd=cwd)
            socket.send_fds(self._conn, [json.dumps(request).encode()], [source, out, err])
            self._buffer = b""
            self.pid = json.loads(self._line(None))["pid"]
        finally:
            os.close(devnull)
            for _, write_end in pipes.values():
                os.close(write_end)
        self.stdout = os.fdopen(pipes["stdout"][0], "rb", buffering=0) if "stdout" in pipes else None
        self.stderr = os.fdopen(pipes["stderr"][0], "rb", buffering=0) if "stderr" in pipes else None

    def communicate(self, timeout: float | None = None) -> tuple:
        """Everything the child writes to its pipes, once they close, and its exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = {name: f for name, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f is not None}
        read = {name: b"" for name in streams}
        open_pipes = {f.fileno(): name for name, f in streams.items() if not f.closed}
        while open_pipes:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for fd in select.select(list(open_pipes), [], [], left)[0]:
                data = os.read(fd, 65536)
                if data:
                    read[open_pipes[fd]] += data
                else:
                    streams[open_pipes.pop(fd)].close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        results = [read.get(name) for name in ("stdout", "stderr")]
        return tuple(r.decode(errors="replace") if (r is not None and self.text) else r for r in results)

    def _line(self, timeout: float | None) -> bytes | None:
        """The warm process's next line on the connection (None: not within ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            data = self._conn.recv(4096)
            if not data:
                raise RuntimeError(f"the warm process closed the connection of {self.args}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _exit_line(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        line = self._line(timeout)
        if line is not None:
            self.returncode = json.loads(line)["exit"]
            self._conn.close()

    def poll(self) -> int | None:
        self._exit_line(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._exit_line(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    _serve(sys.argv[1])
