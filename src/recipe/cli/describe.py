"""``python -m recipe describe recipe=NAME [overrides]``: a recipe's stages and the fields each reads and writes.

The stages are built as a run builds them (every parameter checked, the run's overrides applied),
and each one's declared :attr:`~recipe.stages.base.Stage.inputs` and ``outputs`` are printed, in
order, with the chain's own check (:mod:`recipe.stages.chain`) at the end: what a run would
refuse before its first request. Nothing is started and nothing is written.
"""

from __future__ import annotations

from typing import Any

#: Printed where a stage reads or writes no field.
NONE = "-"


def stage_rows(overrides: list[str], config_dirs: list[str] | None = None) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The recipe's name, one row per stage (name, class, reads, writes) and the chain's problems."""
    from recipe.clients.factory import ClientSpec
    from recipe.engine.plan import checked_data, compose
    from recipe.stages import chain
    from recipe.stages.build import build_stages
    from recipe.stages.records import RESERVED

    cfg = compose(overrides, config_dirs=config_dirs or [])  # every bad value and stage parameter in one report
    data = checked_data(cfg)
    spec = ClientSpec.from_config(data)
    stages = build_stages(data["recipe"], spec, output_dir="<run folder>",
                          partition_size=data["dask"]["partition_size"])
    rows = []
    for stage in stages:
        try:
            reads = sorted(chain.reads(stage))
        except Exception as exc:  # noqa: BLE001 - a template that does not compile: the chain check names it
            reads = [f"? ({exc})"]
        writes = sorted(set(stage.outputs or ()) - set(RESERVED))  # _id, _parent...: every record's own
        rows.append({"name": stage.name, "class": type(stage).__name__, "reads": reads, "writes": writes})
    name = str((data.get("recipe") or {}).get("name") or "recipe")
    return name, rows, chain.problems(stages)


def render(name: str, rows: list[dict[str, Any]], problems: list[str]) -> str:
    """The table ``describe`` prints."""
    head = ("stage", "class", "reads", "writes")
    table = [head] + [(r["name"], r["class"], ", ".join(r["reads"]) or NONE, ", ".join(r["writes"]) or NONE)
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"recipe {name}: {len(rows)} stages, in order (reads: fields each record must have; "
             "writes: fields it adds)"]
    for row in table:
        lines.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    lines += [f"problem: {p}" for p in problems] or ["every field a stage reads is provided by the input or an earlier stage"]
    return "\n".join(lines)


def describe(argv: list[str]) -> None:
    """Print the table for the recipe the overrides compose (``recipe=NAME``, and any others;
    ``--config-dir DIR`` adds a config dir of the user's, as for a run)."""
    import os

    from recipe.cli.precheck import hydra_args
    from recipe.errors import ConfigError

    args = hydra_args(argv)
    flags = [a for a in argv if a.startswith("-") and a not in ("--config-dir", "-cd")
             and not a.startswith("--config-dir=") and a != args.config_dir]
    if flags:
        raise ConfigError(f"describe takes overrides (recipe=NAME key=value ...) and --config-dir, not {flags[0]}")
    if args.config_dir is not None and not os.path.isdir(args.config_dir):
        raise ConfigError(f"config directory not found: {os.path.abspath(args.config_dir)}")
    config_dirs = [args.config_dir] if args.config_dir is not None else []
    name, rows, problems = stage_rows(list(args.overrides), config_dirs)
    print(render(name, rows, problems))
    if problems:
        raise ConfigError(f"recipe {name}: " + "; ".join(problems))
