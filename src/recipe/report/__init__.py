"""``report.html`` for a run folder: written at the end of every run and attempt, rebuilt by
``python -m recipe report DIR [--sample N]`` (``DIR`` may be an fsspec URL such as ``s3://``).

- :mod:`recipe.report.folder` reads the run folder (and says what is missing or corrupt);
- :mod:`recipe.report.profile` streams every record once: field profiles, the browser's sample,
  error groups;
- :mod:`recipe.report.page` builds the self-contained page (Plotly inlined once, ``browser.js``).
"""

from __future__ import annotations

import logging
import sys

from recipe.report.folder import REPORT, NotARunFolder, read_run
from recipe.report.profile import SAMPLE_SIZE

__all__ = ["write_report", "after_run", "main", "NotARunFolder", "REPORT"]

_log = logging.getLogger("recipe.report")


def write_report(root: str, sample_size: int = SAMPLE_SIZE) -> str:
    """Build ``root/report.html`` (written whole or not at all); returns its path or URL.

    Raises :class:`NotARunFolder` when ``root`` holds none of a run's files."""
    from recipe.report.page import build
    from recipe import storage

    files = read_run(root)
    text = build(files, sample_size)
    path = storage.join(root, REPORT)
    storage.atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def after_run(output_dir: str) -> str | None:
    """The run's end: its report, or a note saying why there is none (a report never fails a run)."""
    try:
        write_report(output_dir)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the run's results are written; the report is extra
        _log.warning("report.html was not written: %s: %s", type(exc).__name__, exc)
        return (f"report.html was not written ({type(exc).__name__}: {exc}); "
                f"rebuild it with: python -m recipe report {output_dir}")
    return None


USAGE = "usage: python -m recipe report DIR [--sample N]   (DIR: a run folder, local or s3://...)"


def main(args: list[str]) -> int:
    """``python -m recipe report DIR``: prints the report's path; one ``error:`` line and exit 2 otherwise."""
    from recipe.errors import ConfigError

    folder, sample = None, SAMPLE_SIZE
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            return 0
        if arg == "--sample" or arg.startswith("--sample="):
            value = arg.split("=", 1)[1] if "=" in arg else (rest.pop(0) if rest else "")
            if not value.isdigit():
                print(f"error: --sample needs a number of records, not {value!r}", file=sys.stderr)
                return 2
            sample = int(value)
        elif arg.startswith("-") or folder is not None:
            print(f"error: report: unexpected argument {arg!r}; {USAGE}", file=sys.stderr)
            return 2
        else:
            folder = arg
    if folder is None:
        print(f"error: report needs a run folder; {USAGE}", file=sys.stderr)
        return 2
    try:
        path = write_report(folder, sample)
    except NotARunFolder as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # a URL whose fsspec backend is missing
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report in {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
