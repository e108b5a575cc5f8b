"""``python -m recipe``: Hydra parses and composes; :func:`recipe.runner.run` does the work.

User mistakes (a bad override, an unknown option, a bad value, a missing file or key) are
printed as one line with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_USER_ERROR = 2
EXIT_RECORDS_FAILED = 3
EXIT_BUDGET_REACHED = 4  # the budget stopped the run; the same command with a larger budget resumes it
_exit_code = 0
_stopping: int | None = None  # the signal that is stopping the run
_argv: list[str] = []  # the command as typed (the resume hint repeats it)


def _on_signal(signum: int, frame) -> None:
    """SIGINT and SIGTERM stop the run the same way: the work in flight is cancelled, what was
    committed stays, the embedded server and the cluster are stopped. A second signal while
    that happens leaves at once (our children follow us: see llamacpp_server)."""
    global _stopping
    if _stopping is not None:
        os._exit(128 + signum)
    _stopping = signum
    raise KeyboardInterrupt


def _interrupted() -> None:
    signum = _stopping or signal.SIGINT
    print(f"error: interrupted ({signal.Signals(signum).name}); what was committed is kept: "
          "run the same command again to resume", file=sys.stderr)
    sys.exit(128 + signum)


def _fail(message: str) -> None:
    """A mistake found before the run: one line, exit 2. Nothing is open yet but the thread that
    may still be importing litellm (``preload``); the interpreter's shutdown under such a thread
    was seen to crash (SIGSEGV after the error line), so the process leaves without it."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_USER_ERROR)


def _hydra_args(argv: list[str]):
    """Hydra's command-line flags, parsed as ``@hydra.main`` will parse them.

    Hydra's own parser is not public API and may change in any release; this declares the same
    documented flags (``python -m recipe --hydra-help``), so the precheck knows the mode,
    the config name and dir, and which arguments are overrides.
    """
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--help/-h", "--hydra-help", "--version", "--resolve", "--run/-r", "--multirun/-m",
                 "--shell-completion/-sc"):
        parser.add_argument(*flag.split("/"), action="store_true")
    for flag in ("--cfg/-c", "--package/-p", "--config-path/-cp", "--config-name/-cn", "--config-dir/-cd",
                 "--experimental-rerun"):
        parser.add_argument(*flag.split("/"))
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser.parse_known_args(argv)[0]


def _precheck(argv: list[str]) -> None:
    """Compose (and validate) what Hydra is about to run, so that mistakes become one line.

    Hydra reports its own errors over several lines with a hint about HYDRA_FULL_ERROR; composing
    here first, with the same overrides, config name and config dir, turns each into one line.
    For ``--multirun`` every value of every sweep is composed once (not the whole product). The
    backend is resolved too, so a missing API key stops the run before Hydra makes a run dir.
    """
    import glob
    import os

    from recipe.config import secrets
    from recipe.config.compose import compose, resolved_container
    from recipe.config.env_keys import resolved_by_reference
    from recipe.preflight import check_backends, check_writable

    args = _hydra_args(argv)
    modes = [name for name, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info is not None), ("--shell-completion", args.shell_completion))
             if on]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        raise _config_error(f"{' and '.join(modes)} cannot be combined: use one of them")
    if (args.help or args.hydra_help or args.version or args.info or args.shell_completion
            or args.experimental_rerun is not None or args.config_path is not None):
        return
    if not args.cfg:  # a run: litellm's seconds of import overlap with composing, reading and Dask's start
        from recipe.services.litellm_setup import preload

        preload()
    if args.config_dir is not None and not os.path.isdir(args.config_dir):
        raise _config_error(f"config directory not found: {os.path.abspath(args.config_dir)}")
    config_dirs = [args.config_dir] if args.config_dir is not None else []
    config_name = args.config_name or "config"
    for overrides in _variants(args.overrides, args.multirun):
        cfg = compose(overrides, config_name=config_name, config_dirs=config_dirs)
        secrets.from_config(cfg)  # before anything is printed or saved
        if args.cfg:  # printing a config needs no key and no input
            continue
        if "backend" in cfg:
            if cfg.get("dask") and cfg.dask.get("address"):
                # Workers of an existing cluster read keys from their own environment: the driver
                # may lack the variable, so keys stay references (EnvKey) here.
                data = resolved_by_reference(cfg)
            else:
                resolved_container(cfg.backend)
                data = resolved_container(cfg)
        else:
            data = resolved_container(cfg)
        check_backends(data)
        # Hydra makes the run folder (output_dir) and its log file before any of our code runs.
        from recipe.services import storage

        if data.get("output_dir") and not storage.is_remote(data["output_dir"]):  # a bucket is not made here
            check_writable(data["output_dir"], "output_dir")
        if (data.get("cache") or {}).get("enabled") and data["cache"].get("dir"):
            check_writable(data["cache"]["dir"], "cache.dir")
        given = cfg.get("input")
        if isinstance(given, str) and given and not glob.has_magic(given):
            from recipe.services import storage

            if not storage.isfile(given if storage.is_remote(given) else os.path.expanduser(given)):
                raise _config_error(f"input file not found: {given}")
        if cfg.get("output_dir"):  # refused before Hydra writes its config into another run's folder
            from recipe import run_identity
            from recipe.run_folder import RunFolder

            RunFolder(cfg.output_dir).check(run_identity.config_hash(run_identity.identity(cfg)))


