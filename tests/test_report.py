"""report.html: a real run of the ``generate`` recipe on the stub server, its page loaded from
file:// in Debian's Chromium (Playwright), and ``python -m recipe report DIR`` on good, damaged
and foreign folders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli, error_rows, outputs, stub_overrides, write_jsonl
from recipe.testing.stub_server import StubServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PARENT_ID, CHILD_ID = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"
HOSTILE = "<script>window.__pwned = 1</script> and </script><img src=x onerror=\"window.__pwned = 2\">"


def _run(tmp: Path, rows: list, *extra: str, retries: int = 0, **stub) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """``recipe=generate`` over ``rows`` on a stub server (faults in exact proportions)."""
    write_jsonl(tmp / "in.jsonl", rows)
    with StubServer(**stub) as server:
        result = cli(tmp, "recipe=generate", f"input={tmp / 'in.jsonl'}", f"output_dir={tmp / 'run'}",
                     "dask.partition_size=8", f"backend.num_retries={retries}", *stub_overrides(server), *extra, cwd=tmp)
        wire = server.stats()
    assert result.returncode in (0, 3), result.stderr[-3000:]
    return tmp / "run", wire, result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """40 prompts, a parent and its child (lineage carried by the input), a hostile record, three
    records the stub answers with no choice (they fail after their retries), a line that is not
    JSON; 10% of the requests fail with a 500 (retried)."""
    rows = [{"prompt": f"question {i}"} for i in range(40)]
    rows += [{"_id": PARENT_ID, "_parent": None, "prompt": "the parent record"},
             {"_id": CHILD_ID, "_parent": PARENT_ID, "prompt": "the child record"},
             {"prompt": "hostile", "payload": HOSTILE}, "this line is not JSON"]
    rows += [{"prompt": f"<<empty>> {i}"} for i in range(3)]
    folder, wire, result = _run(tmp_path_factory.mktemp("report"), rows, retries=2, fail_500=0.1)
    return folder, wire


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser, path: Path):
    """The page from file://, with its console errors and any request that is not a file:// one."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request {r.url}") if not r.url.startswith("file://") else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems


@pytest.fixture
def open_page(browser):
    """``_open``, the page closed after the test (an open page of charts keeps a renderer busy)."""
    pages = []

    def opened(path: Path):
        page, problems = _open(browser, path)
        pages.append(page)
        return page, problems

    yield opened
    for page in pages:
        if not page.is_closed():
            page.close()


@pytest.fixture(scope="module")
def run_page(run, browser):
    """The run's report, opened once for the tests that only read it (opening one costs the
    browser ~3 CPU-s: plotly.js parsed and every chart drawn)."""
    page, problems = _open(browser, run[0] / "report.html")
    yield page, problems
    page.close()


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all("#records .rec", "els => els.map(e => ({id: e.dataset.id, text: e.innerText}))")


def test_report_written_by_the_run_loads_offline_without_errors_and_draws_every_chart(run, run_page):
    folder, _ = run
    page, problems = run_page
    charts = page.eval_on_selector_all(".chart", "els => els.map(e => e.id)")
    # the funnel, a length histogram per text field, latency, timeline, tokens, errors by class
    assert {"chart-funnel", "chart-latency", "chart-timeline", "chart-tokens", "chart-errors"} <= set(charts)
    drawn = page.eval_on_selector_all(
        ".chart", "els => els.map(e => [e.id, e.querySelectorAll('svg.main-svg g.trace, svg.main-svg g.point, "
                  "svg.main-svg path.point').length])")
    assert [name for name, marks in drawn if marks == 0] == []
    assert page.evaluate("typeof Plotly") == "object"  # inlined: the page made no request (checked below)
    assert problems == []


def test_summary_numbers_equal_stats_json(run, run_page):
    folder, _ = run
    stats = json.loads((folder / "stats.json").read_text())
    page, problems = run_page
    shown = dict(page.eval_on_selector_all("[data-stat]", "els => els.map(e => [e.dataset.stat, e.textContent])"))
    scalars = {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}
    assert {"records", "failed", "requests", "prompt_tokens", "completion_tokens", "wall_seconds"} <= scalars.keys()
    assert {k: json.loads(shown[k]) for k in scalars} == scalars
    nested = dict(page.eval_on_selector_all("[data-stat-json]", "els => els.map(e => [e.dataset.statJson, e.innerText])"))
    assert json.loads(nested["failed_by_class"]) == stats["failed_by_class"]
    assert "api_key: '***'" in page.text_content("#config")  # the config, keys masked
    assert "backend.api_key=***" in page.text_content("#command")
    assert "test-key" not in (folder / "report.html").read_text()  # stub_overrides' key, nowhere in the page
    assert problems == []


