"""What a request costs: each model's price per token (``model.price``, the batch price, or
litellm's price map) and the one function that prices tokens with it.

The budget reserves and settles every request with :meth:`PriceTable.cost`, and ``stats.json``'s
``cost_usd`` is each attempt's tokens priced by :meth:`PriceTable.total` when the attempt saves its
account: one price, so the two always agree. Prices are flat per token (a price is linear, so a
sum of requests costs what its requests cost one by one); litellm's tiers above 128k/200k prompt
tokens are not applied. An attempt's cost is recorded with its account, so a later attempt with
another price (or none) never reprices what was already billed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recipe.config.declared_models import DeclaredModels


@dataclass(frozen=True)
class Price:
    """USD per token, input and output."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input + completion_tokens * self.output


def price_entry(provider: str, model: str) -> dict | None:
    """litellm's price-map entry for the model, when it has a price (not a zero entry we registered)."""
    from recipe.clients.litellm_setup import get_litellm, is_unpriced

    litellm = get_litellm()
    for name in (f"{provider}/{model}", model):
        entry = litellm.model_cost.get(name)
        if entry and not is_unpriced(name) and (entry.get("input_cost_per_token") or entry.get("output_cost_per_token")):
            return entry
    return None


def given_price(declared: tuple[float, float] | None) -> Price | None:
    """A declared price (USD per million tokens, input and output) as USD per token."""
    return None if declared is None else Price(declared[0] / 1e6, declared[1] / 1e6)


def price_for(provider: str, model: str, declared: tuple[float, float] | None = None, batch: bool = False) -> Price | None:
    """The model's price: the declared one (``model.price``, a fallback's ``price``) when given,
    else litellm's price map (its batch price for ``backend.batch``, where it has one), else None."""
    given = given_price(declared)
    if given is not None:
        return given
    entry = price_entry(provider, model)
    if entry is None:
        return None
    if batch and entry.get("input_cost_per_token_batches") is not None:
        return Price(float(entry["input_cost_per_token_batches"]), float(entry.get("output_cost_per_token_batches") or 0))
    return Price(float(entry.get("input_cost_per_token") or 0), float(entry.get("output_cost_per_token") or 0))


@dataclass(frozen=True)
class PriceTable:
    """The run's models and their prices (``None``: no known price); picklable, fixed per attempt."""

    prices: tuple = ()  # (model, input USD per token, output USD per token)
    unpriced: tuple = ()  # models with no known price

    def price(self, model: str) -> Price | None:
        for name, inp, out in self.prices:
            if name == model:
                return Price(inp, out)
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """One request's cost; None when the model has no known price."""
        price = self.price(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)

    def total(self, tokens_by_model: dict) -> float | None:
        """The cost of ``{model: (prompt, completion)}``: 0.0 for no tokens, None when a model
        that used tokens has no known price."""
        total = 0.0
        for model, (prompt, completion) in (tokens_by_model or {}).items():
            if not prompt and not completion:
                continue
            found = self.cost(model, prompt, completion)
            if found is None:
                return None
            total += found
        return round(total, 6)


def table(declared: DeclaredModels, specs: list, batch: bool = False) -> PriceTable:
    """The prices of every model the run's stages call. A declared price (``model.price`` for the
    run's model, a ``backend.fallbacks`` entry's ``price`` for its model) comes before litellm's
    map; ``batch`` takes the provider's batch price."""
    prices: dict[str, tuple[float, float]] = {}
    unpriced: set[str] = set()
    for spec in specs:
        if spec.model in prices:
            continue
        price = price_for(spec.provider, spec.model, declared.price(spec.model), batch)
        if price is None:
            unpriced.add(spec.model)
        else:
            prices[spec.model] = (price.input, price.output)
            unpriced.discard(spec.model)
    return PriceTable(prices=tuple(sorted((m, i, o) for m, (i, o) in prices.items())), unpriced=tuple(sorted(unpriced)))


def used_tokens(tokens_by_model: dict) -> bool:
    return any(prompt or completion for prompt, completion in (tokens_by_model or {}).values())


def attempt_cost(usage: dict, prices: Callable[[], PriceTable | None]) -> float | None:
    """What an attempt's answers cost: the cost it recorded when they were billed; else (an
    account saved before its cost was known) its tokens at ``prices()``, asked only then."""
    if "cost_usd" in usage:
        return usage["cost_usd"]
    tokens = usage.get("tokens_by_model") or {}
    if not used_tokens(tokens):
        return 0.0
    table = prices()
    return None if table is None else table.total(tokens)


def run_cost(attempts: list[dict], prices: Callable[[], PriceTable | None]) -> float | None:
    """The run's cost: every attempt's, summed, whether or not it sent requests itself (a resumed
    batch's answers arrive in an attempt that sent none); None when any part has no known price."""
    total = 0.0
    for attempt in attempts:
        value = attempt_cost(attempt.get("usage") or {}, prices)
        if value is None:
            return None
        total += value
    return round(total, 6)
