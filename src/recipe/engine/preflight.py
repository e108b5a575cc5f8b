"""Checks that need the environment, made once before the first paid request.

The schema (:mod:`recipe.config.schema`) checks values on their own; these check them against
the world: a provider litellm knows, an ``api_base`` that is a URL, a ``tool_choice`` the provider's
wire carries, folders that can be written.
A problem is one :class:`ConfigError` line, before any request, server or cluster starts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlparse

from recipe.clients import providers
from recipe.config import fallbacks
from recipe.errors import ConfigError


# The providers table's names are in litellm's provider list (tests/test_config.py checks), so
# checking them needs no ``import litellm`` (2 s): a run on Dask workers starts its cluster first.
KNOWN_PROVIDERS = providers.KNOWN_PROVIDERS


def _providers() -> set[str]:
    from recipe.clients.litellm_setup import get_litellm

    litellm = get_litellm()
    return {getattr(p, "value", p) for p in litellm.provider_list}


def backend_problems(data: dict) -> list[str]:
    """The backends' problems (the run's and each stage's: provider and api_base), as a list: a
    config's report gathers them with the rest (the CLI's precheck, ``run_plan.checked_data``)."""
    backends = [("backend", data.get("backend") or {})]
    for name, stage in ((data.get("recipe") or {}).get("stages") or {}).items():
        if isinstance(stage, dict) and isinstance(stage.get("backend"), dict):
            backends.append((f"recipe.stages.{name}.backend", stage["backend"]))
    problems: list[str] = tool_choice_problems(data)
    for where, backend in list(backends):  # each fallback is a backend of its own
        if where != "backend":  # (the run's own entries are the schema's: config/fallbacks.py)
            problems += fallbacks.problems(backend.get("fallbacks"), f"{where}.fallbacks")
        for i, entry in enumerate(backend.get("fallbacks") or ()):
            if isinstance(entry, dict):
                backends.append((f"{where}.fallbacks[{i}]", entry))
    listed: set[str] | None = None  # litellm's provider list, imported only for a name the table lacks
    for where, backend in backends:
        provider = backend.get("provider")
        if provider is not None and provider not in KNOWN_PROVIDERS:
            listed = listed if listed is not None else _providers()
            if provider not in listed:
                problems.append(f"{where}.provider={provider!r}: not a provider litellm knows "
                                "(for example openai, nvidia_nim, hosted_vllm, ollama)")
        if backend.get("batch") is True and provider is not None and providers.provider(provider).batch is None:
            problems.append(f"{where}.batch=true: {provider} has no batch API (backend.batch=false sends the "
                            "requests one by one)")
        api_base = backend.get("api_base")
        many = isinstance(api_base, (list, tuple))
        if many and not api_base:
            problems.append(f"{where}.api_base=[]: an empty list of replicas (give one URL or several)")
        bases: list = list(api_base or []) if many else [] if api_base is None else [api_base]
        for i, base in enumerate(bases):
            url = urlparse(str(base))
            if not isinstance(base, str) or url.scheme not in ("http", "https") or not url.netloc:
                key = f"{where}.api_base[{i}]" if many else f"{where}.api_base"
                problems.append(f"{key}={base!r}: not an http(s) URL (for example http://127.0.0.1:8000/v1)")
    return problems


def tool_choice_problems(data: dict) -> list[str]:
    """A stage's ``tool_choice`` sent where litellm drops it (ollama: the model would call whatever it
    likes, silently): one line each, before any request. ``auto`` is what such a wire does anyway."""
    run_provider = (data.get("backend") or {}).get("provider")
    problems = []
    for name, stage in ((data.get("recipe") or {}).get("stages") or {}).items():
        if not isinstance(stage, dict) or stage.get("tool_choice") in (None, "auto") or not stage.get("tools"):
            continue
        own = stage.get("backend")
        provider = (own.get("provider") if isinstance(own, dict) else None) or run_provider
        if provider is not None and not providers.provider(provider).tool_choice:
            problems.append(f"recipe.stages.{name}.tool_choice={stage['tool_choice']!r}: {provider} takes no "
                            "tool_choice (litellm drops it from the request, so the model would pick its tools "
                            "freely); leave it unset or auto, or use an OpenAI-compatible backend")
    return problems


def check_writable(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {folder} cannot be written: {exc.strerror or exc}") from None
    return folder
