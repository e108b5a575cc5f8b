"""Dask bag stages: each one a named, picklable ``Bag -> Bag`` callable over records."""

from recipe.stages.base import LLMStage, Stage
from recipe.stages.quality.dedup import DedupStage
from recipe.stages.llm.dialogue import DialogueStage
from recipe.stages.transform.explode import ExplodeStage
from recipe.stages.quality.filter import FilterStage
from recipe.stages.llm.generate import GenerateStage
from recipe.stages.quality.judge import JudgeStage
from recipe.stages.transform.parse_list import ParseListStage
from recipe.stages.io.read import ReadStage
from recipe.stages.llm.reward import RewardStage
from recipe.stages.io.sample import SampleStage
from recipe.stages.io.write import WriteStage

__all__ = ["Stage", "LLMStage", "ReadStage", "GenerateStage", "ParseListStage", "ExplodeStage",
           "FilterStage", "RewardStage", "JudgeStage", "DialogueStage", "DedupStage", "WriteStage",
           "SampleStage"]

# Recipe glue (recipes/*.yaml), one module each, and Nemotron-CC's rewrites.
from recipe.stages.transform.append_seeds import AppendSeedsStage  # noqa: E402
from recipe.stages.transform.combine import CombineStage  # noqa: E402
from recipe.stages.transform.cross import CrossStage  # noqa: E402
from recipe.stages.llm.nemotron_cc import RewritesStage  # noqa: E402
from recipe.stages.transform.preference import PreferencePairsStage  # noqa: E402
from recipe.stages.quality.validate import ValidateStage  # noqa: E402
from recipe.stages.transform.extract_code import ExtractCodeStage  # noqa: E402

__all__ += ["CombineStage", "CrossStage", "AppendSeedsStage", "PreferencePairsStage", "RewritesStage",
            "ValidateStage", "ExtractCodeStage"]
