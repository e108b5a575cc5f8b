"""What a config may instantiate: the one allow-list for ``_target_`` paths (formatters, stages).

A config naming another class (``tarfile.TarFile``, ``pathlib.Path``) or a function is refused
before anything is built: only the named module is imported.
"""

from __future__ import annotations

from typing import Any

from recipe.errors import ConfigError


def allowed_class(target: Any, base: type, where: str) -> type:
    """The class ``target`` names, if it is ``base`` or a subclass of it; else one ConfigError.

    The one allow-list for what a config may instantiate (``formatter._target_``, each stage's
    ``_target_``): only the module is imported, nothing is built, so a config naming another
    class (``tarfile.TarFile``, ``pathlib.Path``) or a function is refused before it can do
    anything - printing a config (``--cfg job``) included."""
    import importlib

    path = str(target or "")
    module, found = None, None
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        found = module
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            found = None
        break
    if found is None:
        raise ConfigError(f"{where}={path!r}: not found (give the full dotted path of a {base.__name__} class)")
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{where}={path!r}: not a {base.__name__} class (a subclass of "
                          f"{base.__module__}.{base.__qualname__}); only those can be used here")
    return found
