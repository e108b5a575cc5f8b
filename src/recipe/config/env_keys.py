"""API keys travel as the name of their environment variable, never as their value.

A Dask task graph goes to the scheduler and to every worker, and a shared scheduler is someone
else's memory. So ``backend.api_key: ${oc.env:NAME}`` is not resolved on the driver: the graph
carries an :class:`EnvKey` (the variable's name, and the config's literal default if any), and
each process reads the variable from its own environment when it builds its client.
``backend.ship_key=true`` restores the old behaviour (the driver's value rides in the graph) for
clusters whose workers lack the variable.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any

from recipe.config.secrets import is_secret_name
from recipe.errors import ConfigError

# ${oc.env:NAME} or ${oc.env:NAME,literal default}; anything fancier cannot be sent by name.
_ENV = re.compile(r"^\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^${}]*))?\}$")


@dataclass(frozen=True)
class EnvKey:
    """A key by reference: what a task graph holds instead of the key."""

    name: str
    default: str | None = None  # the config's own literal fallback (e.g. ``EMPTY``), not a secret

    def resolve(self) -> str | None:
        """The key in this process's environment (a Dask worker reads its own)."""
        value = os.environ.get(self.name)
        if value is not None:
            return value
        if self.default is not None:
            return None if self.default == "null" else self.default
        raise ConfigError(f"environment variable {self.name} is not set {_here()}: export it with the API key "
                          f"there, or set backend.ship_key=true to send the driver's key with the tasks")

    def __repr__(self) -> str:
        return f"${{oc.env:{self.name}}}"


def resolve_key(value: Any) -> str | None:
    """A key given as a value or as an :class:`EnvKey`."""
    return value.resolve() if isinstance(value, EnvKey) else value


def _here() -> str:
    try:
        from distributed import get_worker

        return f"on Dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return "in this process"


def _key_paths(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, raw value) of every key named like a secret (``secrets.is_secret_name``: ``api_key``
    and the like) in an unresolved container."""
    found: list[tuple[tuple, Any]] = []
    if isinstance(node, dict):
        for name, value in node.items():
            if is_secret_name(name) and (value is None or isinstance(value, str)):
                found.append(((*path, name), value))
            else:
                found += _key_paths(value, (*path, name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _key_paths(value, (*path, index))
    return found


def resolved_by_reference(cfg: Any) -> dict:
    """``cfg`` as a plain resolved dict, with every ``${oc.env:...}`` key as an :class:`EnvKey`.

    With ``backend.ship_key=true`` the keys are resolved here, as values (the opt-in).
    """
    from omegaconf import OmegaConf

    from recipe.config.compose import resolved_container

    if isinstance(cfg, dict):
        return cfg
    if OmegaConf.select(cfg, "backend.ship_key", default=False):
        return resolved_container(cfg)
    raw = OmegaConf.to_container(cfg, resolve=False)
    refs: dict[tuple, EnvKey] = {}
    blanked = copy.deepcopy(cfg)
    OmegaConf.set_readonly(blanked, False)
    for path, value in _key_paths(raw):
        if not isinstance(value, str) or "${" not in value:
            continue  # a literal (a local server's dummy key) or null
        match = _ENV.match(value.strip())
        where = ".".join(str(p) for p in path)
        if match is None:
            raise ConfigError(f"{where}={value!r}: write a key as ${{oc.env:NAME}} (or ${{oc.env:NAME,default}}) "
                              "so that workers read it from their own environment, or set backend.ship_key=true")
        refs[path] = EnvKey(match.group(1), match.group(2))
        node = blanked
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = None
    data = resolved_container(blanked)
    for path, ref in refs.items():
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = ref
    return data
