"""What a Data Designer column reads: the columns its Jinja templates name, in order of appearance,
and the column names of a local seed dataset (the compiler orders columns and wires judges by them)."""

from __future__ import annotations

import json
import os
from typing import Any

from recipe.errors import ConfigError


def template_fields(source: str) -> list[str]:
    """The variables ``source`` reads from its context, first appearance first."""
    import jinja2
    from jinja2 import meta, nodes

    env = jinja2.Environment()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"template {source[:60]!r} does not parse: {exc.message}") from None
    free = meta.find_undeclared_variables(tree)
    ordered = [n.name for n in tree.find_all(nodes.Name) if n.name in free]
    return list(dict.fromkeys(ordered))


#: What Data Designer names an LLM column's trace when it asks for it (``extract_reasoning_content``).
REASONING_SUFFIX = "__reasoning_content"


def side_effects(columns: list[dict]) -> dict[str, str]:
    """The fields a column makes besides its own (its ``{name}__reasoning_content``), each mapped
    to the column that makes it: a column reading one reads that column."""
    return {f"{c['name']}{REASONING_SUFFIX}": c["name"] for c in columns if c.get("extract_reasoning_content")}


def column_reads(column: dict, made_by: dict[str, str] | None = None) -> set[str]:
    """The columns a Data Designer column's templates (and skip condition) use, and those a
    validation column validates; a side effect it reads (``made_by``: :func:`side_effects`) counts
    as the column that makes it."""
    sources = [column.get(key) for key in ("prompt", "system_prompt", "expr")]
    skip = column.get("skip")
    if isinstance(skip, str):
        sources.append("{{ " + skip + " }}")
    targets = column.get("target_columns") if column.get("column_type") == "validation" else None
    names = ({name for source in sources if isinstance(source, str) for name in template_fields(source)}
             | {str(t) for t in targets or []})
    return {(made_by or {}).get(name, name) for name in names}


def dataset_columns(path: str) -> list[str]:
    """The columns of a local JSONL or Parquet file (or a dataset folder's first such file)."""
    full = os.path.expanduser(path)
    files = [full] if os.path.isfile(full) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(full) for name in names
        if name.endswith((".jsonl", ".json", ".parquet", ".pq")) and not name.startswith("."))
    if not files:
        raise ConfigError(f"Data Designer seed dataset {path!r}: no .jsonl or .parquet file there")
    first = files[0]
    if first.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return list(pq.read_schema(first).names)
    with open(first, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row: Any = json.loads(line)
                return list(row) if isinstance(row, dict) else []
    return []
