"""Writes the generated reference pages at build time (mkdocs-gen-files runs this script)."""

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_pages  # noqa: E402

for path, text in reference_pages.pages().items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
