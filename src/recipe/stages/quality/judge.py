"""An LLM as judge: scores per criterion of a rubric, through structured output.

The judge answers one JSON object, ``{criterion: score, ...}`` (plus ``rationale`` when asked
for), each score an integer within ``scale``; the schema is enforced by the backend where it
can constrain decoding, and checked and retried (``schema_retries``) by the one structured
output loop otherwise. The scores land on the record in the shape a reward model's take
(``{name: number}``, a list of those for a list of responses), with the ``aggregate`` beside
them, so :class:`PreferencePairsStage` takes either (``score_key: aggregate`` or a criterion).
This is the one judge stage: :class:`RewardStage` only asks reward models.

``mode: reward_model`` scores with an NVIDIA-style reward model instead (the answer of
:class:`RewardStage`, ``{helpfulness: x, correctness: y, ...}``): a recipe built on the judge (the
preference recipe) then switches to a reward model by overriding one key, not its stage class.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import Annotated, Callable, Iterable, Literal

from pydantic import Field, StrictInt

from recipe.clients.structured_output import as_schema
from recipe.stages import progress
from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields
from recipe.stages.llm.reward import reward_model_scores
from recipe.stages.structured import ask_valid_answers
from recipe.stages.templates import fields_required, render

AGGREGATE = "aggregate"
#: What the stage itself puts into the judge's template, beside the record's fields.
TEMPLATE_FIELDS = ("prompt", "response", "criteria", "scale", "rationale")
_AGGREGATES: dict[str, Callable[[Iterable[float]], float]] = {"mean": statistics.fmean, "min": min, "max": max}

JUDGE_PROMPT = """\
You are a strict, fair judge. Rate the answer to the question on each criterion, with an integer \
from {{ scale[0] }} (worst) to {{ scale[1] }} (best).

Criteria:
{% for name, description in criteria.items() %}- {{ name }}: {{ description }}
{% endfor %}
Question: {{ prompt }}

Answer: {{ response }}

