"""Regenerates docs/report.png: a run of the ``generate`` recipe (its bundled sample prompts) on the
stub server, its report.html opened from file:// in Debian's Chromium, the top of the page captured.

    python docs/report_screenshot.py            # writes docs/report.png
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from recipe.testing.stub_server import StubServer

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, StubServer(latency=0.02, jitter_sigma=0.5, fail_500=0.05) as server:
        run = Path(tmp) / "run"
        env = {**os.environ, "RECIPE_CACHE_DIR": str(Path(tmp) / "cache"), "NO_PROXY": "127.0.0.1"}
        subprocess.run([sys.executable, "-m", "recipe", "recipe=generate", f"output_dir={run}", "backend=openai",
                        f"backend.api_base={server.base_url}", "backend.api_key=stub-key", "model.name=stub-model",
                        "progress=false", "dask.partition_size=4"], env=env, check=True, capture_output=True)
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto((run / "report.html").as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(HERE / "report.png"))
            browser.close()
    print(f"wrote {HERE / 'report.png'}")


if __name__ == "__main__":
    main()
