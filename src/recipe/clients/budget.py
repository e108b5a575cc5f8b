"""A spending cap the run never crosses: ``budget.max_usd`` and ``budget.max_tokens``.

Every request reserves its worst case before it starts (prompt tokens, estimated, plus
``max_tokens``, at the model's price) and settles with the real usage when it answers, so the
spend can only overshoot the cap by what the requests already in flight used beyond their
estimate. Once one reservation does not fit, no request starts again in this attempt.

:class:`BudgetLedger` is the reservation logic, free of I/O. The same class runs in one process
(:class:`LocalBudget`, threaded runs) and inside the Dask scheduler's limits plugin
(``recipe.clients.cluster_limits``) for a cap that holds across every worker. No library does
this (litellm's ``max_budget`` is a per-process soft limit checked after the fact), hence our own.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from recipe.config.declared_models import DeclaredModels
from recipe.config.schema import BudgetConfig
from recipe.errors import BudgetExhausted, ConfigError

# one function prices a request, for the budget and for stats.json's cost_usd
from recipe.clients.pricing import (  # noqa: F401
    Price,
    PriceTable,
    attempt_cost,
    price_entry,
)

BUDGET_HANDLER = "recipe_budget"
DEFAULT_MAX_OUTPUT = 4096  # worst-case answer length when neither max_tokens nor the price map bounds it


def max_output_tokens(provider: str, model: str, context_length: int | None) -> int:
    """The longest answer a request without ``max_tokens`` can get, for its worst-case reservation."""
    entry = price_entry(provider, model) or {}
    return int(entry.get("max_output_tokens") or entry.get("max_tokens") or context_length or DEFAULT_MAX_OUTPUT)


class BudgetLedger:
    """Spent, reserved and the caps; ``reserve`` says whether a request may start."""

    def __init__(self, max_usd: float | None = None, max_tokens: int | None = None,
                 spent_usd: float = 0.0, spent_tokens: int = 0) -> None:
        self.max_usd, self.max_tokens = max_usd, max_tokens
        self.spent_usd, self.spent_tokens = float(spent_usd), int(spent_tokens)
        self.reserved_usd, self.reserved_tokens = 0.0, 0
        self.in_flight = self.max_in_flight = 0
        self.refused = 0
        self.reached = False

    def reserve(self, usd: float, tokens: int) -> bool:
        if self.reached:
            self.refused += 1
            return False
        over_usd = self.max_usd is not None and self.spent_usd + self.reserved_usd + usd > self.max_usd + 1e-12
        over_tokens = self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        if over_usd or over_tokens:
            self.reached = True  # stop starting requests: the rest of the attempt only finishes
            self.refused += 1
            return False
        self.reserved_usd += usd
        self.reserved_tokens += tokens
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return True

    def settle(self, reserved_usd: float, reserved_tokens: int, usd: float, tokens: int) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.reserved_tokens = max(0, self.reserved_tokens - reserved_tokens)
        self.in_flight = max(0, self.in_flight - 1)
        self.spent_usd += usd
        self.spent_tokens += tokens

    def state(self) -> dict:
        return {"spent_usd": self.spent_usd, "spent_tokens": self.spent_tokens,
                "reserved_usd": self.reserved_usd, "reserved_tokens": self.reserved_tokens,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "refused": self.refused, "reached": self.reached}

    def handle(self, action: str, usd: float = 0.0, tokens: int = 0, real_usd: float = 0.0,
               real_tokens: int = 0) -> dict:
        """One message of a worker (see :class:`ClusterBudget`)."""
        if action == "reserve":
            return {"ok": self.reserve(usd, tokens)}
        if action == "settle":
            self.settle(usd, tokens, real_usd, real_tokens)
            return {"ok": not self.reached}
        return self.state()


@dataclass(frozen=True)
class BudgetSpec:
    """What every process needs to charge requests; picklable, part of the client spec.

    ``key`` names this attempt's ledger (one per run and attempt); ``prices`` maps model names to
    ``(input, output)`` USD per token; ``spent_*`` is what earlier attempts of the run spent.
    """

    key: str
    max_usd: float | None = None
    max_tokens: int | None = None
    prices: tuple = ()
    max_output: tuple = ()  # (model, worst-case answer tokens) when sampling sets no max_tokens
    # Models that reason: their requests reserve max_output even under a max_tokens (which a thinking
    # budget, or a provider that counts the trace apart, can exceed).
    reasoning_models: tuple = ()
    spent_usd: float = 0.0
    spent_tokens: int = 0

    def price(self, model: str) -> Price | None:
        for name, inp, out in self.prices:
            if name == model:
                return Price(inp, out)
        return None

    def worst_case_output(self, model: str) -> int:
        return dict(self.max_output).get(model, DEFAULT_MAX_OUTPUT)

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, int]:
        usd = PriceTable(self.prices).cost(model, prompt_tokens, completion_tokens)
        return usd or 0.0, prompt_tokens + completion_tokens

    def ledger_config(self) -> dict:
        return {"max_usd": self.max_usd, "max_tokens": self.max_tokens, "spent_usd": self.spent_usd,
                "spent_tokens": self.spent_tokens}


@dataclass
class Ticket:
    """One attempt's reservation, settled with the usage the attempt reported."""

    model: str
    usd: float
    tokens: int
    used: list = field(default_factory=list)  # (prompt, completion) pairs seen by this attempt


