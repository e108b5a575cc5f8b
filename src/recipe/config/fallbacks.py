"""What ``backend.fallbacks`` says: the models that answer a record the run's model cannot.

Each entry names a model and, optionally, where it is served::

    backend:
      fallbacks:
        - model: long-context-model      # required
          provider: openai               # default: the run's backend.provider
          api_base: http://host:8001/v1  # default: the run's api_base when the provider is the same
          api_key: ${oc.env:FALLBACK_KEY}  # by reference, like backend.api_key; default: the run's key
          context_length: 131072         # optional: prompts that clearly do not fit skip this model
          price: {input_per_mtok: 3, output_per_mtok: 15}  # optional: USD per million tokens

Parsed and checked here, once, for the schema's report (one ``error:`` line per run) and for the
client spec (:class:`recipe.clients.factory.ClientSpec`); whether a provider exists and an
``api_base`` is a URL is checked with the run's own backend (``recipe.engine.preflight``).
"""

from __future__ import annotations

from typing import Any

KEYS = ("model", "provider", "api_base", "api_key", "context_length", "price")
PRICE_KEYS = ("input_per_mtok", "output_per_mtok")


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain containers (unresolved interpolations kept as text)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=False)
    return value


def problems(value: Any, where: str = "backend.fallbacks") -> list[str]:
    """Every problem of a ``backend.fallbacks`` value, each as ``key: problem`` (none when unset)."""
    value = _plain(value)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        return [f"{where}={value!r}: must be a list of {{model: ..., provider: ..., api_base: ...}} entries"]
    found: list[str] = []
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            found.append(f"{at}={entry!r}: must be a mapping with at least a model "
                         "(e.g. {model: NAME, provider: openai, api_base: URL})")
            continue
        for key in entry:
            if key not in KEYS:
                found.append(f"{at}.{key}: unknown key ({where} entries take: {', '.join(KEYS)})")
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            found.append(f"{at}.model={model!r}: each fallback needs a model name")
        provider = entry.get("provider")
        if provider is not None and (not isinstance(provider, str) or not provider):
            found.append(f"{at}.provider={provider!r}: must be a provider name (e.g. openai)")
        length = entry.get("context_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            found.append(f"{at}.context_length={length!r}: must be an integer >= 1 (or null)")
        price = entry.get("price")
        if price is not None:
            if not isinstance(price, dict) or set(price) - set(PRICE_KEYS) or \
                    any(not isinstance(price.get(k), (int, float)) or isinstance(price.get(k), bool)
                        or price[k] < 0 for k in PRICE_KEYS):
                found.append(f"{at}.price={price!r}: give both input_per_mtok and output_per_mtok "
                             "(USD per million tokens, >= 0)")
    return found


def entries(backend: dict) -> list[dict]:
    """The fallback entries of a resolved ``backend`` mapping (their prices apart: :func:`prices`), defaults filled in: ``provider`` is the
    run's, and so are ``api_base`` and ``api_key`` when the entry keeps the run's provider and gives none."""
    found = []
    for entry in backend.get("fallbacks") or ():
        provider = entry.get("provider") or backend.get("provider")
        same = provider == backend.get("provider")
        api_base = entry.get("api_base") or (backend.get("api_base") if same else None)
        api_key = entry["api_key"] if "api_key" in entry else (backend.get("api_key") if same else None)
        found.append({"model": entry["model"], "provider": provider,
                      "api_base": tuple(api_base) if isinstance(api_base, (list, tuple)) else api_base,
                      "api_key": api_key, "context_length": entry.get("context_length")})
    return found


def prices(data: dict) -> dict[str, dict]:
    """``{model: {input_per_mtok, output_per_mtok}}`` the fallback entries give (the price table's overrides)."""
    backend = data.get("backend") or {}
    return {entry["model"]: dict(entry["price"]) for entry in backend.get("fallbacks") or ()
            if isinstance(entry, dict) and entry.get("price")}
