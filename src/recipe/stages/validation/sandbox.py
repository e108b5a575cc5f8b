"""Running untrusted Python: one sandboxed process per run, its limits, and what it said.

The code a model wrote is run by :func:`run_python` in a process of its own
(:mod:`recipe.stages.validation.sandbox_child` sets it up), with:

- limits that hold everywhere (rlimits): CPU time, address space (memory), process count, file
  size, open files; no core dumps; a wall-clock limit that kills the sandbox's processes;
- an empty temporary working directory, removed afterwards;
- a minimal environment built from nothing (``PATH``, ``HOME``, ``TMPDIR``, ``LANG``): no API
  key or other variable of ours reaches it;
- no inherited file descriptors (``close_fds``), stdin from ``/dev/null``;
- stdout and stderr read up to ``output_bytes`` in all; past that the run is stopped.

Where Linux namespaces are allowed (as root, as in this project's containers, or through
unprivileged user namespaces) it also gets its own network namespace (no network at all: only
a loopback that is down), its own PID namespace (it sees and signals only its own processes;
the wall clock kills all of them at once), every mount read-only except the working
directory, and no capabilities. As root it runs as ``nobody`` (so ``RLIMIT_NPROC`` counts and
root's files are out of reach; a Python installed under ``/root`` is bound back in, the rest
of ``/root`` hidden); without root it runs as our user and our home directory is hidden.

**Not isolated**:

- everywhere: reading files. Mounts are read-only, not hidden: the code can read whatever
  ``nobody`` (as root) or our user (without root, outside our home) can read. Keep secrets in
  the environment or in files only their owner reads;
- without root, ``RLIMIT_NPROC`` counts every process of our user, not only the sandbox's;
- where namespaces are refused (no root and no unprivileged user namespaces, or a container
  that forbids ``unshare``): the network, writing wherever our user can, signalling our other
  processes, reading their ``/proc/*/environ``. The limits and the environment still hold.

Each result's ``isolation`` lists what held, so a run can tell. bubblewrap is not used: as
root these namespaces are what it would set up, and without root it needs the same user
namespaces. For code that may be written to attack the host, use a VM or container per run.
"""

from __future__ import annotations

import marshal
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError

_CHILD = str(Path(__file__).with_name("sandbox_child.py"))
_SETUP_FAILED = 121
_SETUP_SECONDS = 5.0  # beyond the wall clock: the interpreter's start and the namespaces


class SandboxError(RecipeError):
    """The sandbox itself could not run (not the code's fault): the record becomes an error record."""


@dataclass(frozen=True)
class Limits:
    """What one run may use; every value has a floor that holds without namespaces."""

    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    output_bytes: int = 64 * 1024
    file_mb: int = 16
    open_files: int = 64
    keep_chars: int = 2000  # of stdout and stderr, kept in the result


def _nobody() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _hidden() -> list[str]:
    """Directories the code must not read: our home (root's is out of ``nobody``'s reach anyway,
    and hidden where the interpreter lives in it)."""
    if os.geteuid() == 0:
        return []
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return []
    return [home] if home and os.path.isdir(home) and not tempfile.gettempdir().startswith(home + os.sep) else []


