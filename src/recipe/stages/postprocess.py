"""Small non-LLM stages that glue the recipes together, and the Nemotron-CC post-processors.

Each is a plain record -> records function wrapped as a stage: a bad record raises
:class:`InputError` or :class:`ParseError` and becomes an error record; a record that
becomes several uses :func:`records.child` so every output keeps its lineage.

- :class:`MapStage` applies any ``"module:function"`` to each record.
- :class:`CombineStage` concatenates fields (and fixed extra items) into one list.
- :class:`CrossStage` makes one child per value of a list (topics x material types).
- :class:`AppendSeedsStage` adds records given in the config to the bag (extra topics).
- :class:`PreferencePairsStage` turns scored responses into a chosen/rejected pair.
- :class:`QAPairsStage` and :class:`KnowledgeListStage` post-process Nemotron-CC answers.
- :class:`StyledDialogueStage` is :class:`DialogueStage` with the user style read per record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import dask.bag as db

from recipe.errors import ConfigError, InputError, ParseError
from recipe.stages import parsers, progress
from recipe.stages.base import Stage
from recipe.stages.functions import load_function
from recipe.stages.dialogue import STYLES, USER_TURN_PROMPT, DialogueStage, format_history
from recipe.stages.records import ID, PARENT, child, make_id
from recipe.stages.templates import render


@dataclass
class MapStage(Stage):
    """``function(record, **kwargs)`` per record.

    It returns a dict (the record, same identity), ``None`` (the record is dropped and counted
    as filtered) or a list of dicts (each becomes a child of the record, keeping lineage).
    A KeyError, IndexError, TypeError or ValueError from the function makes an error record.
    """

    function: Any = None  # "module:function" or a callable
    kwargs: dict = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.function is None:
            raise ConfigError(f"stage {self.name!r}: give function='module:function'")
        load_function(self.function)  # fail at build time, not per record

    def process(self, record: dict) -> list[dict]:
        try:
            result = load_function(self.function)(dict(record), **(self.kwargs or {}))
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # a record the function cannot take
            raise InputError(f"{self.function}: {type(exc).__name__}: {exc}") from None
        if result is None:
            progress.add_filtered(1)
            return []
        if isinstance(result, dict):
            out = dict(result)
            out[ID], out[PARENT] = record.get(ID), record.get(PARENT)
            return [out]
        if isinstance(result, list) and all(isinstance(r, dict) for r in result):
            return [child(record, i, **{k: v for k, v in r.items() if k not in (ID, PARENT)})
                    for i, r in enumerate(result)]
        raise InputError(f"stage {self.name!r}: {self.function} returned a {type(result).__name__}, "
                         "not a dict, a list of dicts or None")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class CombineStage(Stage):
    """``record[output_field]`` = the listed fields' values, then ``extra``, as one list.

    ``fields`` is a list of names, or a mapping ``name: include`` so that a recipe flag can
    switch one off (open_qa's ``combine_topics``: ``{macro_topic: ${recipe.combine_topics},
    subtopics: true}``). A scalar field counts as a one-item list. ``unique`` drops repeats
    (case-insensitively), keeping the first.
    """

    fields: Any = dc_field(default_factory=list)
    output_field: str = "items"
    extra: list = dc_field(default_factory=list)
    unique: bool = True
    min_items: int = 1

    def _names(self) -> list[str]:
        if isinstance(self.fields, dict):
            return [name for name, include in self.fields.items() if include]
        return list(self.fields or [])

    def process(self, record: dict) -> list[dict]:
        items: list = []
        for name in self._names():
            if name not in record:
                raise InputError(f"record has no field {name!r} to combine")
            items += _as_list(record[name])
        items += list(self.extra or [])
        if self.unique:
            seen, kept = set(), []
            for item in items:
                key = str(item).strip().lower()
                if key not in seen:
                    seen.add(key)
                    kept.append(item)
            items = kept
        if len(items) < self.min_items:
            raise InputError(f"combined list has {len(items)} items, fewer than {self.min_items}")
        return [{**record, self.output_field: items}]


@dataclass
class CrossStage(Stage):
    """One child per value: ``record x values`` with ``record[field] = value``.

    A dict value is merged into the child instead (several fields per value).
    """

    field: str = "value"
    values: list = dc_field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.values:
            raise ConfigError(f"stage {self.name!r}: values is empty, so every record would vanish")

    def process(self, record: dict) -> list[dict]:
        out = []
        for index, value in enumerate(self.values):
            extra = dict(value) if isinstance(value, dict) else {self.field: value}
            out.append(child(record, index, **extra))
        return out


@dataclass
class AppendSeedsStage(Stage):
    """Add records given in the config to the bag, after the records already in it.

    Strings become ``{field: value}``; dicts are taken as records. Each gets a stable ``_id``
    and ``_parent: null``: like seeds read by :class:`ReadStage`, they are roots.
    """

    field: str = "seed"
    values: list = dc_field(default_factory=list)

    def seed_records(self) -> list[dict]:
        records = []
        for index, value in enumerate(self.values or []):
            record = dict(value) if isinstance(value, dict) else {self.field: value}
            record.setdefault(ID, make_id("append", self.name, index, json.dumps(record, sort_keys=True, default=str)))
            record.setdefault(PARENT, None)
            records.append(record)
        return records

    def __call__(self, bag: db.Bag | None) -> db.Bag:
        records = self.seed_records()
        if not records:
            return bag
        extra = db.from_sequence(records, npartitions=1)
        return extra if bag is None else db.concat([bag, extra])

    def process(self, record: dict) -> list[dict]:
        return [record]


@dataclass
class PreferencePairsStage(Stage):
    """A chosen/rejected pair from a record's responses and their scores.

    ``record[scores_field]`` holds one score dict per response (as :class:`RewardStage`
    writes them); the response with the highest ``score_key`` is chosen and the lowest
    rejected. A tie (every response scored the same) gives no preference: the record is
    dropped and counted as filtered. Missing or mismatched scores are an :class:`InputError`.
    """

    responses_field: str = "responses"
    scores_field: str = "scores"
    score_key: str = "helpfulness"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"

    def process(self, record: dict) -> list[dict]:
        responses, scores = record.get(self.responses_field), record.get(self.scores_field)
        if not isinstance(responses, list) or len(responses) < 2:
            raise InputError(f"field {self.responses_field!r} needs a list of at least 2 responses "
                             f"(got {type(responses).__name__}); generate with n >= 2")
        if not isinstance(scores, list) or len(scores) != len(responses):
            raise InputError(f"field {self.scores_field!r} needs one score per response "
                             f"({len(responses)}), got {scores!r:.80}")
        values = []
        for index, score in enumerate(scores):
            value = score.get(self.score_key) if isinstance(score, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"score {index} has no number {self.score_key!r}: {score!r:.80}")
            values.append(float(value))
        best, worst = max(values), min(values)
        if best == worst:
            progress.add_filtered(1)
            return []
        chosen, rejected = values.index(best), values.index(worst)
        return [{**record,
                 self.chosen_field: responses[chosen], self.rejected_field: responses[rejected],
                 f"{self.chosen_field}_score": best, f"{self.rejected_field}_score": worst}]


# --- Nemotron-CC post-processing ---------------------------------------------------------

def diverse_qa_text(document: str, answer: str, max_num_pairs: int) -> str:
    """The document followed by 1..max_num_pairs of the answer's QA pairs (Nemotron-CC)."""
    return parsers.format_qa_pairs(document, parsers.parse_qa_pairs(str(answer), max_num_pairs))


