"""``python -m recipe``: Hydra parses and composes; :func:`recipe.runner.run` does the work.

User mistakes (a bad override, an unknown option, a bad value, a missing file or key) are
printed as one line with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
EXIT_RECORDS_FAILED = 3
_exit_code = 0


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _precheck(argv: list[str]) -> None:
    """Compose a plain run's overrides first, so that Hydra's multi-line errors become one line."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.multirun or args.info or args.shell_completion or args.cfg:
        return
    from recipe.config.compose import compose

    compose(args.overrides)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from recipe.config import paths
    from recipe.config.compose import setup
    from recipe.errors import ConfigError, RecipeError

    setup()
    try:
        _precheck(sys.argv[1:])
    except ConfigError as exc:
        _fail(str(exc))

    @hydra.main(config_path=str(paths.config_dir()), config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> None:
        global _exit_code
        from recipe.runner import run

        try:
            summary = run(cfg)
        except (ConfigError, RecipeError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume from the cache")
        print(f"output: {summary.output_dir}")
        print(summary.line())
        if summary.failed:
            print(f"{summary.failed} records failed: see {summary.output_dir}/errors/", file=sys.stderr)
            _exit_code = EXIT_RECORDS_FAILED

    _task()
    sys.exit(_exit_code)


if __name__ == "__main__":
    main()
