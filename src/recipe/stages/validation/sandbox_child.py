"""The first code to run inside a sandboxed process: isolation, limits, then the untrusted code.

Run by :mod:`recipe.stages.validation.sandbox` as ``python -I sandbox_child.py CONFIG`` with an empty environment
and no inherited descriptors. It uses the standard library only, and no ``recipe`` import, so
nothing of ours is loaded next to the untrusted code.

As root (or where unprivileged user namespaces work) it first moves into new mount, network,
PID, IPC and UTS namespaces: every mount read-only except the working directory, no network
but a loopback that is down, a fresh ``/proc`` that shows only the sandbox's processes. It then
forks PID 1 of the new namespace, which forks the code's process: that one sets the rlimits
(CPU time, address space, process count, file size, open files, no core), drops to ``nobody``
when root and every capability, and runs the code. PID 1 stays root, out of the code's reach,
and reports how the code's process ended. The first process stays outside as the sandbox's
warden: it kills PID 1 at the wall-clock limit, which kills every process of the namespace, and
writes the outcome to ``status`` in the root-owned directory above the working directory, a
file the code cannot write (nor hold open).

Where namespaces are refused, the code runs with the rlimits only (``status`` says which
isolation held): see :mod:`recipe.stages.validation.sandbox` for what is then not isolated.
"""

import ctypes
import _signal as signal  # not signal: its enums (and re's) were a third of the start-up
import marshal
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
_FLAG_WORDS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1

_libc = ctypes.CDLL(None, use_errno=True)


def _call(name, *args):
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _encoded(text):
    return None if text is None else text.encode()


def _mount(source, target, fstype, flags):
    enc = _encoded
    _call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None)


