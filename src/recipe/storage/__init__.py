"""Files wherever Dask users keep them: local paths, or fsspec URLs (s3://, gs://, abfs://, file://).

Questions and deletions go through fsspec for every path, local ones included (its local
filesystem is one more backend). Listing, stat-based fingerprints, opening and writing local files
keep the standard library: relative paths stay relative, fingerprints keep nanosecond mtimes,
files are real file objects, and a local commit is a rename. fsspec's remote backends are
optional extras: a missing one is one line naming what to install.
Credentials come from where each backend looks (environment, profiles, instance roles); nothing
here reads or writes them. ``AWS_ENDPOINT_URL`` points s3fs at an S3-compatible server.

Commit is atomic everywhere. Locally: a temporary file beside the target, fsync, ``os.replace``.
Object stores have no rename, but a PUT is atomic (the object appears whole or not at all, a
multipart upload only when it completes): the content is prepared in a local temporary file and
sent as one object, so a reader never sees a part or a manifest half-written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Callable

from recipe.errors import ConfigError

# fsspec protocol -> the extra of ours that brings its backend
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_PACKAGES = {"abfs": "adlfs", "az": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}


def protocol(path: str | os.PathLike) -> str:
    """``s3``, ``gs``, ... for a URL; ``file`` for a local path or a ``file://`` URL."""
    text = str(path)
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def is_remote(path: str | os.PathLike) -> bool:
    return protocol(path) != "file"


def local_path(path: str | os.PathLike) -> str:
    """A local path for a local path or ``file://`` URL (user's ``~`` expanded)."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return os.path.expanduser(text)


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return os.path.join(local_path(base), *parts)


def name(path: str | os.PathLike) -> str:
    """The last component (a file's name) of a path or URL."""
    return posixpath.basename(str(path).rstrip("/")) if is_remote(path) else Path(local_path(path)).name


def filesystem(path: str | os.PathLike):
    """(fsspec filesystem, path within it) for a URL or a local path; one clear line when its
    backend is missing."""
    import fsspec

    proto = protocol(path)
    try:
        return fsspec.core.url_to_fs(str(path) if is_remote(path) else local_path(path))
    except ImportError:
        if proto in _EXTRAS:
            hint = f"pip install 'recipe[{_EXTRAS[proto]}]'"
        else:
            hint = f"pip install {_PACKAGES.get(proto, 'the fsspec backend for ' + proto + '://')}"
        raise ConfigError(f"{path}: {proto}:// paths need an fsspec backend that is not installed: {hint}") from None
    except ValueError as exc:  # an unknown protocol
        raise ConfigError(f"{path}: {exc}") from None


# ---- a store that cannot be reached -------------------------------------------------------------

_UNREACHABLE_MODULES = ("botocore", "aiobotocore", "aiohttp", "google.auth", "google.api_core", "azure.core")


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store itself cannot be used (no or refused credentials, an endpoint
    that does not answer), not that one file is missing."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, (PermissionError, ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in _UNREACHABLE_MODULES or cls.__module__.startswith(_UNREACHABLE_MODULES)
               for cls in type(exc).__mro__)