def _config_error(message: str):
    from recipe.errors import ConfigError

    return ConfigError(message)


def _variants(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to check: the overrides themselves, or one per value of each sweep."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from recipe.config.compose import one_line

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise _config_error(one_line(exc)) from None
    choices: list[list[str]] = []  # per override, in order: the one line, or each swept value
    for override in parsed:
        if override.is_sweep_override() and not override.is_hydra_override():
            key = override.get_key_element()
            try:
                values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            except Exception as exc:  # an interval sweep, which only some sweepers support
                raise _config_error(f"{override.input_line}: {one_line(exc)}") from None
            choices.append(values or [override.input_line])
        else:
            choices.append([override.input_line])
    first = [options[0] for options in choices]
    variants = [first]
    for i, options in enumerate(choices):
        for value in options[1:]:
            variants.append(first[:i] + [value] + first[i + 1:])
    return variants


def _os_message(exc: OSError) -> str:
    """A full disk or a folder that cannot be written: what, where, and what to do."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"cannot write {exc.filename or 'the results'}: {reason} (free some space and run the same "
                "command again: finished parts and the cache are kept)")
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _job(cfg) -> int:
    """One run (one job of a sweep): its result or its one error line; returns its exit code."""
    import sqlite3

    from hydra.core.hydra_config import HydraConfig

    from recipe.errors import RecipeError
    from recipe.runner import run

    prefix = ""
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        prefix = f"job #{HydraConfig.get().job.num}: "
    try:
        summary = run(cfg)
    except RecipeError as exc:
        print(f"error: {prefix}{exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        print(f"error: {prefix}{_os_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except sqlite3.Error as exc:  # the request cache's disk is full or failing
        print(f"error: {prefix}the request cache in {cfg.cache.dir} failed: {exc} (free some space and "
              "run the same command again: finished parts are kept)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _interrupted()
    for note in summary.notes:
        print(f"note: {prefix}{note}", file=sys.stderr)
    print(f"output: {summary.output_dir}")
    print(summary.line())
    if summary.budget_reached:  # the budget stopped the run: say how to resume it (exit 4)
        from recipe.services.budget import resume_hint

        if summary.failed:
            print(f"{prefix}{summary.failed} records failed: see {summary.output_dir}/errors/", file=sys.stderr)
        print(f"{prefix}{resume_hint(summary.stats['budget'], _argv)}", file=sys.stderr)
        return EXIT_BUDGET_REACHED
    if summary.failed:
        print(f"{prefix}{summary.failed} records failed: see {summary.output_dir}/errors/", file=sys.stderr)
        return EXIT_RECORDS_FAILED
    return 0


def main() -> None:
    import gc

    try:
        _main()
    finally:
        # The interpreter's shutdown would garbage-collect litellm's large object graph: 10 s of
        # exit on a busy 2-core machine (0.1 s frozen). Nothing in it needs finalizing: every
        # output is written, fsynced and closed by now.
        gc.freeze()


def _main() -> None:
    import hydra
    from omegaconf import DictConfig

    from recipe.config import paths, secrets
    from recipe.config.compose import model_choice, setup
    from recipe.errors import ConfigError

    global _argv
    _argv = sys.argv[1:]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    # Secrets are known, and both streams redact them, before Hydra prints or saves anything.
    secrets.from_environment(os.environ)
    secrets.from_overrides(sys.argv[1:])
    sys.stdout, sys.stderr = secrets.RedactingStream(sys.stdout), secrets.RedactingStream(sys.stderr)
    setup()
    try:
        _precheck(sys.argv[1:])
    except ConfigError as exc:
        _fail(str(exc))
    # +model=NAME as model=NAME, as the precheck composed it (see compose.model_choice)
    sys.argv[1:] = model_choice(sys.argv[1:], _hydra_args(sys.argv[1:]).config_name or "config")

    @hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> None:
        # A failed job of a sweep does not stop the next one; the exit code is the first failure's.
        global _exit_code
        code = _job(cfg)
        _exit_code = _exit_code or code

    try:
        _task()
    except KeyboardInterrupt:  # a signal outside the run itself (composing, reporting)
        _interrupted()
    except BrokenPipeError:  # `python -m recipe --help | head`: the reader left, nothing to report
        sys.stderr.close()
        sys.exit(0)
    sys.exit(_exit_code)


if __name__ == "__main__":
    main()