def _mounts():
    """(mount point, per-mount flags) of every mount this process sees, parents first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")
            flags = 0
            for word in parts[5].split(","):
                flags |= _FLAG_WORDS.get(word, 0)
            found.append((point, flags))
    return sorted(found, key=lambda m: m[0].count("/"))


def _isolate(workdir, notes, expose):
    """New namespaces; all mounts read-only except ``workdir``. Returns whether it held."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    try:
        _call("unshare", flags)
    except OSError as exc:
        notes.append(f"no namespaces ({exc.strerror})")
        return False
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    expose()
    points = _mounts()
    _mount(workdir, workdir, None, MS_BIND)  # the one writable place, a mount of its own
    readonly = True
    for point, keep in points:
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
        except OSError:
            if point == "/":
                readonly = False
    _mount(None, workdir, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    notes += ["network", "pid", "mounts read-only" if readonly else "root mount NOT read-only"]
    return True


def _limit(limits):
    cpu = int(limits["cpu_seconds"])
    for kind, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                        (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
                        (resource.RLIMIT_NPROC, (limits["processes"],) * 2),
                        (resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2),
                        (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
                        (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(kind, value)


def _drop(uid, gid):
    """To ``nobody`` when root; then no capabilities at all (in a user namespace the code would
    otherwise hold them there, enough to remount its view writable) and no way to regain any."""
    if os.geteuid() == 0 and uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
    _call("capset", header, data)
    _call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _run_code(path):
    """The untrusted code, as ``__main__``, in a namespace of its own."""
    with open(path) as f:
        source = f.read()
    sys.argv = ["solution.py"]
    code = compile(source, "solution.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


def _reachable(path):
    """Whether ``nobody`` can walk down to ``path`` (every directory on the way is o+x)."""
    parts = os.path.abspath(path).split(os.sep)
    return all(os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & 0o001 for i in range(1, len(parts) + 1))


def _hide(directory, paths, notes):
    """A tmpfs over ``directory``; the ``paths`` under it (the interpreter's) bound back in."""
    held = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in paths
            if p and os.path.isdir(p) and os.path.realpath(p).startswith(directory + os.sep)]
    _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV)
    os.chmod(directory, 0o755)
    for needed, fd in held:
        os.makedirs(os.path.realpath(needed), exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", os.path.realpath(needed), None, MS_BIND | MS_REC)
        os.close(fd)
    notes.append(f"{directory} hidden")


def _expose(paths, notes, hide, as_nobody):
    """Directories hidden (``hide``: our home, when not root), and the interpreter's own
    directories reachable where ``nobody`` could not walk to them (a Python under ``/root``):
    a tmpfs over the directory in the way hides the rest of it."""
    for directory in hide:
        if os.path.isdir(directory) and directory != os.sep:
            _hide(os.path.realpath(directory), paths, notes)
    if not as_nobody:
        return
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)}, key=len):
        if _reachable(path):
            continue
        parts = path.split(os.sep)
        blocked = next(os.sep.join(parts[:i]) for i in range(2, len(parts) + 1)
                       if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001)
        _hide(blocked, paths, notes)


def _report(pipe, status):
    os.write(pipe, marshal.dumps(status))


def _sandboxed(cfg, pipe, raised):
    """The code's process: limits, ``nobody``, then the code. Never returns. Its own exception
    (not that of a process it forked, whose tracebacks share stderr) goes to ``raised``."""
    me = os.getpid()
    try:
        os.close(pipe)
        os.chdir(cfg["workdir"])
        _limit(cfg["limits"])
        _drop(cfg["uid"], cfg["gid"])
        _call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        os.umask(0o077)
    except BaseException as exc:  # noqa: BLE001 - the sandbox could not be set up: say so, run nothing
        sys.stderr.write(f"sandbox setup failed: {exc}\n")
        os._exit(121)
    path = os.path.join(cfg["base"], "solution.py")
    del cfg
    try:
        _run_code(path)
    except SystemExit as exc:
        sys.stdout.flush()
        code = exc.code
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    except BaseException as exc:  # noqa: BLE001 - the code's own failure: its traceback is the report
        import traceback  # here, not for every run: most code passes

        tb = exc.__traceback__
        for _ in range(2):  # from the code's own frames on: not ours (_sandboxed, _run_code)
            tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
        traceback.print_exception(type(exc), exc, tb)
        sys.stderr.flush()
        if os.getpid() == me:
            line = [n for frame, n in traceback.walk_tb(tb) if frame.f_code.co_filename == "solution.py"]
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
            said = f"{line[-1] if line else 0}\t{(text[-1] if text else type(exc).__name__)[:1000]}\n"
            try:
                os.write(raised, said.encode("utf-8", "replace"))
            except OSError:
                pass
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _fate(code):
    return {"signal": os.WTERMSIG(code), "exit": None} if os.WIFSIGNALED(code) else \
        {"signal": None, "exit": os.WEXITSTATUS(code)}


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    out = open(os.path.join(cfg["base"], "status"), "wb")  # opened before the mounts turn read-only
    notes = []
    namespaced = False
    if cfg["isolate"]:
        needed = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
        as_nobody = os.geteuid() == 0 and cfg["uid"] is not None
        namespaced = _isolate(cfg["workdir"], notes, lambda: _expose(needed, notes, cfg["hide"], as_nobody))
    status = {"isolation": notes, "timed_out": False, "signal": None, "exit": None}
    read_end, write_end = os.pipe()
    raised_r, raised_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out.close()  # the status is the warden's alone: the code must not hold it open for writing
        os.close(read_end)
        os.close(raised_r)
        if not namespaced:
            _sandboxed(cfg, write_end, raised_w)
        # PID 1 of the new namespace: a fresh /proc, then the code as its child. The code cannot
        # signal it (it stays root) and every process of the namespace dies with it.
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass
        child = os.fork()
        if child == 0:
            _sandboxed(cfg, write_end, raised_w)
        os.close(raised_w)
        _, code = os.waitpid(child, 0)
        _report(write_end, _fate(code))
        os._exit(0)
    os.close(write_end)
    os.close(raised_w)

    def expire(*_):
        status["timed_out"] = True
        try:
            os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: every process in it dies too
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(cfg["limits"]["wall_seconds"]))
    _, code = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    said = b""
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        said += chunk
    if namespaced and said:
        status.update(marshal.loads(said))
    elif not namespaced:
        status.update(_fate(code))
    os.set_blocking(raised_r, False)  # written before the code's process ended; a stray child may hold it open
    try:
        number, _, message = os.read(raised_r, 65536).split(b"\n")[0].decode("utf-8", "replace").partition("\t")
        if message:  # plain text: what the code's process wrote is never unmarshalled as data
            status.update(raised=message, line=int(number) or None)
    except (OSError, ValueError):
        pass
    out.write(marshal.dumps(status))
    out.close()
    os._exit(0)


if __name__ == "__main__":
    main()
