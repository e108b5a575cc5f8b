"""What a secret is, and keeping secrets out of everything recipe writes, uploads or prints.

One predicate (:func:`is_secret_name`) says which config keys, overrides and environment
variables hold a secret; one function (:func:`redact`) takes secrets out of a text. Everything
else (the run's identity, the keys sent by reference to Dask workers, error records, the
dataset card, the printed commands, the batch client) asks these two.

Hydra saves the composed config, the overrides and (under ``-m``) the sweep config in the run
folder, logs each sweep job's overrides, prints ``Error executing job with overrides: [...]``
and, with ``--cfg job --resolve``, the resolved config. A key may reach any of them: given on
the command line, written in a user's config file, or resolved from the environment. So the
CLI learns the secret *values* before Hydra starts (from config keys named like a secret, from
such overrides and from such environment variables), and replaces them with ``***`` in its
stdout and stderr and in the files Hydra saves (:class:`RedactSecrets`, a Hydra callback).
Every process (a Dask worker too) also knows the secrets of its own environment and the key of
each client it builds, so an error message redacted there is clean as well.

A command recipe prints for a user to paste (the resume hint, the dataset card's "Produced by",
Hydra's sweep lines) must work when pasted: :func:`pasteable` puts ``${oc.env:VAR}`` where a
key was, so the key is read from the environment instead of being repeated or masked.

Hydra offers no hook to filter what it saves or prints, hence this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hydra.experimental.callback import Callback

from recipe.redaction import MIN_LENGTH, REDACTED, from_environment, is_secret_name, known, redact, remember  # noqa: F401 - the policy's core, re-exported

def without_secrets(node: Any) -> Any:
    """A plain config tree (dicts and lists) without any key named like a secret, at any depth."""
    if isinstance(node, Mapping):
        return {k: without_secrets(v) for k, v in node.items() if not is_secret_name(k)}
    if isinstance(node, (list, tuple)):
        return [without_secrets(v) for v in node]
    return node


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


def pasteable(args: Sequence[str], provider: str | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """``args`` (command-line arguments) as a command a user may paste, and the variables it reads.

    A printed command must work when pasted, so a key is neither repeated nor masked (a masked
    ``'***'`` would be sent as the key): an override that sets a key named like a secret to a
    literal, and any known secret value inside an override (a key nested in ``backend={...}``),
    become ``${oc.env:VAR}``. ``VAR`` is the environment variable that holds that key when one
    does, else ``<PROVIDER>_API_KEY`` (say so with :func:`key_note`).
    """
    environ = os.environ if environ is None else environ
    names: dict[str, str] = {}  # secret value -> the variable the command reads it from
    for name, value in environ.items():
        if is_secret_name(name) and isinstance(value, str) and len(value.strip()) >= MIN_LENGTH:
            names.setdefault(value.strip(), name)
    used: list[str] = []

    def variable(secret: str) -> str:
        if secret not in names:
            base = re.sub(r"\W+", "_", provider or "recipe").strip("_").upper() + "_API_KEY"
            name, n = base, 1
            while name in names.values():
                n += 1
                name = f"{base}_{n}"
            names[secret] = name
        if names[secret] not in used:
            used.append(names[secret])
        return "${oc.env:" + names[secret] + "}"

    return [_pasteable_argument(arg, variable) for arg in args], used


def _pasteable_argument(arg: str, variable: Any) -> str:
    key, sep, value = str(arg).partition("=")
    if not sep or arg.startswith("-"):  # a flag (-m, --cfg) or a group choice without a value
        return arg
    bare = value.strip()
    if len(bare) >= 2 and bare[0] == bare[-1] and bare[0] in "'\"":
        bare = bare[1:-1].strip()
    if is_secret_name(key.lstrip("+~").split("@")[0]) and "${" not in value and len(bare) >= MIN_LENGTH:
        return f"{key}={variable(bare)}"
    for secret in known():
        if secret in value:
            value = value.replace(secret, variable(secret))
    return f"{key}={value}"


def key_note(variables: Sequence[str], environ: Mapping[str, str] | None = None) -> str | None:
    """What to tell a user about the keys a :func:`pasteable` command reads from the environment."""
    if not variables:
        return None
    environ = os.environ if environ is None else environ
    unset = [v for v in variables if not environ.get(v)]
    text = f"the API key is not repeated: the command reads it from the environment ({', '.join(variables)})"
    return text + (f"; export {' and '.join(unset)} first" if unset else "")


_SWEEP_LINE = re.compile(r"^(.*\t#\d+ : )(.*?)(\r?\n?)$", re.S)  # Hydra's "[HYDRA] \t#0 : a=1 b=2"


def pasteable_sweep_line(text: str) -> str:
    """A line Hydra prints for each job of a sweep (``\t#0 : a=1 backend.api_key=...``), with its
    overrides as a user may paste them (:func:`pasteable`); any other text unchanged."""
    match = _SWEEP_LINE.match(text) if "\t#" in text else None
    if match is None:
        return text
    words = re.findall(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""", match.group(2))
    return match.group(1) + " ".join(pasteable(words)[0]) + match.group(3)


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
    """A text stream that redacts known secrets from everything written to it, and prints
    Hydra's sweep lines as overrides a user may paste (:func:`pasteable_sweep_line`)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(pasteable_sweep_line(text)))
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
