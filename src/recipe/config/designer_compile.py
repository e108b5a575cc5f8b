"""Compiling a Data Designer config (plain dicts, see :mod:`recipe.config.designer`) into a recipe
of our stages: the ``recipe`` node a composed config holds, and the model and backend overrides.

Sampler columns become one ``SampleStage`` (the recipe's source: ``target.records`` records, 10
without it); expression columns, ``SampleStage`` expression columns added to the records; LLM
columns ``GenerateStage`` (with ``schema`` for llm-structured, and an ``ExtractCodeStage`` after it
for llm-code) or ``JudgeStage`` (llm-judge), ``extract_reasoning_content`` their ``reasoning_field``
under Data Designer's name (``{column}__reasoning_content``); code validation columns a
``ValidateStage`` per target column and an expression column giving Data Designer's shape
(``{"is_valid": ..., "error_messages": ...}``); ``skip`` becomes ``when``; a seed dataset the
``dataset`` sampler; ``drop`` and the ``drop_columns`` / ``schema_transform`` processors the write
stage's ``fields`` / ``shape``; each model alias's inference parameters the stage's ``sampling``.
Every column keeps its name as its output field. What we cannot run yet is one ``ConfigError``
naming the column and its type, found before anything is built or asked.
"""

from __future__ import annotations

import re
from typing import Any

from recipe.config.designer_fields import REASONING_SUFFIX
from recipe.errors import ConfigError

DEFAULT_RECORDS = 10  # what Data Designer's preview makes
#: The column types with a stage here; the others are refused, each with its reason.
SUPPORTED = ("sampler", "expression", "llm-text", "llm-structured", "llm-code", "llm-judge", "seed-dataset",
             "validation")
NOT_YET = {
    "embedding": "embedding columns are not supported",
    "image": "image columns are not supported",
    "llm-image": "image columns are not supported",
    "custom": "custom Python column generators are not supported",
}
#: Data Designer's default model providers -> our backend option, and per-stage backend keys.
PROVIDERS = {
    "nvidia": ("nim", {"provider": "nvidia_nim", "api_base": "https://integrate.api.nvidia.com/v1"}),
    "openai": ("openai", {"provider": "openai", "api_base": "https://api.openai.com/v1"}),
}
#: Data Designer's code validator languages -> ValidateStage (kind, dialect); sql:ansi is sqlglot's generic dialect.
_CODE_VALIDATORS = {"python": ("python", None), "sql:sqlite": ("sql", "sqlite"), "sql:postgres": ("sql", "postgres"),
                    "sql:mysql": ("sql", "mysql"), "sql:tsql": ("sql", "tsql"), "sql:bigquery": ("sql", "bigquery"),
                    "sql:ansi": ("sql", "")}
_VALIDATORS_REFUSED = {
    "remote": "remote validators (an HTTP endpoint) are not supported: validate with a code validator, "
              "or after the run",
    "local_callable": "local_callable validators (a Python function) are not supported: validate with a code "
                      "validator, or after the run",
}
_OPERATORS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_SAMPLER_PARAMS = {  # Data Designer's parameter -> ours, per sampler (None: not ours, refused if set)
    "category": {"values": "values", "weights": "weights"},
    "subcategory": {"category": "parent", "values": "values"},
    "uniform": {"low": "low", "high": "high", "decimal_places": "round"},
    "gaussian": {"mean": "mean", "stddev": "stddev", "decimal_places": "round"},
    "bernoulli": {"p": "p"},
    "binomial": {"n": "n", "p": "p"},
    "poisson": {"mean": "mean"},
    "scipy": {"dist_name": "dist", "dist_params": "params", "decimal_places": "round"},
    "datetime": {"start": "start", "end": "end", "unit": "unit"},
    "timedelta": {"dt_min": "dt_min", "dt_max": "dt_max", "reference_column_name": "reference", "unit": "unit"},
    "uuid": {"prefix": "prefix", "short_form": "short", "uppercase": "uppercase"},
    "person": {"locale": "locale", "sex": "sex", "age_range": "age_range"},
    "person_from_faker": {"locale": "locale", "sex": "sex", "age_range": "age_range"},
}
_COLUMN_LEVEL = ("round",)
_CONTINUOUS = ("uniform", "gaussian", "scipy")  # our names that sit on the column, not among a conditional's params


