"""Dask bag stages: each one a named, picklable ``Bag -> Bag`` callable over records."""

from recipe.stages.base import LLMStage, Stage
from recipe.stages.dedup import DedupStage
from recipe.stages.dialogue import DialogueStage
from recipe.stages.explode import ExplodeStage
from recipe.stages.filter import FilterStage
from recipe.stages.generate import GenerateStage
from recipe.stages.judge import JudgeStage
from recipe.stages.parse_list import ParseListStage
from recipe.stages.read import ReadStage
from recipe.stages.reward import RewardStage
from recipe.stages.write import WriteStage

__all__ = ["Stage", "LLMStage", "ReadStage", "GenerateStage", "ParseListStage", "ExplodeStage",
           "FilterStage", "RewardStage", "JudgeStage", "DialogueStage", "DedupStage", "WriteStage"]

# Recipe glue (recipes/*.yaml), one module each, and Nemotron-CC's rewrites.
from recipe.stages.append_seeds import AppendSeedsStage  # noqa: E402
from recipe.stages.combine import CombineStage  # noqa: E402
from recipe.stages.cross import CrossStage  # noqa: E402
from recipe.stages.nemotron_cc import RewritesStage  # noqa: E402
from recipe.stages.preference import PreferencePairsStage  # noqa: E402
from recipe.stages.validate import ValidateStage  # noqa: E402

__all__ += ["CombineStage", "CrossStage", "AppendSeedsStage", "PreferencePairsStage", "RewritesStage",
            "ValidateStage"]