def minimal_env(workdir: str) -> dict[str, str]:
    """The sandbox's whole environment: built from nothing, never a filtered copy of ours."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1"}


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_capped(proc: subprocess.Popen, cap: int, deadline: float) -> tuple[bytes, bytes, bool, bool]:
    """stdout, stderr (together at most ``cap`` bytes), whether the cap was passed, whether the
    deadline was (the process group is then killed)."""
    chunks: dict[Any, list[bytes]] = {proc.stdout: [], proc.stderr: []}
    total, over, late = 0, False, False
    with selectors.DefaultSelector() as sel:
        for pipe in chunks:
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                late = True
                _kill_group(proc.pid)
                break
            for key, _ in sel.select(timeout=left):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                room = cap - total
                chunks[key.fileobj].append(data[:room])
                total += len(data)
                if total > cap:
                    over = True
            if over:  # stop reading: the code's next write fails (EPIPE), the warden reports as usual
                break
    return b"".join(chunks[proc.stdout]), b"".join(chunks[proc.stderr]), over, late


def _assertion(status: dict, code: str) -> str | None:
    """For a failed assert, the source line that failed (the code's own line, not a test's text)."""
    if not str(status.get("raised", "")).startswith("AssertionError") or not status.get("line"):
        return None
    lines = code.splitlines()
    number = int(status["line"])
    return lines[number - 1].strip() if 0 < number <= len(lines) else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_python(code: str, limits: Limits = Limits(), *, isolate: bool = True) -> dict:
    """Run ``code`` in a sandbox; ``{ok, error, stdout, stderr, failed_assertion, isolation, ...}``.

    ``ok`` is true when the code ran to the end (exit status 0). ``error`` says why not, in one
    line: the exception, the limit hit, the signal. Raises :class:`SandboxError` only when the
    sandbox itself failed to start.
    """
    base = tempfile.mkdtemp(prefix="recipe-sandbox-")
    proc: subprocess.Popen | None = None
    try:
        os.chmod(base, 0o711)  # the code may pass through, never write here (the status file lives here)
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        uid, gid = _nobody()
        if uid is not None:
            os.chown(workdir, uid, gid)
        source = os.path.join(base, "solution.py")
        with open(source, "w") as f:
            f.write(code)
        os.chmod(source, 0o644)
        config = {"base": base, "workdir": workdir, "uid": uid, "gid": gid, "isolate": isolate, "hide": _hidden(),
                  "limits": {"cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
                             "memory_bytes": limits.memory_mb * 2**20, "processes": limits.processes,
                             "file_bytes": limits.file_mb * 2**20, "open_files": limits.open_files}}
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", _CHILD, marshal.dumps(config).hex()], cwd=workdir,
                                env=minimal_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        deadline = started + limits.wall_seconds + _SETUP_SECONDS
        out, err, over, late = _read_capped(proc, limits.output_bytes, deadline)
        proc.stdout.close()
        proc.stderr.close()
        try:  # the warden ends when the code does (at the latest at its wall clock) and reports
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late = True
        _kill_group(proc.pid)  # the warden, if it hangs, and whatever the code left in its group
        proc.wait()
        seconds = round(time.monotonic() - started, 3)
        try:
            status = marshal.loads(Path(base, "status").read_bytes() or marshal.dumps({}))
        except (OSError, ValueError, EOFError, TypeError):
            status = {}
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        if status.get("exit") == _SETUP_FAILED and "sandbox setup failed" in stderr:
            raise SandboxError(stderr.strip().splitlines()[-1])
        error, assertion = None, None
        if over:
            error = f"output limit: printed more than {limits.output_bytes} bytes (stopped)"
        elif late or status.get("timed_out"):
            error = f"time limit: still running after {limits.wall_seconds:g} s (wall clock), killed"
        elif status.get("signal"):
            sig = status["signal"]
            error = (f"CPU time limit of {limits.cpu_seconds} s exceeded" if sig == signal.SIGXCPU
                     else f"killed by {_signal_name(sig)}")
        elif not status:
            error = f"the sandbox process died ({_signal_name(-proc.returncode) if proc.returncode < 0 else proc.returncode})"
        elif status.get("exit"):
            error = status.get("raised") or f"exit status {status['exit']}"
            assertion = _assertion(status, code)
        keep = limits.keep_chars
        return {"ok": error is None, "error": error, "stdout": stdout[-keep:] if len(stdout) > keep else stdout,
                "stderr": stderr[-keep:] if len(stderr) > keep else stderr, "failed_assertion": assertion,
                "exit": status.get("exit"), "seconds": seconds, "isolation": status.get("isolation") or []}
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


