"""Scoring responses with an NVIDIA-style reward model (``query_reward_model``).

For example Nemotron-4-340B-Reward on NIM: the scores are the model's attributes
(``{helpfulness: x, correctness: y, ...}``). An LLM asked to rate a response is a judge, and the
one judge stage is :class:`~recipe.stages.quality.judge.JudgeStage` (its ``mode: reward_model``
asks a reward model too, through :func:`reward_model_scores`, so a recipe switches with one key).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields


async def reward_model_scores(llm, model: str, prompt: str, response: str) -> dict:
    """A reward model's ``{attribute: score}`` for one answer to one prompt (the one place both
    this stage and :class:`~recipe.stages.quality.judge.JudgeStage`'s ``mode: reward_model`` ask it)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return await llm.query_reward_model(messages=messages, model=model)


@dataclass
class RewardStage(LLMStage):
    """``record[output_field]`` = a reward model's scores for ``response_field`` (a list of score
    dicts if it is a list).

    Input columns: ``prompt_field``, ``response_field``. Output columns: ``output_field``.
    """

    prompt_field: str = "prompt"
    response_field: str = "response"
    output_field: str = "scores"
    mode: str = "reward_model"  # the only mode: the model as judge is JudgeStage's

    def rules(self):
        if self.mode != "reward_model":
            yield "mode", (f"mode {self.mode!r}: RewardStage asks a reward model only; an LLM as judge is "
                           "recipe.stages.JudgeStage (criteria: {helpfulness: ...}, scale: [0, 4])")

    @property
    def inputs(self) -> set[str]:
        return {self.prompt_field, self.response_field}

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    async def _score(self, llm, prompt: str, response: str) -> dict:
        return await reward_model_scores(llm, self.spec.model, prompt, response)

    async def aprocess(self, llm, record: dict) -> list[dict]:
        require_fields(record, (self.prompt_field, self.response_field), "score")
        responses = record[self.response_field]
        prompt = str(record[self.prompt_field])
        record = dict(record)
        if isinstance(responses, list):
            record[self.output_field] = list(await asyncio.gather(*(self._score(llm, prompt, str(r)) for r in responses)))
        else:
            record[self.output_field] = await self._score(llm, prompt, str(responses))
        return [record]