def records(target: object) -> int:
    """``${designer_records:${target.records}}``: the records to sample, ``target.records`` or 10."""
    return int(target) if target not in (None, "", "null") else DEFAULT_RECORDS  # type: ignore[call-overload]


def _fail(column: dict, message: str) -> ConfigError:
    return ConfigError(f"Data Designer column {column.get('name')!r} ({column.get('column_type')}): {message}")


# --- sampler columns ---------------------------------------------------------------------------------

def _sampler_params(column: dict, params: dict, notes: list[str]) -> dict:
    kind = column["sampler_type"]
    table = _SAMPLER_PARAMS[kind]
    out: dict = {}
    for key, value in (params or {}).items():
        if key == "sampler_type" or value is None:
            continue
        ours = table.get(key)
        if ours is None:
            if kind.startswith("person") and key in ("with_synthetic_personas",) and not value:
                continue
            if kind.startswith("person") and key in ("select_field_values", "city") and not value:
                continue
            raise _fail(column, f"{kind} parameter {key}={value!r} has no offline equivalent here")
        out[ours] = value
    if kind == "datetime" and out.get("unit") in ("Y", "M"):
        raise _fail(column, f"datetime unit {out['unit']!r} is not supported (D, h, m or s)")
    if kind.startswith("person"):
        notes.append(f"column {column['name']!r}: the person sampler is recipe's offline one (Faker word lists), "
                     "not Nemotron-Personas; its fields differ")
    return out


def _sampler_column(column: dict, notes: list[str]) -> dict[str, dict]:
    """Our SampleStage column(s) for one sampler column (bernoulli_mixture takes two helpers)."""
    name, kind = column["name"], column.get("sampler_type")
    if kind == "bernoulli_mixture":
        p = column.get("params") or {}
        if column.get("conditional_params"):
            raise _fail(column, "conditional_params on bernoulli_mixture are not supported")
        return {f"_{name}__bernoulli": {"sampler": "bernoulli", "p": p.get("p")},
                f"_{name}__value": {"sampler": "scipy", "dist": p.get("dist_name"), "params": p.get("dist_params") or {}},
                name: {"expression": f"(_{name}__value if _{name}__bernoulli else 0.0)"
                                     + (" | round" if column.get("convert_to") == "int" else ""),
                       **({"convert_to": column["convert_to"]} if column.get("convert_to") else {})}}
    if kind not in _SAMPLER_PARAMS:
        raise _fail(column, f"sampler_type {kind!r} is not supported")
    params = _sampler_params(column, column.get("params") or {}, notes)
    spec: dict = {"sampler": "person" if kind.startswith("person") else kind, **params}
    conditional = {}
    for condition, cparams in (column.get("conditional_params") or {}).items():
        changed = _sampler_params(column, cparams or {}, [])
        conditional[_condition(condition)] = {k: v for k, v in changed.items() if k not in _COLUMN_LEVEL}
    if conditional:
        spec["conditional"] = conditional
    if column.get("convert_to") == "int" and kind in _CONTINUOUS:
        # Data Designer rounds a continuous draw to the nearest integer (pandas' round, then astype):
        # uniform 1..5 gives 1 and 5 half as often as 2, 3, 4. Ours would draw 1..5 alike, so the
        # draw is kept as a hidden float column and rounded as Data Designer rounds it.
        raw = f"_{name}__value"
        return {raw: spec, name: {"expression": f"{raw} | round", "convert_to": "int"}}
    if column.get("convert_to"):
        spec["convert_to"] = column["convert_to"]
    return {name: spec}


def _condition(query: str) -> str:
    """A conditional_params key (a pandas query, ``rating <= 2 and tone == 'x'``) as our expression."""
    return str(query).replace("&&", " and ").replace("||", " or ")


def _constraint(constraint: dict) -> str:
    op = _OPERATORS.get(str(constraint.get("operator")), constraint.get("operator"))
    if op not in _OPERATORS.values():
        raise ConfigError(f"Data Designer constraint on {constraint.get('target_column')!r}: "
                          f"unknown operator {constraint.get('operator')!r}")
    rhs = constraint.get("rhs")
    return f"{constraint['target_column']} {op} {rhs}"


# --- expression columns ----------------------------------------------------------------------------------

_PART = re.compile(r"\{\{(.*?)\}\}", re.S)