def test_funnel_and_request_timings_match_the_wire(run, run_page):
    folder, wire = run
    stats = json.loads((folder / "stats.json").read_text())
    assert wire["status_counts"].get("500", 0) > 0  # the run had the retried faults this test is about
    failed = [row for row in error_rows(folder) if row["_error"]["stage"] == "generate"]
    page, _ = run_page
    funnel = {row[0]: row[1:] for row in page.eval_on_selector_all(
        "#funnel tr[data-stage]", "els => els.map(e => [...e.children].map(c => c.textContent))")}
    good_inputs = 46  # every line but the one that is not JSON: the read stage's output
    assert funnel["read"] == ["", str(good_inputs), "1", "0"]
    n = len(failed)  # the three with no choice, and any record whose every try met a 500
    assert n >= 3 and funnel["generate"] == [str(good_inputs), str(good_inputs - n), str(n), "0"]
    assert stats["records"] == good_inputs - n
    timed = page.text_content("[data-latency=count]")
    assert int(timed) == wire["requests"]  # every request attempt on the wire, timed once
    for q in ("p50", "p90", "p99"):
        assert page.text_content(f"[data-latency={q}]").endswith(" ms")
    timeline = {t["name"]: sum(t["y"]) for t in page.evaluate(
        "JSON.parse(document.getElementById('report-data').textContent).charts"
        ".find(c => c.id === 'chart-timeline').data")}
    assert sum(timeline.values()) == wire["requests"]
    assert timeline["429 (rate limited)"] == wire["status_counts"].get("429", 0) == 0
    assert timeline["failed, retried"] + timeline["failed"] >= wire["status_counts"]["500"]
    assert timeline["answered"] == wire["requests"] - timeline["failed, retried"] - timeline["failed"]


def test_records_page_search_and_parent_click_through(run, open_page):
    folder, _ = run
    written = {r["_id"]: r for r in outputs(folder)}
    page, problems = open_page(folder / "report.html")
    assert page.text_content("#rec-page") == f"page 1 of {-(-len(written) // 20)} ({len(written)} records)"
    first = _cards(page)
    assert len(first) == 20
    page.click("#rec-next")
    second = _cards(page)
    assert page.text_content("#rec-page").startswith("page 2 of")
    assert second and not {c["id"] for c in first} & {c["id"] for c in second}
    assert {c["id"] for c in first + second} <= written.keys()

    page.fill("#rec-search", "question 17")
    found = _cards(page)
    assert len(found) == 1 and found[0]["id"] == next(i for i, r in written.items() if r["prompt"] == "question 17")

    page.fill("#rec-search", "the child record")
    [child] = _cards(page)
    assert child["id"] == CHILD_ID
    page.click(f".rec[data-id='{CHILD_ID}'] a.parent")
    [parent] = _cards(page)
    assert parent["id"] == PARENT_ID and "the parent record" in parent["text"]
    assert page.get_attribute(f".rec[data-id='{PARENT_ID}']", "class") == "rec focus"
    assert problems == []


def test_a_record_holding_script_shows_as_text_and_runs_nothing(run, open_page):
    folder, _ = run
    page, problems = open_page(folder / "report.html")
    page.fill("#rec-search", "hostile")
    [card] = _cards(page)
    assert HOSTILE in json.loads(page.text_content(f".rec[data-id='{card['id']}'] pre"))["payload"]
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.scripts.length") == 3  # the data block, plotly.js, the page's own
    assert problems == []


