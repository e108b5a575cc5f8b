"""Keeping API keys out of everything the CLI writes or prints.

Hydra saves the composed config, the overrides and (under ``-m``) the sweep config in the run
folder, logs each sweep job's overrides, prints ``Error executing job with overrides: [...]``
and, with ``--cfg job --resolve``, the resolved config. A key may reach any of them: given on
the command line, written in a user's config file, or resolved from the environment. So the
CLI learns the secret *values* before Hydra starts (from config keys named like a secret, from
such overrides and from such environment variables), and replaces them with ``***`` in its
stdout and stderr and in the files Hydra saves (:class:`RedactSecrets`, a Hydra callback).

Hydra offers no hook to filter what it saves or prints, hence this module.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterable

from hydra.experimental.callback import Callback

# `*api_key*`, `*secret*`, `*password*`, and `token` as a word's end (hf_token, not max_tokens).
_NAME = re.compile(r"api[_-]?key|secret|password|passwd|(?:^|[_\-.])(?:access_|auth_|api_)?token$", re.I)
_MIN_LENGTH = 6  # shorter values ("none", "EMPTY") are placeholders, and redacting them would mangle text
REDACTED = "'***'"  # quoted: `--cfg job` output stays valid YAML

_lock = threading.Lock()
_known: set[str] = set()


def is_secret_name(name: str) -> bool:
    return bool(_NAME.search(str(name)))


def remember(*values: Any) -> None:
    """Add secret values to redact from now on in this process."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value.strip()) >= _MIN_LENGTH:
                _known.add(value.strip())


def known() -> tuple[str, ...]:
    with _lock:
        return tuple(sorted(_known, key=len, reverse=True))  # longest first: no partial leftovers


def redact(text: str) -> str:
    for secret in known():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def from_environment(environ: dict) -> None:
    """Environment variables named like a secret (OPENAI_API_KEY, HF_TOKEN, ...)."""
    remember(*(value for name, value in environ.items() if is_secret_name(name)))


def from_overrides(overrides: Iterable[str]) -> None:
    """Values of command-line overrides whose key is named like a secret (``backend.api_key=...``)."""
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if sep and is_secret_name(key.lstrip("+~").split("@")[0]) and "${" not in value:
            value = value.strip()  # (an interpolation is no secret: from_config remembers what it resolves to)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            for part in value.split(","):  # a sweep: key=a,b
                remember(part.strip().strip("'\""))
            remember(value)


def from_config(cfg: Any) -> None:
    """Values of config keys named like a secret, resolved where they can be (unset env: skipped)."""
    from omegaconf import DictConfig, ListConfig

    def walk(node: Any, name: str = "") -> None:
        if isinstance(node, (DictConfig, dict)):
            for key in list(node.keys()):
                try:
                    value = node[key]
                except Exception:  # an interpolation that cannot resolve (an unset variable)
                    continue
                walk(value, str(key))
        elif isinstance(node, (ListConfig, list, tuple)):
            for index in range(len(node)):
                try:
                    walk(node[index], name)
                except Exception:
                    continue
        elif isinstance(node, str) and is_secret_name(name):
            remember(node)

    walk(cfg)


def scrub_file(path: Path) -> None:
    """Replace known secrets in a text file, in place (atomically: the file is whole or unchanged)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    cleaned = redact(text)
    if cleaned != text:
        tmp = path.with_name(f".{path.name}.redacting")
        tmp.write_text(cleaned, encoding="utf-8")
        tmp.replace(path)


class RedactingStream:
    """A text stream that redacts known secrets from everything written to it."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RedactSecrets(Callback):
    """Scrubs what Hydra saved (``.hydra/*.yaml``, ``multirun.yaml``) and the job's log file.

    Hydra writes those files before calling ``on_job_start``, so each job scrubs them before its
    first request; ``on_job_end`` scrubs the log file the job wrote.
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self._scrub(config)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        self._scrub(config)

    @staticmethod
    def _scrub(config: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not known() or not HydraConfig.initialized():
            return
        hydra = HydraConfig.get()
        folders = [Path(hydra.runtime.output_dir)]
        if hydra.mode is not None and hydra.mode.name == "MULTIRUN":
            folders.append(Path(hydra.sweep.dir))
        for folder in folders:
            if folder.is_dir():
                for path in [*folder.glob("*.yaml"), *folder.glob("*.log"), *folder.glob(".hydra/*.yaml")]:
                    scrub_file(path)
