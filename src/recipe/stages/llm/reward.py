"""Scoring responses: an NVIDIA-style reward model, or the generator model as a judge.

``mode: reward_model`` calls ``query_reward_model`` (for example Nemotron-4-340B-Reward on
NIM). ``mode: judge`` asks the run's own model to rate the response: no reward model runs
offline, so this is how the preference recipe works on the embedded default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from recipe.errors import ParseError
from recipe.clients.structured_output import as_schema, score_schema
from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields
from recipe.stages.structured import ask_valid
from recipe.stages.templates import render

JUDGE_PROMPT = (
    "Rate how helpful the answer is to the question, from 0 (useless) to 4 (excellent).\n\n"
    "Question: {{ prompt }}\n\nAnswer: {{ response }}\n\n"
    "Reply with the number only."
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


async def reward_model_scores(llm, model: str, prompt: str, response: str) -> dict:
    """A reward model's ``{attribute: score}`` for one answer to one prompt (the one place both
    this stage and :class:`~recipe.stages.quality.judge.JudgeStage`'s ``mode: reward_model`` ask it)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return await llm.query_reward_model(messages=messages, model=model)


@dataclass
class RewardStage(LLMStage):
    """``record[output_field]`` = scores for ``response_field`` (a list of score dicts if it is a list).

    In judge mode with ``structured`` (the default) and a backend that constrains decoding, the
    model answers ``{"score": x}`` with x in ``[score_min, score_max]`` (the rubric's range);
    elsewhere the first number in its text is taken, as before.

    Input columns: ``prompt_field``, ``response_field``. Output columns: ``output_field``.
    """

    prompt_field: str = "prompt"
    response_field: str = "response"
    output_field: str = "scores"
    mode: Literal["reward_model", "judge"] = "reward_model"
    judge_prompt: str = JUDGE_PROMPT
    judge_score: str = "helpfulness"
    score_min: float = 0
    score_max: float = 4
    structured: bool = True
    schema_retries: Annotated[int, Field(ge=0)] = 2

    def rules(self):
        if self.score_min >= self.score_max:
            yield "score_min", "score_min must be below score_max"

    @property
    def inputs(self) -> set[str]:
        return {self.prompt_field, self.response_field}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    async def _score(self, llm, prompt: str, response: str) -> dict:
        if self.mode == "reward_model":
            return await reward_model_scores(llm, self.spec.model, prompt, response)
        turns = [{"role": "user", "content": render(self.judge_prompt, {"prompt": prompt, "response": response})}]
        if self.structured and self.spec.constrains_output:
            schema = as_schema(score_schema(self.score_min, self.score_max))
            assert schema is not None  # as_schema of a schema dict is never None
            value = (await ask_valid(self, llm, turns, schema, retries=self.schema_retries))[0]
            return {self.judge_score: float(value["score"])}
        answer = (await self.ask(llm, turns, n=1))[0]
        match = _NUMBER.search(answer)
        if match is None:
            raise ParseError(f"judge gave no score: {answer[:80]!r}")
        return {self.judge_score: float(match.group())}

    async def aprocess(self, llm, record: dict) -> list[dict]:
        import asyncio

        require_fields(record, (self.prompt_field, self.response_field), "score")
        responses = record[self.response_field]
        prompt = str(record[self.prompt_field])
        record = dict(record)
        if isinstance(responses, list):
            record[self.output_field] = list(await asyncio.gather(*(self._score(llm, prompt, str(r)) for r in responses)))
        else:
            record[self.output_field] = await self._score(llm, prompt, str(responses))
        return [record]