def test_error_browser_groups_by_class_with_stage_and_examples(run, run_page):
    folder, wire = run
    errors = error_rows(folder)
    page, _ = run_page
    groups = dict(page.eval_on_selector_all(
        "#errors details", "els => els.map(e => [e.dataset.errorClass, e.querySelector('summary').textContent])"))
    by_class: dict[str, dict[str, int]] = {}
    for row in errors:
        stages = by_class.setdefault(row["_error"]["class"], {})
        stages[row["_error"]["stage"]] = stages.get(row["_error"]["stage"], 0) + 1
    assert set(groups) == set(by_class) and by_class["InputError"] == {"read": 1}
    assert sum(sum(s.values()) for s in by_class.values()) == len(errors) >= 4  # the bad line, the three with no choice
    for name, stages in by_class.items():
        shown = ", ".join(f"{stage}: {n}" for stage, n in stages.items())
        assert groups[name] == f"{name} — {sum(stages.values())} records (stage {shown})"
    examples = page.eval_on_selector_all("#errors pre.message", "els => els.map(e => e.textContent)")
    assert sorted(examples) == sorted(row["_error"]["message"] for row in errors)


def test_report_command_rebuilds_the_page(run, tmp_path):
    folder, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "report.html").unlink()
    result = cli(tmp_path, "report", str(copy), check_exit=0)
    assert result.stdout.strip() == f"report: {copy / 'report.html'}"
    page = (copy / "report.html").read_text()

    def data(text: str) -> str:
        return text.split('<script type="application/json" id=report-data>', 1)[1].split("</script>", 1)[0]

    assert data(page) == data((folder / "report.html").read_text())  # the same records, charts, errors
    assert page.count("<script") == 3  # the data block, plotly.js inlined once, the page's own script
    assert page.count("plotly.js v") == 1


def test_report_of_a_folder_that_is_no_run_folder_is_one_error_line(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    result = cli(tmp_path, "report", str(tmp_path / "plain"), check_exit=2)
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'plain'} is not a run folder (no run.json, stats.json, "
                                          "manifests/ or part files)"]
    result = cli(tmp_path, "report", str(tmp_path / "missing"), check_exit=2)
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'missing'} is not a folder"]
    assert not (tmp_path / "plain" / "report.html").exists()


def test_missing_stats_and_corrupt_manifest_still_give_a_report_saying_so(run, tmp_path, open_page):
    folder, _ = run
    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    (copy / "stats.json").unlink()
    (copy / "manifests" / "part-00001.json").write_text("{not json")
    result = cli(tmp_path, "report", str(copy), check_exit=0)
    assert "Traceback" not in result.stderr
    page, problems = open_page(copy / "report.html")
    said = page.text_content("#problems")
    assert "the run's account (stats.json) is missing" in said
    assert "a partition's manifest (part-00001.json) is corrupt" in said
    assert page.text_content("#s-summary").count("stats.json is missing") == 1
    assert problems == []


def test_huge_deep_values_and_a_run_with_only_errors_still_give_a_report(tmp_path, open_page):
    deep: dict = {"leaf": 1}
    for _ in range(60):
        deep = {"down": deep}
    # "mixed" changes type between the records: Arrow refuses the part, which is read line by line
    rows = [{"prompt": "big one", "blob": "x" * (10 * 1024 * 1024), "deep": deep, "mixed": 1},
            {"prompt": "small", "mixed": "text"}]
    folder, _, _ = _run(tmp_path / "big", rows)
    report = folder / "report.html"
    assert report.stat().st_size < 8 * 1024 * 1024  # plotly.js (~4.7 MB) and clipped values, not the 10 MB
    page, problems = open_page(report)
    page.fill("#rec-search", "big one")
    [card] = _cards(page)
    assert "clipped for display: blob (10485760 characters)" in card["text"]
    assert "deeper levels" in card["text"]
    mixed = page.text_content(".field:has(h3:text-is('mixed')) table")
    assert "type" in mixed and "integer: 1" in mixed and "text: 1" in mixed
    assert problems == []

    folder, _, result = _run(tmp_path / "failing", [{"prompt": "a"}, {"prompt": "b"}], status=500)
    assert result.returncode == 3
    page, problems = open_page(folder / "report.html")
    assert page.text_content("#rec-page") == "page 1 of 1 (0 records)"
    assert "No records to profile." in page.text_content("#s-fields")
    assert "2 error records." in page.text_content("#s-errors")
    assert problems == []