def template_expression(column: dict) -> str:
    """A Data Designer ``expr`` (a Jinja template) as one Jinja expression, cast to its ``dtype``."""
    expr = str(column.get("expr") or "")
    if "{%" in expr or "{#" in expr:
        raise _fail(column, "an expression with {% ... %} blocks is not supported yet: write it as one "
                            "{{ ... }} (Jinja's inline `a if cond else b`)")
    pieces, last = [], 0
    for match in _PART.finditer(expr):
        if expr[last:match.start()]:
            pieces.append(repr(expr[last:match.start()]))
        pieces.append(f"(({match.group(1).strip()}) | string)")
        last = match.end()
    if expr[last:]:
        pieces.append(repr(expr[last:]))
    single = _PART.fullmatch(expr.strip())
    dtype = column.get("dtype", "str")
    if single and dtype != "str":
        source = single.group(1).strip()
        return f"(({source}) | string | lower) in ['true', '1']" if dtype == "bool" else source
    text = " ~ ".join(pieces) or "''"
    return f"({text}) | lower in ['true', '1']" if dtype == "bool" else text


def _expression_column(column: dict) -> dict:
    spec: dict = {"expression": template_expression(column)}
    dtype = column.get("dtype", "str")
    if dtype in ("int", "float"):
        spec["convert_to"] = dtype
    return spec


# --- models ------------------------------------------------------------------------------------------

