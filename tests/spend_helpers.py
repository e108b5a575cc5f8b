"""Importable helpers for tests/test_spend.py (filter predicates named in configs as module:function)."""


def even_question(record: dict) -> bool:
    """Keeps half the inputs: ``question 0``, ``question 2``, ..."""
    return int(record["prompt"].split()[-1]) % 2 == 0


HALVES_RECIPE = """\
name: halves
stages:
  read:
    _target_: recipe.stages.ReadStage
    path: ${input}
  generate:
    _target_: recipe.stages.GenerateStage
    prompt: "{{ prompt }}"
    output_field: response
  keep:
    _target_: recipe.stages.FilterStage
    predicate: spend_helpers:even_question
  write:
    _target_: recipe.stages.WriteStage
    format: jsonl
"""

# halves, then an exact dedup of the prompts over the whole bag (a stage that spans partitions)
DEDUP_RECIPE = HALVES_RECIPE.replace("""  write:
""", """  dedup:
    _target_: recipe.stages.DedupStage
    field: prompt
    method: exact
  write:
""").replace("name: halves", "name: halves_dedup")
