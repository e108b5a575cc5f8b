"""``python -m recipe``: Hydra parses and composes; :func:`recipe.engine.runner.run` does the work.

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
    """A mistake found before the run: one line, exit 2. Nothing is open or unwritten yet, so the
    process leaves at once, without the interpreter's teardown of what it imported (litellm's
    objects among them)."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_USER_ERROR)


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
    from hydra.types import RunMode

    from recipe.errors import RecipeError
    from recipe.engine.runner import run

    prefix = ""
    if HydraConfig.initialized() and HydraConfig.get().mode is RunMode.MULTIRUN:
        prefix = f"job #{HydraConfig.get().job.num}: "
    try:
        if cfg.get("preview"):  # preview=N: a few records and an estimate; no run folder (recipe.engine.preview)
            from recipe.engine.preview import run_preview, show

            show(run_preview(cfg, int(cfg.preview)))
            return 0
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
        from omegaconf import OmegaConf

        from recipe.clients.budget import resume_hint
        from recipe.config import secrets

        if summary.failed:
            print(f"{prefix}{summary.failed_line()}", file=sys.stderr)
        # a command to paste: no key in it, the key read from the environment (said in a note)
        words, variables = secrets.pasteable(_argv, OmegaConf.select(cfg, "backend.provider", default=None))
        note = secrets.key_note(variables)
        print(f"{prefix}{resume_hint(summary.stats['budget'], words)}", file=sys.stderr)
        if note:  # its own line: the hint's line ends with the whole command, ready to paste
            print(f"note: {prefix}{note}", file=sys.stderr)
        return EXIT_BUDGET_REACHED
    if summary.failed:
        print(f"{prefix}{summary.failed_line()}", file=sys.stderr)
        return EXIT_RECORDS_FAILED
    return 0


def _designer() -> None:
    """``designer=PATH`` in the arguments: replaced by the overrides that compose its compiled recipe
    (:mod:`recipe.engine.designer`); the scratch config dir lives as long as this process."""
    import atexit
    import shutil

    from recipe.engine.designer import compiled_overrides, split

    path, rest = split(sys.argv[1:])
    if path is None:
        return
    overrides, notes, folder = compiled_overrides(path, rest)
    atexit.register(shutil.rmtree, folder, True)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.argv[1:] = overrides


def main() -> None:
    import gc

    if sys.argv[1:2] == ["report"]:  # python -m recipe report DIR: no Hydra (see recipe.report)
        from recipe.config import secrets
        from recipe.report import main as report_main

        secrets.from_environment(os.environ)
        sys.exit(report_main(sys.argv[2:]))
    try:
        _main()
    finally:
        # The interpreter's shutdown would garbage-collect litellm's large object graph: 10 s of
        # exit on a busy 2-core machine (0.1 s frozen). Nothing in it needs finalizing: every
        # output is written, fsynced and closed by now.
        gc.freeze()


def _main() -> None:
    import hydra

    from recipe.cli.hydra_job import run_composed
    from recipe.cli.precheck import hydra_args, precheck
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
    from recipe.cli import options

    options.register()  # ${recipe_options:GROUP}: --help lists the recipes and models from the files
    if sys.argv[1:2] == ["describe"]:  # not a Hydra run: a recipe's stages and the fields they read and write
        from recipe.cli.describe import describe

        try:
            describe(sys.argv[2:])
        except ConfigError as exc:
            _fail(str(exc))
        sys.exit(0)
    try:
        _designer()  # designer=PATH: a Data Designer config, compiled into a recipe to compose
        composed = precheck(sys.argv[1:])
    except ConfigError as exc:
        _fail(str(exc))
    # +model=NAME as model=NAME, as the precheck composed it (see compose.model_choice)
    sys.argv[1:] = model_choice(sys.argv[1:], hydra_args(sys.argv[1:]).config_name or "config")
    scratch = _preview_scratch(sys.argv)
    try:
        if composed is not None:
            run_composed(composed, _task)  # the check's config, not composed again (recipe.cli.hydra_job)
        else:
            hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")(_task)()
    except KeyboardInterrupt:  # a signal outside the run itself (composing, reporting)
        _interrupted()
    except BrokenPipeError:  # `python -m recipe --help | head`: the reader left, nothing to report
        sys.stderr.close()
        sys.exit(0)
    finally:
        if scratch:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(_exit_code)


def _task(cfg) -> None:
    """Hydra's task: one job. A failed job of a sweep does not stop the next one; the exit code is
    the first failure's."""
    global _exit_code
    code = _job(cfg)
    _exit_code = _exit_code or code


def _preview_scratch(argv: list[str]) -> str | None:
    """``preview=N`` writes nothing into the run folder: Hydra's run dir (its .hydra/ and log)
    becomes a temporary folder, removed at the end. Returns it (None: not a preview)."""
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("preview=")]
    if not given or given[-1].strip().lower() in ("null", "none", ""):
        return None
    import tempfile

    scratch = tempfile.mkdtemp(prefix="recipe-preview-hydra-")
    argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    return scratch


if __name__ == "__main__":
    main()