def test_report_of_a_run_folder_on_s3(run, tmp_path, s3_bucket):
    import s3fs

    folder, _ = run
    fs = s3fs.S3FileSystem()
    fs.put(str(folder), f"{s3_bucket}/run", recursive=True)
    fs.rm(f"{s3_bucket}/run/report.html")
    result = cli(tmp_path, "report", f"{s3_bucket}/run", check_exit=0)
    assert result.stdout.strip() == f"report: {s3_bucket}/run/report.html"
    page = fs.cat_file(f"{s3_bucket}/run/report.html").decode()

    def data(text: str) -> str:
        return text.split('<script type="application/json" id=report-data>', 1)[1].split("</script>", 1)[0]

    assert data(page) == data((folder / "report.html").read_text())


def test_profiles_read_by_arrow_equal_those_read_record_by_record(tmp_path):
    """The two ways a part is read (Arrow, columnar; line by line, for what Arrow refuses) give the
    same profiles and the same sample."""
    import random

    from recipe.report import folder as run_files
    from recipe.report.profile import Profiler

    rng = random.Random(3)
    rows = [{"_id": f"{rng.getrandbits(64):016x}", "_parent": None, "text": rng.choice(["a", "bb", "ccc", "x" * 300]),
             "n": rng.randint(0, 9), "f": rng.random(), "ok": rng.random() < 0.3, "tags": ["t"] * rng.randint(0, 3),
             "scores": {"accuracy": rng.randint(1, 5), "style": rng.randint(1, 5)}, "maybe": None if i % 4 else "v"}
            for i in range(3000)]
    parts = [write_jsonl(tmp_path / f"part-{i:05d}.jsonl", rows[i * 700:(i + 1) * 700]) for i in range(5)]
    by_arrow, by_line = Profiler(500, expected=3000), Profiler(500, expected=3000)
    problems: list[str] = []
    tables = list(run_files.parts([str(p) for p in parts], problems))
    assert all(not isinstance(t, list) for t in tables)  # Arrow read every part
    for table in tables:
        by_arrow.add_table(table)
    for record in run_files.records([str(p) for p in parts], problems):
        by_line.add(record)
    assert problems == []

    def comparable(profiles: list[dict]) -> list[dict]:  # list and object values: Arrow does not count distinct
        return [{k: v for k, v in p.items() if not (p["type"] in ("list", "object") and k.startswith("distinct"))}
                | {"keys": comparable(p.get("keys") or [])} for p in profiles]

    assert comparable(by_arrow.profiles()) == comparable(by_line.profiles())
    assert [item["r"]["_id"] for item in by_arrow.sample()] == [item["r"]["_id"] for item in by_line.sample()]
    assert len(by_arrow.sample()) == 500


# ---- sampled columns against their declared distributions --------------------------------------

COLORS = {"sampler": "category", "values": ["red", "green", "blue"], "weights": [5, 3, 2]}
SIZE_WHEN_RED = "color == 'red'"
SAMPLED = {"color": COLORS,
           "size": {"sampler": "category", "values": ["L"],
                    "conditional": {SIZE_WHEN_RED: {"values": ["S", "M"], "weights": [1, 3]}}},
           "coin": {"sampler": "bernoulli", "p": 0.25},
           "score": {"sampler": "uniform", "low": 0, "high": 5},
           "weight": {"sampler": "gaussian", "mean": 1, "stddev": 1}}
WEIGHT_RULE = "weight > 0"  # redraws about a sixth of the records: weight's shares no longer hold, the others' do


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    """4,000 records of a weighted category, a category conditional on it, a coin, a uniform number and a
    constrained gaussian, on the stub server."""
    from test_sample import sample_recipe, write_recipe

    tmp = tmp_path_factory.mktemp("sampled")
    conf = write_recipe(tmp, sample_recipe(SAMPLED, n=4000, constraints=[WEIGHT_RULE]))
    with StubServer() as server:
        cli(tmp, "--config-dir", str(conf), "recipe=sampled", f"output_dir={tmp / 'run'}", "sampling.seed=11",
            "dask.partition_size=500", *stub_overrides(server), check_exit=0)
    return tmp / "run"


def _report_data(folder: Path) -> dict:
    text = (folder / "report.html").read_text()
    return json.loads(text.split('<script type="application/json" id=report-data>', 1)[1].split("</script>", 1)[0])


def _fit(folder: Path, column: str) -> dict:
    [found] = [r for r in _report_data(folder)["declared"] if r["column"] == column]
    return found