def unreachable_message(path: str, exc: BaseException) -> str:
    """One line: which store, why it cannot be used, where credentials are looked for."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    text = f"{path}: cannot use this storage: {reason} ({type(exc).__name__})"
    if "credential" in reason.lower() or "NoCredentials" in type(exc).__name__:
        text += ("; credentials come from where the backend looks: for s3://, AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role")
    elif protocol(path) in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        text += f"; the endpoint is AWS_ENDPOINT_URL={os.environ['AWS_ENDPOINT_URL']}"
    return text


def _one_line(func: Callable) -> Callable:
    """A remote store that cannot be reached makes a :class:`ConfigError` (one ``error:`` line
    at the CLI) naming the path, instead of the backend's traceback."""

    @functools.wraps(func)
    def wrapper(path, *args, **kwargs):
        try:
            return func(path, *args, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:
            if is_remote(path) and _unreachable(exc):
                raise ConfigError(unreachable_message(str(path), exc)) from None
            raise

    return wrapper


def _url(fs, inner: str, like: str) -> str:
    """A path within ``fs`` back as a URL of the same protocol as ``like``."""
    return fs.unstrip_protocol(inner) if is_remote(like) else inner


# ---- reading ---------------------------------------------------------------------------------

@_one_line
def glob(pattern: str) -> list[str]:
    """Files matching a pattern (sorted), as paths or URLs like the pattern."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(local_path(pattern)))
    fs, inner = filesystem(pattern)
    fs.invalidate_cache()  # other processes (workers) write here: never trust a cached listing
    return sorted(_url(fs, p, pattern) for p in fs.glob(inner) if fs.isfile(p))


def has_magic(pattern: str) -> bool:
    import glob as _glob

    return _glob.has_magic(str(pattern))


def _fresh(path: str):
    """(filesystem, inner path) with no cached listing of it: other processes (workers) write there."""
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    return fs, inner


@_one_line
def isfile(path: str) -> bool:
    """Whether ``path`` is a file; a store that cannot be reached is an error, not "no file"
    (fsspec's own ``isfile`` answers False for both)."""
    if not is_remote(path):
        return os.path.isfile(local_path(path))
    fs, inner = _fresh(path)
    try:
        return fs.info(inner).get("type") == "file"
    except FileNotFoundError:
        return False


@_one_line
def exists(path: str) -> bool:
    """Whether ``path`` exists (as :func:`isfile`: an unreachable store is an error)."""
    if not is_remote(path):
        return os.path.exists(local_path(path))
    fs, inner = _fresh(path)
    try:
        fs.info(inner)
        return True
    except FileNotFoundError:
        return False


@_one_line
def fingerprint(path: str) -> dict:
    """What identifies a file's content cheaply: absolute path or URL, size, and mtime (local) or
    ETag / last-modified (object stores), so that a changed input makes a new run."""
    if not is_remote(path):
        stat = os.stat(local_path(path))
        return {"path": os.path.abspath(local_path(path)), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    info = fs.info(inner)
    version = {k: str(info[k]) for k in ("ETag", "etag", "LastModified", "mtime", "generation") if info.get(k)}
    return {"path": str(path), "size": info.get("size"), **version}


@_one_line
def open_file(path: str, mode: str = "rb") -> IO[Any]:
    """An open file (close it, or use ``with``); reads of remote files are buffered by fsspec."""
    if not is_remote(path):
        return open(local_path(path), mode)
    fs, inner = filesystem(path)
    return fs.open(inner, mode)


@_one_line
def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file: one ranged GET on object storage."""
    fs, inner = filesystem(path)
    return fs.cat_file(inner, start=start, end=end)


@_one_line
def read_text(path: str) -> str | None:
    """A small file's text, or None when it does not exist."""
    try:
        with open_file(path, "rb") as handle:
            return handle.read().decode("utf-8")
    except FileNotFoundError:
        return None


@_one_line
def listdir(directory: str, pattern: str = "*") -> list[str]:
    """Files directly in ``directory`` whose names match ``pattern`` (sorted paths or URLs)."""
    if not is_remote(directory):  # the directory's own name is taken literally, as Path.glob does
        import glob as _glob

        found = _glob.glob(os.path.join(_glob.escape(local_path(directory)), pattern))
        return sorted(p for p in found if os.path.isfile(p))
    return glob(join(directory, pattern))


@_one_line
def size(path: str) -> int:
    """A file's size in bytes."""
    if not is_remote(path):
        return os.stat(local_path(path)).st_size
    fs, inner = _fresh(path)
    return int(fs.info(inner)["size"])


@_one_line
def sizes(directory: str) -> dict[str, int]:
    """Each file directly in ``directory`` by name, with its size in bytes: one listing (none
    when the directory does not exist)."""
    if not is_remote(directory):
        found: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(local_path(directory)) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_file():
                        found[entry.name] = entry.stat().st_size
        return found
    fs, inner = _fresh(directory)
    try:
        listing = fs.ls(inner, detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(item["name"].rstrip("/")): int(item.get("size") or 0)
            for item in listing if item.get("type") == "file"}


# ---- writing ---------------------------------------------------------------------------------

def makedirs(directory: str) -> None:
    """A local directory; nothing on object stores (they have no directories)."""
    if not is_remote(directory):
        os.makedirs(local_path(directory), exist_ok=True)


@_one_line
def atomic_write(path: str, fill: Callable[[Path], None]) -> None:
    """Write ``path`` whole or not at all; ``fill`` writes the content into the local file it is given.

    Local: the temporary file ``.<name>.<pid>.<random>.tmp`` sits beside the target and is renamed
    over it. Remote: it sits in the system's temp dir and is sent as one object (one PUT).
    """
    if not is_remote(path):
        target = Path(local_path(path))
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            fill(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return
    fs, inner = filesystem(path)
    fd, name_ = tempfile.mkstemp(prefix=".recipe-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name_)
    try:
        fill(tmp)
        fs.put_file(str(tmp), inner)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


@_one_line
def remove(path: str) -> None:
    """Delete a file if it exists."""
    fs, inner = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(inner)


@_one_line
def remove_tree(directory: str) -> None:
    if not is_remote(directory):
        import shutil

        shutil.rmtree(local_path(directory), ignore_errors=True)
        return
    fs, inner = filesystem(directory)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(inner, recursive=True)


def resolve_paths(path: str | list[str]) -> list[str]:
    """Files for a path, a glob or a list of either (local, or fsspec URLs such as s3://bucket/in/*.jsonl);
    a missing file is refused up front."""
    patterns = [path] if isinstance(path, str) else list(path)
    files: list[str] = []
    for pattern in patterns:
        pattern = str(pattern) if is_remote(pattern) else os.path.expanduser(str(pattern))
        matches = glob(pattern) if has_magic(pattern) else [pattern]
        for match in matches:
            if not isfile(match):
                raise ConfigError(f"input file not found: {match}")
            files.append(match)
    if not files:
        raise ConfigError(f"no input file matches {path!r}")
    return files