def _distribution(value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        return value
    kind, params = value.get("distribution_type"), value.get("params") or {}
    if kind == "uniform":
        return {"uniform": [params.get("low"), params.get("high")]}
    if kind == "manual":
        out = {"values": list(params.get("values") or [])}
        if params.get("weights") is not None:
            out["weights"] = list(params["weights"])
        return out
    raise ConfigError(f"Data Designer {where}: distribution_type {kind!r} is not supported (uniform or manual)")


def model_sampling(model: dict) -> dict:
    """A model config's inference parameters as a stage's ``sampling``."""
    params = model.get("inference_parameters") or {}
    out: dict = {}
    for key in ("temperature", "top_p"):
        if params.get(key) is not None:
            out[key] = _distribution(params[key], f"model {model.get('alias')!r} {key}")
    if params.get("max_tokens") is not None:
        out["max_tokens"] = params["max_tokens"]
    return out


def _models(dd: dict) -> tuple[dict, str | None]:
    models = {m["alias"]: m for m in dd.get("model_configs") or [] if isinstance(m, dict) and m.get("alias")}
    used = [c.get("model_alias") for c in dd["columns"] if c.get("model_alias")]
    default = max(dict.fromkeys(used), key=used.count) if used else None
    return models, default


def run_overrides(dd: dict) -> list[str]:
    """The model and backend the most used alias asks for, as overrides that go before the user's."""
    models, default = _models(dd)
    model = models.get(default or "")
    if not model:
        return []
    out = []
    backend = PROVIDERS.get(str(model.get("provider") or ""))
    if backend:
        out.append(f"backend={backend[0]}")
    if model.get("model"):
        out.append(f"model.name={model['model']}")
    return out


def _llm_common(column: dict, models: dict, default: str | None) -> dict:
    alias = column.get("model_alias")
    model = models.get(alias)
    if model is None:
        raise _fail(column, f"model_alias {alias!r} is not among model_configs "
                            f"({', '.join(models) or 'none'})")
    for key, what in (("tool_alias", "MCP tools"), ("multi_modal_context", "image context")):
        if column.get(key):
            raise _fail(column, f"{what} ({key}) are not supported")
    stage: dict = {"output_field": column["name"], "sampling": model_sampling(model)}
    if column.get("extract_reasoning_content"):  # the trace of the answer kept, stripped, null when none
        stage["reasoning_field"] = column["name"] + REASONING_SUFFIX
    if alias != default:
        stage["model"] = model.get("model")
        default_provider = models[default].get("provider") if default in models else None
        if model.get("provider") != default_provider and model.get("provider") in PROVIDERS:
            stage["backend"] = dict(PROVIDERS[model["provider"]][1])
    if column.get("system_prompt"):
        stage["system"] = column["system_prompt"]
    return stage


def skip_condition(column: dict) -> str | None:
    """A column's own ``skip.when`` (a Jinja template, ``{{ in_stock == 0 }}``) as an expression."""
    skip = column.get("skip")
    if not skip:
        return None
    if skip.get("value") is not None:
        raise _fail(column, f"skip.value={skip['value']!r}: a skipped cell is null here (leave out value)")
    source = str(skip.get("when") or "").strip()
    single = _PART.fullmatch(source)
    if not single or "{{" in single.group(1):
        raise _fail(column, f"skip.when={source!r}: give one {{{{ expression }}}}")
    return single.group(1).strip()


def skip_conditions(columns: list[dict]) -> dict[str, str]:
    """Each column's skip condition: its own ``skip``, or (``propagate_skip``, the default) any of the
    columns it reads being skipped, as Data Designer propagates skips along its DAG."""
    from recipe.config.designer_fields import column_reads, side_effects

    out: dict[str, str] = {}
    made_by = side_effects(columns)
    for column in columns:  # in dependency order: a column's inputs are decided first
        parts = []
        own = skip_condition(column)
        if own:
            parts.append(own)
        if column.get("propagate_skip", True):
            parts += [out[name] for name in sorted(column_reads(column, made_by)) if name in out]
        parts = list(dict.fromkeys(parts))
        if parts:
            out[column["name"]] = " or ".join(f"({p})" for p in parts)
    return out


def _llm_stages(column: dict, models: dict, default: str | None) -> dict[str, dict]:
    kind, name = column["column_type"], column["name"]
    common = _llm_common(column, models, default)
    if kind == "llm-judge":
        return {name: _judge_stage(column, common)}
    stage = {"_target_": "recipe.stages.GenerateStage", "prompt": column["prompt"], **common}
    if kind == "llm-structured":
        stage["schema"] = column.get("output_format")
    if kind != "llm-code":
        return {name: stage}
    lang = str(column.get("code_lang") or "python")
    stage["prompt"] = (column["prompt"].rstrip() + f"\n\nReply with the {lang.split(':')[-1]} code only, "
                       f"in one markdown code block.")
    return {name: stage, f"{name}__extract": {"_target_": "recipe.stages.ExtractCodeStage",
                                              "field": name, "code_lang": lang}}


def _judge_stage(column: dict, common: dict) -> dict:
    criteria, keys = {}, []
    for score in column.get("scores") or []:
        options = score.get("options") or {}
        try:
            values = sorted(int(k) for k in options)
        except (TypeError, ValueError):
            raise _fail(column, f"score {score.get('name')!r}: options must be integer scores here, "
                                f"not {sorted(map(str, options))!r}") from None
        keys += values
        rubric = "; ".join(f"{k} = {options.get(k, options.get(str(k)))}" for k in values)
        criteria[score["name"]] = f"{score.get('description', '').strip()} ({rubric})"
    if not criteria:
        raise _fail(column, "a judge needs at least one score")
    from recipe.config.designer_fields import template_fields

    used = template_fields(column["prompt"])
    if not used:
        raise _fail(column, "the judge's prompt names no column to judge")
    prompt = (column["prompt"].rstrip() + "\n\nRate it on each criterion with an integer from {{ scale[0] }} "
              "(worst) to {{ scale[1] }} (best):\n{% for name, description in criteria.items() %}"
              "- {{ name }}: {{ description }}\n{% endfor %}\nReply with a JSON object giving one score per criterion.")
    return {"_target_": "recipe.stages.JudgeStage", "criteria": criteria, "scale": [min(keys), max(keys)],
            "prompt": prompt, "prompt_field": used[0], "response_field": used[-1], **common}


# --- validation columns ------------------------------------------------------------------------------

def validation_stages(column: dict) -> tuple[dict[str, dict], str, list[str]]:
    """``(stages, expression, hidden fields)`` for a code validation column: a ``ValidateStage`` per
    target column, each writing a hidden field, and the expression giving the column Data Designer's
    value from them: ``{"is_valid": bool, "error_messages": str}`` ("" when valid) for one target;
    for several, that per target, keyed by its name (Data Designer's code validators take one column
    at a time and key their results so).

    Python is compiled, never run: Data Designer does not run it either, it lints it with ruff (so
    its ``is_valid`` is also false for undefined names, and it adds a linter score, severity and
    messages, which we have not). SQL is parsed with sqlglot in the dialect (Data Designer parses it
    with sqlfluff). ``batch_size`` is a throughput knob of Data Designer's batches: our checks run a
    partition at a time in a process pool, so it is accepted and not used.
    """
    kind = column.get("validator_type") or (column.get("validator_params") or {}).get("validator_type")
    if kind in _VALIDATORS_REFUSED:
        raise _fail(column, _VALIDATORS_REFUSED[str(kind)])
    if kind != "code":
        raise _fail(column, f"validator_type {kind!r} is not supported")
    lang = str((column.get("validator_params") or {}).get("code_lang"))
    if lang not in _CODE_VALIDATORS:
        raise _fail(column, f"code_lang {lang!r} cannot be validated here (python, or sql: "
                            + ", ".join(k for k in _CODE_VALIDATORS if k != "python") + ")")
    targets = [str(t) for t in column.get("target_columns") or []]
    if not targets:
        raise _fail(column, "target_columns names no column to validate")
    check, dialect = _CODE_VALIDATORS[lang]
    name = column["name"]
    stages: dict[str, dict] = {}
    parts, hidden = [], []
    for target in targets:
        field = f"_{name}__{target}"
        stage: dict = {"_target_": "recipe.stages.ValidateStage", "kind": check, "field": target, "output_field": field}
        stage.update({"run": False} if check == "python" else {"dialect": dialect})
        stages[f"{name}__validate" + (f"_{target}" if len(targets) > 1 else "")] = stage
        hidden.append(field)
        parts.append(f"{{'is_valid': {field}['valid'], 'error_messages': {field}['error'] or ''}}")
    if len(targets) == 1:
        return stages, parts[0], hidden
    return stages, "{" + ", ".join(f"{t!r}: {p}" for t, p in zip(targets, parts)) + "}", hidden


# --- the recipe ------------------------------------------------------------------------------------------

def _seed_columns(dd: dict, columns: list[dict]) -> tuple[dict, list[str]]:
    """The seed dataset as SampleStage columns: a hidden row drawn with the ``dataset`` sampler, and
    one expression column per seed column."""
    import glob
    import os

    seed = dd.get("seed_config") or {}
    source = seed.get("source") or {}
    kind, path = source.get("seed_type"), source.get("path")
    names = [c["name"] for c in columns if c.get("column_type") == "seed-dataset"]
    if not seed:
        if names:
            raise ConfigError(f"Data Designer seed-dataset columns {names} need a seed_config")
        return {}, []
    if kind not in ("local", "hf") or not isinstance(path, str):
        raise ConfigError(f"Data Designer seed_config: seed_type {kind!r} is not supported here "
                          "(a local file or folder, or a Hugging Face dataset downloaded into a local folder)")
    if glob.has_magic(path):  # dir/*.parquet: the folder (the dataset sampler reads its files in name order)
        path = os.path.dirname(path)
    if not os.path.exists(os.path.expanduser(path)):
        where = "download it into a local folder and give that folder" if kind == "hf" else "no such file or folder"
        raise ConfigError(f"Data Designer seed_config: {path!r}: {where}")
    if seed.get("selection_strategy"):
        raise ConfigError("Data Designer seed_config: selection_strategy is not supported here")
    row = "_seed_row"  # ordered and shuffle alike: no row repeats until every row was taken
    out = {row: {"sampler": "dataset", "path": str(path), "replace": False}}
    if not names:
        from recipe.config.designer_fields import dataset_columns

        names = dataset_columns(str(path))
    for name in names:
        out[name] = {"expression": f"{row}[{name!r}]"}
    return out, [row]


def _order(columns: list[dict]) -> list[dict]:
    """LLM and expression columns in an order where each comes after the columns its templates use
    (Data Designer orders its DAG so; among independent columns the declared order is kept)."""
    from recipe.config.designer_fields import column_reads, side_effects

    pending, out = list(columns), []
    done: set[str] = set()
    names = {c["name"] for c in columns}
    made_by = side_effects(columns)
    while pending:
        for column in pending:
            if not (column_reads(column, made_by) & names) - done - {column["name"]}:
                break
        else:
            cycle = ", ".join(c["name"] for c in pending)
            raise ConfigError(f"Data Designer columns {cycle} refer to each other in a cycle")
        pending.remove(column)
        done.add(column["name"])
        out.append(column)
    return out


def _sample_groups(dd: dict, columns: list[dict], seeded: dict, notes: list[str]) -> list[tuple[dict, list[str]]]:
    """The sampler columns as SampleStage column groups, each with its constraints.

    Data Designer draws its sampler columns one at a time and redraws a column (only it) until its
    own constraints hold, given the columns before it. A SampleStage redraws all of its columns for
    a record breaking one of its constraints, so a constrained column gets a stage of its own (one
    that adds it to the records): the columns before it keep the distributions they were declared with.
    """
    by_target: dict[str, list[str]] = {}
    for constraint in dd.get("constraints") or []:
        by_target.setdefault(str(constraint.get("target_column")), []).append(_constraint(constraint))
    groups: list[tuple[dict, list[str]]] = [(dict(seeded), [])]
    for column in columns:
        if column["column_type"] != "sampler":
            continue
        made = _sampler_column(column, notes)
        mine = by_target.pop(column["name"], [])
        if mine and groups[-1][0]:
            groups.append(({}, []))
        groups[-1][0].update(made)
        groups[-1][1].extend(mine)
        if mine:
            groups.append(({}, []))
    if by_target:
        raise ConfigError(f"Data Designer constraints on {sorted(by_target)}: not a sampler column")
    return [(group, constraints) for group, constraints in groups if group]


def compile_recipe(dd: dict, name: str) -> tuple[dict, list[str]]:
    """``(recipe, notes)``: the ``recipe`` node of a composed config for Data Designer config ``dd``,
    and the notes to show (a person sampler mapped to ours). Refuses what cannot run, naming it."""
    columns = [c for c in dd["columns"] if isinstance(c, dict)]
    for column in columns:
        kind = str(column.get("column_type"))
        if kind in NOT_YET or kind not in SUPPORTED:
            reason = NOT_YET.get(kind, f"column type {kind!r} is not supported")
            raise _fail(column, reason)
    notes: list[str] = []
    models, default = _models(dd)
    seeded, hidden = _seed_columns(dd, columns)
    stages: dict = {}
    for index, (group, constraints) in enumerate(_sample_groups(dd, columns, seeded, notes)):
        hidden += [n for n in group if n.startswith("_") and n.endswith(("__bernoulli", "__value"))]
        stage = {"_target_": "recipe.stages.SampleStage", "seed": "${sampling.seed}", "columns": group,
                 "constraints": constraints}
        if index == 0:  # the records' source
            stage = {"_target_": stage["_target_"], "n": "${designer_records:${target.records}}", **stage}
        stages["sample" if index == 0 else f"sample_{index}"] = stage
    if not stages:
        raise ConfigError("a Data Designer config here needs at least one sampler column or a seed dataset "
                          "(the records' source)")
    pending: dict = {}

    def flush() -> None:
        if pending:
            stages[f"expressions_{len(stages)}"] = {"_target_": "recipe.stages.SampleStage", "seed": "${sampling.seed}",
                                                    "columns": dict(pending)}
            pending.clear()

    ordered = _order([c for c in columns if c["column_type"] not in ("sampler", "seed-dataset")])
    skips = skip_conditions(ordered)
    for column in ordered:
        skipped = skips.get(column["name"])
        if column["column_type"] == "expression":
            spec = _expression_column(column)
            if skipped:
                spec["expression"] = f"none if ({skipped}) else ({spec['expression']})"
            pending[column["name"]] = spec
            continue
        flush()
        if column["column_type"] == "validation":
            checks, expression, verdicts = validation_stages(column)
            stages.update(checks)
            hidden += verdicts
            pending[column["name"]] = {"expression": f"none if ({skipped}) else ({expression})" if skipped else expression}
            continue
        made = _llm_stages(column, models, default)
        if skipped:
            made[column["name"]]["when"] = f"not ({skipped})"
        stages.update(made)
    flush()
    dropped = [c["name"] for c in columns if c.get("drop")] + hidden
    write: dict = {"_target_": "recipe.stages.WriteStage", "format": "jsonl"}
    fields, shape = _processors(dd, dropped)
    if fields:
        write["fields"] = fields
    if shape:
        write["shape"] = shape
    stages["write"] = write
    return {"name": name, "stages": stages}, notes


def _processors(dd: dict, dropped: list[str]) -> tuple[dict | None, dict | None]:
    drop = list(dropped)
    shape = None
    for processor in dd.get("processors") or []:
        kind = processor.get("processor_type")
        if kind == "drop_columns":
            drop += [c for c in processor.get("column_names") or [] if c not in drop]
        elif kind == "schema_transform":
            template = processor.get("template")
            if not isinstance(template, dict):
                raise ConfigError(f"Data Designer processor {processor.get('name')!r} (schema_transform): "
                                  "template must be a mapping")
            shape = template
        else:
            raise ConfigError(f"Data Designer processor {processor.get('name')!r} ({kind}): not supported")
    return ({"drop": drop} if drop else None), shape