class _Budget:
    """The client's side: reserve before an attempt, settle after it."""

    spec: BudgetSpec

    async def _reserve(self, usd: float, tokens: int) -> bool:
        raise NotImplementedError

    async def _settle(self, ticket: Ticket, usd: float, tokens: int) -> None:
        raise NotImplementedError

    async def reserve(self, model: str, prompt_tokens: int, max_tokens: int | None) -> Ticket:
        completion = max_tokens if max_tokens else self.spec.worst_case_output(model)
        usd, tokens = self.spec.charge(model, prompt_tokens, completion)
        if not await self._reserve(usd, tokens):
            raise BudgetExhausted(self.refusal())
        return Ticket(model, usd, tokens)

    async def settle(self, ticket: Ticket) -> None:
        usd, tokens = 0.0, 0
        for prompt, completion in ticket.used:
            u, t = self.spec.charge(ticket.model, prompt, completion)
            usd, tokens = usd + u, tokens + t
        await self._settle(ticket, usd, tokens)

    def refusal(self) -> str:
        caps = []
        if self.spec.max_usd is not None:
            caps.append(f"budget.max_usd={self.spec.max_usd:g}")
        if self.spec.max_tokens is not None:
            caps.append(f"budget.max_tokens={self.spec.max_tokens}")
        return f"budget reached ({' and '.join(caps)}): request not sent"


class LocalBudget(_Budget):
    """The ledger of a threaded run, in this process."""

    def __init__(self, spec: BudgetSpec, ledger: BudgetLedger) -> None:
        self.spec, self.ledger = spec, ledger
        self._lock = threading.Lock()

    async def _reserve(self, usd: float, tokens: int) -> bool:
        with self._lock:
            return self.ledger.reserve(usd, tokens)

    async def _settle(self, ticket: Ticket, usd: float, tokens: int) -> None:
        with self._lock:
            self.ledger.settle(ticket.usd, ticket.tokens, usd, tokens)


