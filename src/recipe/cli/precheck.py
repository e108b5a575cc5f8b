"""What ``python -m recipe`` is about to run, composed and checked before Hydra runs it.

Hydra reports its own errors over several lines with a hint about HYDRA_FULL_ERROR, and makes a
run folder before any of our code runs; composing here first, with the same overrides, turns
each mistake into one line and refuses it before anything is written.
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def hydra_args(argv: list[str]) -> argparse.Namespace:
    """Hydra's command-line flags, parsed as ``@hydra.main`` will parse them.

    Hydra's own parser is not public API and may change in any release; this declares the same
    documented flags (``python -m recipe --hydra-help``), so the precheck knows the mode,
    the config name and dir, and which arguments are overrides.
    """
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--help/-h", "--hydra-help", "--version", "--resolve", "--run/-r", "--multirun/-m",
                 "--shell-completion/-sc"):
        parser.add_argument(*flag.split("/"), action="store_true")
    for flag in ("--cfg/-c", "--package/-p", "--config-path/-cp", "--config-name/-cn", "--config-dir/-cd",
                 "--experimental-rerun"):
        parser.add_argument(*flag.split("/"))
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    args, unrecognized = parser.parse_known_args(argv)
    args.unrecognized = unrecognized
    return args


def precheck(argv: list[str]) -> DictConfig | None:
    """Compose (and validate) what Hydra is about to run, so that mistakes become one line.

    Hydra reports its own errors over several lines with a hint about HYDRA_FULL_ERROR; composing
    here first, with the same overrides, config name and config dir, turns each into one line.
    For ``--multirun`` every value of every sweep is composed once (not the whole product). The
    backend is resolved too, so a missing API key stops the run before Hydra makes a run dir.

    Returns, for a plain run (one job: no sweep, no ``--cfg``, no ``preview=N``), the config it
    composed with Hydra's node and its mode settled, ready for
    :func:`recipe.cli.hydra_job.run_composed`; None for anything else, which ``@hydra.main`` runs.
    """
    from recipe.config import secrets
    from recipe.config.compose import compose_unchecked, without_hydra
    from recipe.engine.preflight import check_writable
    from recipe.engine.plan import checked_data

    args = hydra_args(argv)
    if args.unrecognized:  # Hydra's parser prints its usage and this over 8 lines
        raise config_error(f"unrecognized arguments: {' '.join(args.unrecognized)} (give the overrides "
                           "together, before or after the --options; --help lists the options)")
    modes = [name for name, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info is not None), ("--shell-completion", args.shell_completion))
             if on]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        raise config_error(f"{' and '.join(modes)} cannot be combined: use one of them")
    if args.resolve and not (args.cfg or args.help):  # Hydra's ValueError, as one line
        raise config_error("--resolve goes with --cfg or --help (it resolves the config they print)")
    if (args.help or args.hydra_help or args.version or args.info or args.shell_completion
            or args.experimental_rerun is not None or args.config_path is not None):
        return None
    if args.config_dir is not None and not os.path.isdir(args.config_dir):
        raise config_error(f"config directory not found: {os.path.abspath(args.config_dir)}")
    config_dirs = [args.config_dir] if args.config_dir is not None else []
    config_name = args.config_name or "config"
    plain = not (args.multirun or args.cfg)
    composed = None
    for overrides in variants(args.overrides, args.multirun):
        cfg = compose_unchecked(overrides, config_name=config_name, config_dirs=config_dirs, with_hydra=plain)
        if plain:
            composed, cfg = cfg, without_hydra(cfg)
        secrets.from_config(cfg)  # before anything is printed or saved
        if args.cfg:  # printing a config needs no key and no input, and builds nothing
            from recipe.config import schema
            from recipe.errors import refuse
            from recipe.stages.build import stage_target_problems

            stages = schema._resolved_stages(cfg.recipe.get("stages") or {}) if hasattr(cfg.recipe, "get") else {}
            refuse(schema.value_problems(cfg) + stage_target_problems({"stages": stages}))
            continue
        data = checked_data(cfg, resolve=_resolved)  # one line naming every problem, backends included
        # Hydra makes the run folder (output_dir) and its log file before any of our code runs.
        from recipe import storage

        if data.get("output_dir") and not storage.is_remote(data["output_dir"]):  # a bucket is not made here
            check_writable(data["output_dir"], "output_dir")
        if (data.get("cache") or {}).get("enabled") and data["cache"].get("dir"):
            check_writable(data["cache"]["dir"], "cache.dir")
        given = data.get("input")
        for path in given if isinstance(given, list) else [given]:
            if isinstance(path, str) and path and not glob.has_magic(path):
                if not storage.isfile(path if storage.is_remote(path) else os.path.expanduser(path)):
                    raise config_error(f"input file not found: {path}")
        if cfg.get("output_dir"):  # refused before Hydra writes its config into another run's folder
            from recipe.config import identity as run_identity
            from recipe.storage.run_folder import RunFolder

            RunFolder(cfg.output_dir).check(run_identity.config_hash(run_identity.identity(cfg)))
    if composed is None or cfg.get("preview"):  # preview=N moves Hydra's run dir (cli.main._preview_scratch)
        return None
    from recipe.cli.hydra_job import plain_run

    return composed if plain_run(composed) else None


def _resolved(cfg) -> dict:
    """The config as the run will read it; a missing API key variable is refused here."""
    from recipe.config.compose import resolved_container
    from recipe.config.env_keys import resolved_by_reference

    if "backend" not in cfg:
        return resolved_container(cfg)
    if cfg.get("dask") and cfg.dask.get("address"):
        # Workers of an existing cluster read keys from their own environment: the driver may
        # lack the variable, so keys stay references (EnvKey) here.
        return resolved_by_reference(cfg)
    resolved_container(cfg.backend)  # the backend's key first: its error names the variable
    return resolved_container(cfg)


def config_error(message: str):
    from recipe.errors import ConfigError

    return ConfigError(message)


def variants(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to check: the overrides themselves, or one per value of each sweep."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from recipe.config.compose import one_line

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise config_error(one_line(exc)) from None
    choices: list[list[str]] = []  # per override, in order: the one line, or each swept value
    for line, override in zip(overrides, parsed):  # one parsed override per line, in order
        if override.is_sweep_override() and not override.is_hydra_override():
            key = override.get_key_element()
            try:
                values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            except Exception as exc:  # an interval sweep, which only some sweepers support
                raise config_error(f"{line}: {one_line(exc)}") from None
            choices.append(values or [line])
        else:
            choices.append([line])
    first = [options[0] for options in choices]
    variants = [first]
    for i, options in enumerate(choices):
        for value in options[1:]:
            variants.append(first[:i] + [value] + first[i + 1:])
    return variants