Reply with a JSON object giving one score per criterion{% if rationale %} and a one-sentence rationale{% endif %}."""


@dataclass
class JudgeStage(LLMStage):
    """``record[output_field]`` = ``{criterion: score, ..., "aggregate": x}`` for ``response_field``.

    ``criteria`` maps each criterion's name to what it means; ``scale`` is ``[lowest, highest]``
    (integers). ``aggregate`` (mean, min or max) combines the criteria; with ``min_score`` a
    record whose aggregate is below it is dropped (counted as filtered); for a list of responses,
    the responses below it are dropped with their scores. ``rationale_field`` asks for a short
    rationale and stores it there. ``prompt`` is a Jinja template over the record, ``prompt``,
    ``response``, ``criteria``, ``scale`` and ``rationale``. ``model:``/``backend:`` choose
    another judge model for this stage only, as for every LLM stage. ``mode: reward_model`` asks
    ``model`` as a reward model (``query_reward_model``): the scores are its attributes, with no
    aggregate; ``criteria``, ``prompt`` and ``scale`` are then unused. ``reasoning_field`` keeps a
    reasoning judge's trace (a list for a list of responses, aligned with the kept ones).

    Input columns: ``prompt_field``, ``response_field``, the template's other fields (mode judge).
    Output columns: ``output_field``, ``rationale_field``, ``reasoning_field``.
    """

    criteria: dict[str, str] = field(default_factory=dict)
    scale: list[StrictInt] = field(default_factory=lambda: [1, 5])
    prompt: str = JUDGE_PROMPT
    prompt_field: str = "prompt"
    response_field: str = "response"
    output_field: str = "scores"
    min_score: float | None = None
    aggregate: Literal["mean", "min", "max"] = "mean"
    rationale_field: str | None = None
    rationale_max_length: Annotated[int, Field(ge=1)] = 300
    schema_retries: Annotated[int, Field(ge=0)] = 2
    mode: Literal["judge", "reward_model"] = "judge"
    reasoning_field: str | None = None

    def rules(self):
        if self.mode == "reward_model" and (self.min_score is not None or self.rationale_field):
            yield "mode", ("min_score and rationale_field need mode judge "
                           "(a reward model gives its own attributes, no aggregate or rationale)")
        if not self.criteria:
            yield "criteria", "criteria must map each criterion's name to its description"
        if AGGREGATE in self.criteria or "rationale" in self.criteria:
            yield "criteria", "'aggregate' and 'rationale' are reserved, not criterion names"
        scale = list(self.scale or [])
        if len(scale) != 2 or scale[0] >= scale[1]:
            yield "scale", f"scale must be [lowest, highest], two integers, lowest first; got {self.scale!r}"
        elif self.min_score is not None and not scale[0] <= self.min_score <= scale[1]:
            yield "min_score", f"min_score {self.min_score} is outside the scale {scale}"

    @property
    def inputs(self) -> set[str]:
        template = set(fields_required(self.prompt)) - set(TEMPLATE_FIELDS) if self.mode == "judge" else set()
        return {self.prompt_field, self.response_field} | template

    @property
    def outputs(self) -> set[str]:
        return {self.output_field} | {f for f in (self.rationale_field, self.reasoning_field) if f}

    def schema(self) -> dict:
        """One integer per criterion within the scale, every one required, nothing else."""
        low, high = self.scale
        properties: dict = {name: {"type": "integer", "minimum": low, "maximum": high} for name in self.criteria}
        if self.rationale_field:
            properties["rationale"] = {"type": "string", "maxLength": self.rationale_max_length}
        return {"title": "judgement", "type": "object", "properties": properties,
                "required": list(properties), "additionalProperties": False}

    async def _judge(self, llm, record: dict, prompt: str, response: str) -> tuple[dict, str | None, str | None]:
        if self.mode == "reward_model":
            return await reward_model_scores(llm, self.spec.model, prompt, response), None, None
        text = render(self.prompt, {**record, "prompt": prompt, "response": response, "criteria": self.criteria,
                                    "scale": self.scale, "rationale": bool(self.rationale_field)})
        value, thought = (await ask_valid_answers(self, llm, [{"role": "user", "content": text}],
                                                  as_schema(self.schema()), retries=self.schema_retries))[0]
        scores = {name: float(value[name]) for name in self.criteria}
        scores[AGGREGATE] = round(float(_AGGREGATES[self.aggregate](scores.values())), 6)
        return scores, value.get("rationale"), thought

    def _passes(self, scores: dict) -> bool:
        return self.min_score is None or scores[AGGREGATE] >= self.min_score

    async def aprocess(self, llm, record: dict) -> list[dict]:
        require_fields(record, (self.prompt_field, self.response_field), "judge")
        prompt, responses = str(record[self.prompt_field]), record[self.response_field]
        record = dict(record)
        if not isinstance(responses, list):
            scores, rationale, thought = await self._judge(llm, record, prompt, str(responses))
            if not self._passes(scores):
                progress.add_filtered(1)
                return []
            record[self.output_field] = scores
            if self.rationale_field:
                record[self.rationale_field] = rationale
            if self.reasoning_field:
                record[self.reasoning_field] = thought
            return [record]
        judged = await asyncio.gather(*(self._judge(llm, record, prompt, str(r)) for r in responses))
        kept = [(r, s, why, thought) for r, (s, why, thought) in zip(responses, judged) if self._passes(s)]
        if not kept:
            progress.add_filtered(1)
            return []
        record[self.response_field] = [r for r, _, _, _ in kept]
        record[self.output_field] = [s for _, s, _, _ in kept]
        if self.rationale_field:
            record[self.rationale_field] = [why for _, _, why, _ in kept]
        if self.reasoning_field:
            record[self.reasoning_field] = [thought for _, _, _, thought in kept]
        return [record]