def knowledge_list_text(answer: str) -> str:
    """The knowledge list as clean lines, one item per line (Nemotron-CC)."""
    return parsers.clean_knowledge_list(str(answer))


def _field(record: dict, name: str) -> Any:
    if name not in record:
        raise InputError(f"record has no field {name!r}")
    value = record[name]
    return value[0] if isinstance(value, list) and len(value) == 1 else value


@dataclass
class QAPairsStage(Stage):
    """``record[output_field]`` = document + QA pairs parsed from ``input_field``."""

    input_field: str = "response"
    document_field: str = "text"
    output_field: str = "text"
    max_num_pairs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_num_pairs < 1:
            raise ConfigError(f"stage {self.name!r}: max_num_pairs must be >= 1, not {self.max_num_pairs}")

    def process(self, record: dict) -> list[dict]:
        text = diverse_qa_text(str(_field(record, self.document_field)), _field(record, self.input_field),
                               self.max_num_pairs)
        return [{**record, self.output_field: text}]


@dataclass
class KnowledgeListStage(Stage):
    """``record[output_field]`` = the cleaned knowledge list from ``input_field``."""

    input_field: str = "response"
    output_field: str = "text"

    def process(self, record: dict) -> list[dict]:
        return [{**record, self.output_field: knowledge_list_text(_field(record, self.input_field))}]


# --- dialogues --------------------------------------------------------------------------

@dataclass
class StyledDialogueStage(DialogueStage):
    """:class:`DialogueStage` whose user style comes from ``record[style_field]`` when present.

    ``styles`` maps a style name to its description (defaults: normal, complex, concise);
    an unknown name is used as the description itself. ``end_with_user`` adds one last user
    turn, so the conversation ends with a request still to answer (the two-turn recipe).
    """

    style_field: str | None = "style"
    styles: dict = dc_field(default_factory=lambda: dict(STYLES))
    end_with_user: bool = False

    async def aprocess(self, llm, record: dict) -> list[dict]:
        if self.openline_field not in record:
            raise InputError(f"record has no field {self.openline_field!r} to open the dialogue")
        name = record.get(self.style_field, self.style) if self.style_field else self.style
        style = (self.styles or {}).get(name, name) or ""

        async def user_turn(conversation: list[dict]) -> dict:
            prompt = render(self.user_turn_prompt or USER_TURN_PROMPT,
                            {**record, "history": format_history(conversation), "style": style},
                            may_be_blank=("style", "history"))
            text = (await self.ask(llm, [{"role": "user", "content": prompt}], n=1))[0].strip()
            if not text:
                raise ParseError("the model wrote an empty user turn")
            return {"role": "user", "content": text}

        conversation = [{"role": "user", "content": str(record[self.openline_field])}]
        for turn in range(self.n_user_turns):
            answer = (await self.ask(llm, conversation, n=1))[0]
            conversation.append({"role": "assistant", "content": answer})
            if turn < self.n_user_turns - 1 or self.end_with_user:
                conversation.append(await user_turn(conversation))
        return [{**record, self.output_field: conversation}]
