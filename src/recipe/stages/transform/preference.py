"""Preference pairs: the best- and worst-scored responses of a record as chosen and rejected."""

from __future__ import annotations

from dataclasses import dataclass

from recipe.errors import InputError
from recipe.stages import progress
from recipe.stages.base import Stage


@dataclass
class PreferencePairsStage(Stage):
    """A chosen/rejected pair from a record's responses and their scores.

    Input columns: ``responses_field``, ``scores_field``. Output columns: ``chosen_field``,
    ``rejected_field`` and their ``_score`` fields.

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

    @property
    def inputs(self) -> set[str]:
        return {self.responses_field, self.scores_field}

    @property
    def outputs(self) -> set[str]:
        return {self.chosen_field, self.rejected_field, f"{self.chosen_field}_score", f"{self.rejected_field}_score"}

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
