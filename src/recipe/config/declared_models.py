"""What a config declares about the models a run calls: prices, output limits, reasoning.

The price table and the budget (``recipe.clients.pricing`` / ``budget``) need these, for the run's
model (``model.price``, ``model.max_output_tokens``, ``model.reasoning``) and for each
``backend.fallbacks`` entry (its ``price``). They are read here once, from the checked config, into
one frozen, picklable object the plan carries; below the plan nothing reads the config for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DeclaredModels:
    """The models' declared facts; a missing fact is None (litellm's price map decides)."""

    run_model: Optional[str] = None
    # (model, input USD per million tokens, output USD per million tokens), either price may be None
    prices: tuple[tuple[str, Optional[float], Optional[float]], ...] = ()
    max_output_tokens: Optional[int] = None  # the run's model's longest answer, thinking included
    reasoning: Optional[bool] = None  # whether the run's model reasons; None: the price map says

    @classmethod
    def read(cls, data: dict) -> "DeclaredModels":
        """From a checked, resolved config (plain containers)."""
        from recipe.config.fallbacks import prices as fallback_prices

        model = data.get("model") or {}
        declared = fallback_prices(data)  # a new dict: the run's model is added to it
        run_model = model.get("name")
        if run_model is not None:
            declared[str(run_model)] = model.get("price") or {}
        prices = tuple(sorted((str(name), _number(price.get("input_per_mtok")), _number(price.get("output_per_mtok")))
                              for name, price in declared.items()))
        max_output = model.get("max_output_tokens")
        reasoning = model.get("reasoning")
        return cls(run_model=None if run_model is None else str(run_model), prices=prices,
                   max_output_tokens=None if max_output is None else int(max_output),
                   reasoning=None if reasoning is None else bool(reasoning))

    def price(self, model: str) -> Optional[tuple[float, float]]:
        """The model's declared price in USD per million tokens (input, output), when both are given."""
        for name, inp, out in self.prices:
            if name == model:
                return None if inp is None or out is None else (inp, out)
        return None


def _number(value) -> Optional[float]:
    return None if value is None else float(value)
