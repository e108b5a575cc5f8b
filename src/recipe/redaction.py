"""Which names hold a secret, the secret values this process knows, and taking them out of a text.

The bottom of the house, beside :mod:`recipe.errors`: whatever writes a file (the run folder, an
error record, a dataset card) or a message redacts through :func:`redact`, so it sits below them
all. The policy around it (which overrides and config keys to learn, pasteable commands, Hydra's
saved files) is :mod:`recipe.config.secrets`.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Iterable, Mapping

# `*api_key*`, `*secret*`, `*password*`, `authorization`, and `token` as a word's end (hf_token,
# GITHUB_TOKEN, not max_tokens) unless it names a tokenizer's special token (bos_token, eos_token).
_NAME = re.compile(r"api[_-]?key|private[_-]?key|secret|passw(?:or)?d|authori[sz]ation|(?:^|[_\-.])token$", re.I)
_TOKENIZER_WORD = re.compile(r"(?:^|[_\-.])(?:bos|eos|pad|unk|sep|cls|mask|start|end|stop|special)_token$", re.I)
MIN_LENGTH = 6  # shorter values ("none", "EMPTY") are placeholders, and redacting them would mangle text
REDACTED = "'***'"  # quoted: `--cfg job` output stays valid YAML
# Key shapes redacted from messages even when the value is not known (a server echoing another key).
_SHAPES = [
    re.compile(r"(nvapi-)[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(sk-)[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(Bearer\s+)(?!'\*\*\*')\S+", re.IGNORECASE),
    re.compile(r"((?:api[_-]?key|authorization)['\"]?\s*[:=]\s*['\"]?)(?!'?\*\*\*|\$\{)[^\s'\",}]+", re.IGNORECASE),
]

_lock = threading.Lock()
_known: set[str] = set()
_environment_read = False


def is_secret_name(name: Any) -> bool:
    """Whether a config key, an override's key (dotted) or an environment variable holds a secret."""
    name = str(name)
    return bool(_NAME.search(name)) and not _TOKENIZER_WORD.search(name)


def remember(*values: Any) -> None:
    """Add secret values to redact from now on in this process."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value.strip()) >= MIN_LENGTH:
                _known.add(value.strip())


def known() -> tuple[str, ...]:
    """Every secret value this process knows, longest first (no partial leftovers); the first
    call reads this process's environment (a Dask worker's own keys)."""
    global _environment_read
    if not _environment_read:
        _environment_read = True
        from_environment(os.environ)
    with _lock:
        return tuple(sorted(_known, key=len, reverse=True))


def redact(text: str, extra: Iterable[str | None] = (), *, shapes: bool = False, limit: int | None = None) -> str:
    """``text`` without any known secret (nor those in ``extra``); with ``shapes``, also without
    anything shaped like a key (``sk-...``, ``nvapi-...``, ``Bearer ...``, ``api_key=...``).

    ``limit`` cuts the result to that many characters, after redacting: a cut made first could
    leave part of a key that no longer matches it."""
    if not text:
        return text
    values = sorted({v.strip() for v in extra if isinstance(v, str) and len(v.strip()) >= 4} | set(known()),
                    key=len, reverse=True)
    for secret in values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if shapes:
        for pattern in _SHAPES:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text if limit is None else text[:limit]


def from_environment(environ: Mapping[str, str]) -> None:
    """Environment variables named like a secret (OPENAI_API_KEY, HF_TOKEN, ...)."""
    remember(*(value for name, value in environ.items() if is_secret_name(name)))