class ClusterBudget(_Budget):
    """A worker's side of the ledger that lives in the scheduler (one RPC to reserve, one to settle)."""

    def __init__(self, spec: BudgetSpec, worker) -> None:
        self.spec, self.worker = spec, worker
        self.reached = False

    async def _call(self, **msg) -> dict:
        rpc = getattr(self.worker.scheduler, BUDGET_HANDLER)
        future = asyncio.run_coroutine_threadsafe(
            rpc(key=self.spec.key, config=self.spec.ledger_config(), **msg), self.worker.loop.asyncio_loop)
        return await asyncio.wrap_future(future)

    async def _reserve(self, usd: float, tokens: int) -> bool:
        if self.reached:  # known here already: no RPC per refused request
            return False
        ok = (await self._call(action="reserve", usd=usd, tokens=tokens))["ok"]
        self.reached = self.reached or not ok
        return ok

    async def _settle(self, ticket: Ticket, usd: float, tokens: int) -> None:
        answer = await self._call(action="settle", usd=ticket.usd, tokens=ticket.tokens, real_usd=usd,
                                  real_tokens=tokens)
        self.reached = self.reached or not answer["ok"]


_ledgers: dict[str, BudgetLedger] = {}
_ledgers_lock = threading.Lock()


def local_ledger(spec: BudgetSpec) -> BudgetLedger:
    """This process's ledger for ``spec.key`` (a threaded run: every client shares it)."""
    with _ledgers_lock:
        ledger = _ledgers.get(spec.key)
        if ledger is None:
            ledger = _ledgers[spec.key] = BudgetLedger(**spec.ledger_config())
        return ledger


def plugin_ledger(ledgers: dict, key: str, config: dict) -> BudgetLedger:
    """The scheduler plugin's ledger for ``key``, created by the first worker message."""
    ledger = ledgers.get(key)
    if ledger is None:
        ledger = ledgers[key] = BudgetLedger(**config)
    return ledger


def budget_for(spec: BudgetSpec | None, worker=None) -> _Budget | None:
    """The budget a client charges: in the scheduler inside a Dask worker, else in this process."""
    if spec is None:
        return None
    if worker is not None:
        return ClusterBudget(spec, worker)
    return LocalBudget(spec, local_ledger(spec))


def final_state(spec: BudgetSpec, client=None) -> dict:
    """The attempt's ledger at its end: from the scheduler plugin, or from this process."""
    if client is not None:
        def read(dask_scheduler=None) -> dict | None:
            plugin = dask_scheduler.plugins.get("recipe-limits")
            ledger = getattr(plugin, "budgets", {}).get(spec.key) if plugin is not None else None
            return ledger.state() if ledger is not None else None

        state = client.run_on_scheduler(read)
        if state is not None:
            return state
        return BudgetLedger(**spec.ledger_config()).state()
    return local_ledger(spec).state()


def forget(spec: BudgetSpec) -> None:
    with _ledgers_lock:
        _ledgers.pop(spec.key, None)


# ---- the run's side: prices, earlier attempts, the report -------------------------------------


def prepare(cap: BudgetConfig | None, declared: DeclaredModels, specs: list, key: str, attempts: list[dict],
            batch: bool = False, prices: PriceTable | None = None) -> BudgetSpec | None:
    """The run's :class:`BudgetSpec`, or None without a cap. Refuses (ConfigError) a
    ``budget.max_usd`` for a model with no known price unless its declared price gives one.

    ``prices`` is the attempt's price table (:func:`recipe.clients.pricing.table`), the one that
    also prices ``cost_usd``; built here when not given."""
    from recipe.clients import pricing

    if cap is None or (cap.max_usd is None and cap.max_tokens is None):
        return None
    max_usd, max_tokens = cap.max_usd, cap.max_tokens
    prices = prices if prices is not None else pricing.table(declared, specs, batch)
    if max_usd is not None and prices.unpriced:
        spec = next(s for s in specs if s.model in prices.unpriced)
        where = "model.price" if spec.model == declared.run_model else \
            "its backend.fallbacks entry's price"  # a fallback model (recipe.config.fallbacks)
        raise ConfigError(
            f"budget.max_usd: model {spec.provider}/{spec.model} has no known price; give one with "
            f"{where}.input_per_mtok=USD and {where}.output_per_mtok=USD (per million tokens)")
    outputs = {spec.model: max_output_tokens(spec.provider, spec.model, spec.context_length) for spec in specs}
    if declared.max_output_tokens and declared.run_model in outputs:  # the config knows better than the map
        outputs[declared.run_model] = declared.max_output_tokens
    reasoning = sorted({spec.model for spec in specs if _reasons(spec, declared)})
    spent_usd, spent_tokens = spent_before(attempts, prices)
    return BudgetSpec(key=key, max_usd=max_usd, max_tokens=max_tokens, prices=prices.prices,
                      max_output=tuple(sorted(outputs.items())), reasoning_models=tuple(reasoning),
                      spent_usd=spent_usd, spent_tokens=spent_tokens)