def _rewrite_parts(folder: Path, change) -> None:
    """Each written record passed through ``change`` (the output edited by hand, as a user might)."""
    for part in sorted(folder.glob("part-*.jsonl")):
        records = [change(json.loads(line)) for line in part.read_text().splitlines()]
        part.write_text("".join(json.dumps(r) + "\n" for r in records))


def _chisquare(counts: list[int], weights: list[float]):
    from scipy import stats

    n = sum(counts)
    return stats.chisquare(counts, [n * w / sum(weights) for w in weights])


def test_sampled_columns_are_set_against_their_declared_weights(sampled_run, tmp_path):
    written = outputs(sampled_run)
    assert len(written) == 4000
    color = _fit(sampled_run, "color")
    [group] = color["groups"]
    counts = [sum(r["color"] == v for r in written) for v in COLORS["values"]]  # read off the part files
    assert [c["value"] for c in group["cells"]] == COLORS["values"]
    assert [c["declared"] for c in group["cells"]] == pytest.approx([0.5, 0.3, 0.2])
    assert [c["count"] for c in group["cells"]] == counts
    assert [c["observed"] for c in group["cells"]] == pytest.approx([c / 4000 for c in counts])
    expected = _chisquare(counts, COLORS["weights"])
    assert (group["chi2"], group["df"]) == (pytest.approx(expected.statistic), 2)
    assert group["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert expected.pvalue > 0.001 and group["flagged"] is False and color["flagged"] is False

    # the conditional column: one comparison per condition, records grouped by their written color
    size = {g["group"]: g for g in _fit(sampled_run, "size")["groups"]}
    red = [r["size"] for r in written if r["color"] == "red"]
    when_red = size[f"when {SIZE_WHEN_RED}"]
    assert when_red["records"] == len(red) == counts[0]
    assert [(c["value"], c["count"]) for c in when_red["cells"]] == [("S", red.count("S")), ("M", red.count("M"))]
    assert when_red["p"] == pytest.approx(_chisquare([red.count("S"), red.count("M")], [1, 3]).pvalue, rel=1e-9)
    others = size["otherwise (no condition holds)"]
    assert others["records"] == 4000 - len(red) and others["cells"][0]["count"] == 4000 - len(red)
    assert others["p"] is None  # one possible value: no test claimed
    coin = _fit(sampled_run, "coin")["groups"][0]
    heads = sum(r["coin"] for r in written)
    assert [c["count"] for c in coin["cells"]] == [4000 - heads, heads]
    assert coin["p"] == pytest.approx(_chisquare([4000 - heads, heads], [0.75, 0.25]).pvalue, rel=1e-9)
    score = _fit(sampled_run, "score")["groups"][0]  # uniform on [0, 5]: ten bins of 0.5, each a tenth
    bins = [sum(min(int(r["score"] / 0.5), 9) == i for r in written) for i in range(10)]
    assert [c["count"] for c in score["cells"]] == bins and [c["declared"] for c in score["cells"]] == [0.1] * 10
    assert score["p"] == pytest.approx(_chisquare(bins, [1] * 10).pvalue, rel=1e-9)
    weight = _fit(sampled_run, "weight")  # the constraint reshapes it: said, and no test claimed
    assert min(r["weight"] for r in written) > 0
    assert WEIGHT_RULE in weight["untested"] and weight["groups"] == [] and weight["flagged"] is False

    # the output edited: a third of the blue records made red; and one record holding an undeclared value
    skewed = tmp_path / "skewed"
    shutil.copytree(sampled_run, skewed)
    blues = iter(range(4000))
    _rewrite_parts(skewed, lambda r: {**r, "color": "red"} if r["color"] == "blue" and next(blues) % 3 == 0 else r)
    cli(tmp_path, "report", str(skewed), check_exit=0)
    edited = [r["color"] for r in outputs(skewed)]
    counts = [edited.count(v) for v in COLORS["values"]]
    assert counts != [c["count"] for c in group["cells"]]
    [group] = _fit(skewed, "color")["groups"]
    assert [c["count"] for c in group["cells"]] == counts
    expected = _chisquare(counts, COLORS["weights"])
    assert expected.pvalue < 1e-10 and group["p"] == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert group["flagged"] is True and _fit(skewed, "color")["flagged"] is True

    purple = tmp_path / "purple"
    shutil.copytree(sampled_run, purple)
    first = iter(range(4000))
    _rewrite_parts(purple, lambda r: {**r, "color": "purple"} if next(first) == 0 else r)
    cli(tmp_path, "report", str(purple), check_exit=0)
    [group] = _fit(purple, "color")["groups"]
    assert group["undeclared"] == [['"purple"', 1]] and group["p"] == 0.0 and group["flagged"] is True

    # the declaration is the run folder's own (run.json), not the recipe file: a changed one is what is tested
    declared = tmp_path / "declared"
    shutil.copytree(sampled_run, declared)
    info = json.loads((declared / "run.json").read_text())
    info["identity"]["recipe"]["stages"]["sample"]["columns"]["color"]["weights"] = [1, 1, 1]
    (declared / "run.json").write_text(json.dumps(info))
    cli(tmp_path, "report", str(declared), check_exit=0)
    [group] = _fit(declared, "color")["groups"]
    counts = [c["count"] for c in group["cells"]]
    assert [c["declared"] for c in group["cells"]] == pytest.approx([1 / 3] * 3)
    assert group["p"] == pytest.approx(_chisquare(counts, [1, 1, 1]).pvalue, rel=1e-6, abs=1e-300)
    assert group["flagged"] is True


def test_the_declared_comparison_renders_in_the_browser(sampled_run, tmp_path, open_page):
    written = [r["color"] for r in outputs(sampled_run)]
    page, problems = open_page(sampled_run / "report.html")
    row = page.eval_on_selector("#declared tr[data-fit=color]", "e => [e.className, e.querySelector('.verdict').textContent]")
    assert row == ["", "consistent with the declaration"]
    assert page.text_content("#declared tr[data-fit=weight] .verdict") == "not tested"
    assert WEIGHT_RULE in page.text_content(".fit[data-fit=weight] .untested")
    shown = page.eval_on_selector_all(".fit[data-fit=color] tr[data-value]", "els => els.map(e => [e.dataset.value, "
                                      "e.querySelector('.declared-share').textContent, "
                                      "e.querySelector('.observed-share').textContent])")
    assert [value for value, _, _ in shown] == COLORS["values"]
    assert [declared for _, declared, _ in shown] == ["50.00%", "30.00%", "20.00%"]
    observed = [float(text.removesuffix("%")) for _, _, text in shown]  # shown to two decimals
    assert observed == pytest.approx([100 * written.count(v) / len(written) for v in COLORS["values"]], abs=0.0051)
    assert page.text_content(".fit[data-fit=color] .figure").startswith("chi-square ")
    bars = page.eval_on_selector_all("[id^=chart-fit-]", "els => els.map(e => e.querySelectorAll('svg.main-svg g.trace').length)")
    # color, size when red (its other group has one value: no chart), coin, score: declared and observed bars
    assert len(bars) == 4 and all(n == 2 for n in bars)
    assert problems == []
    page.close()

    skewed = tmp_path / "skewed"
    shutil.copytree(sampled_run, skewed)
    _rewrite_parts(skewed, lambda r: {**r, "color": "red"} if r["color"] == "blue" else r)
    cli(tmp_path, "report", str(skewed), check_exit=0)
    page, problems = open_page(skewed / "report.html")
    row = page.eval_on_selector("#declared tr[data-fit=color]", "e => [e.className, e.querySelector('.verdict').textContent]")
    assert row == ["flagged", "differs from the declaration"]
    assert page.is_visible(".fit[data-fit=color] .flag")
    assert problems == []


def test_declared_counts_read_by_arrow_equal_those_read_record_by_record(sampled_run):
    """The two ways a part is read give the same comparison (Arrow's group-by and numpy bins; record by record)."""
    from recipe.report import folder as run_files
    from recipe.report.goodness import Fits

    files = run_files.read_run(str(sampled_run))
    by_arrow, by_line = Fits.of_run(files.info, []), Fits.of_run(files.info, [])
    tables = list(run_files.parts(files.part_files, []))
    assert len(tables) == 8 and all(not isinstance(t, list) for t in tables)
    for table in tables:
        by_arrow.add_table(table)
    by_line.add_records(list(run_files.records(files.part_files, [])))
    assert [r["column"] for r in by_arrow.results()] == ["color", "size", "coin", "score", "weight"]
    assert by_arrow.results() == by_line.results()