def _reasons(spec, declared: DeclaredModels) -> bool:
    """Whether ``spec``'s model thinks before answering: ``model.reasoning`` for the run's model,
    else litellm's map (``supports_reasoning``)."""
    if spec.model == declared.run_model and declared.reasoning is not None:
        return declared.reasoning
    from recipe.clients.litellm_setup import get_litellm

    litellm = get_litellm()
    for name in (f"{spec.provider}/{spec.model}", spec.model):
        entry = litellm.model_cost.get(name)
        if entry:
            return bool(entry.get("supports_reasoning"))
    return False


def spent_before(attempts: list[dict], prices: PriceTable) -> tuple[float, int]:
    """What earlier attempts spent: the cost each recorded when it was billed (the same sum as
    ``cost_usd``), and its tokens."""
    usd, tokens = 0.0, 0
    for attempt in attempts:
        usage = attempt.get("usage") or {}
        usd += attempt_cost(usage, lambda: prices) or 0.0
        tokens += sum(p + c for p, c in (usage.get("tokens_by_model") or {}).values())
    return usd, tokens


def report(spec: BudgetSpec, state: dict) -> dict:
    """``stats.json``'s ``budget``: the caps, what the whole run spent, what is still reserved."""
    out = {"max_usd": spec.max_usd, "max_tokens": spec.max_tokens,
           "spent_usd": round(state["spent_usd"], 6), "spent_tokens": state["spent_tokens"],
           "reserved_usd": round(state["reserved_usd"], 6), "reserved_tokens": state["reserved_tokens"],
           "spent_before_usd": round(spec.spent_usd, 6), "spent_before_tokens": spec.spent_tokens,
           "max_in_flight": state["max_in_flight"], "reached": state["reached"]}
    if spec.max_usd is not None:
        out["remaining_usd"] = round(max(0.0, spec.max_usd - state["spent_usd"]), 6)
    if spec.max_tokens is not None:
        out["remaining_tokens"] = max(0, spec.max_tokens - state["spent_tokens"])
    return out


def resume_hint(budget: dict, argv: list[str]) -> str:
    """The one line printed when the budget stops a run: spent, remaining, the command to resume."""
    import shlex

    parts, args = [], list(argv)
    if budget.get("max_usd") is not None:
        parts.append(f"spent ${budget['spent_usd']:.4f} of ${budget['max_usd']:g} "
                     f"(${budget.get('remaining_usd', 0):.4f} remains)")
    if budget.get("max_tokens") is not None:
        parts.append(f"spent {budget['spent_tokens']} of {budget['max_tokens']} tokens "
                     f"({budget.get('remaining_tokens', 0)} remain)")
    for key, value in (("max_usd", budget.get("max_usd")), ("max_tokens", budget.get("max_tokens"))):
        if value is None:
            continue
        args = [a for a in args if not a.lstrip("+").startswith(f"budget.{key}=")]
        higher = round(value * 2, 6) if key == "max_usd" else int(value) * 2
        args.append(f"budget.{key}={higher:g}" if key == "max_usd" else f"budget.{key}={higher}")
    command = "python -m recipe" + ("" if not args else " " + shlex.join(args))
    return f"budget reached: {'; '.join(parts)}; resume with a higher budget: {command}"
