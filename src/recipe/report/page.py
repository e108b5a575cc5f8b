"""``report.html``: one self-contained page for a run folder (no CDN, no server: opens from file://).

The page is static HTML for the summary, the funnel, the field profiles and the requests, plus
one JSON block (the browser's records, the error examples, the charts' figures) that the page's
script (``browser.js``) renders with ``textContent`` only: a record holding ``<script>`` shows
as text. Charts are Plotly figures, its JavaScript inlined once. Everything from the run folder
goes through :func:`html.escape` (HTML) or :func:`_json_block` (the JSON block).
"""

from __future__ import annotations

import html
import json
import time
from importlib import resources
from typing import Any

from recipe.report.folder import RunFiles
from recipe.report.profile import CLIP_CHARS, ErrorGroups, Profiler

# the browser's records may take this many characters of JSON; beyond it, fewer records are kept
SAMPLE_CHARS = 12_000_000

# stats.json keys shown in the summary, in this order (the rest follow in their own order)
_SUMMARY_KEYS = ("records", "failed", "filtered", "deduplicated", "transient_failed", "requests", "cache_hits",
                 "retries", "rate_limited_429", "prompt_tokens", "completion_tokens", "cost_usd", "wall_seconds",
                 "records_per_second", "requests_per_second", "attempts", "partitions")


def _json_block(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, no ``<!--``."""
    text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _plotly_js() -> str:
    """plotly.js from the plotly package (the page inlines it once)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# ---- sections -------------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _summary(stats: dict | None) -> str:
    if stats is None:
        return "<p class=missing>No summary: stats.json is missing or unreadable (see the problems above).</p>"
    tiles, nested = [], []
    keys = [k for k in _SUMMARY_KEYS if k in stats] + [k for k in stats if k not in _SUMMARY_KEYS]
    for key in keys:
        value = stats[key]
        if isinstance(value, (dict, list)) and value:
            shown = _e(json.dumps(value, indent=1, ensure_ascii=False, default=str))
            nested.append(f"<tr><th>{_e(key)}</th><td data-stat-json='{_e(key)}'><pre>{shown}</pre></td></tr>")
        elif isinstance(value, (dict, list)):
            tiles.append(f"<div class=tile><span class=k>{_e(key)}</span><span class=v data-stat-json='{_e(key)}'>"
                         f"{_e(_scalar(value))}</span></div>")
        else:
            tiles.append(f"<div class=tile><span class=k>{_e(key)}</span><span class=v data-stat='{_e(key)}'>"
                         f"{_e(_scalar(value))}</span></div>")
    table = f"<table class=kv>{''.join(nested)}</table>" if nested else ""
    return f"<div class=tiles id=summary>{''.join(tiles)}</div>{table}"


def _masked_config(files: RunFiles) -> tuple[str, str]:
    """(title, text) of the run's config with every secret-named key's value masked."""
    import yaml

    from recipe.config import secrets

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if secrets.is_secret_name(str(k)) and v not in (None, "") else mask(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    if files.config_text is not None:
        try:
            text = yaml.safe_dump(mask(yaml.safe_load(files.config_text)), sort_keys=False, allow_unicode=True)
        except yaml.YAMLError:
            text = "(the saved config .hydra/config.yaml is not valid YAML)"
        return "config (.hydra/config.yaml, keys masked)", secrets.redact(text)
    identity = (files.info or {}).get("identity")
    if identity is None:
        return "config", "(no saved config: .hydra/config.yaml and run.json's identity are missing)"
    text = yaml.safe_dump(mask(identity), sort_keys=False, allow_unicode=True)
    return "config (the run's identity from run.json: the settings that decide its results)", secrets.redact(text)


def _command(files: RunFiles) -> str:
    from recipe.config import secrets

    if not files.command:
        return ""
    parts = []
    for item in files.command:
        key, sep, _ = item.partition("=")
        parts.append(f"{key}=***" if sep and secrets.is_secret_name(key.lstrip("+~")) else item)
    return secrets.redact("python -m recipe " + " ".join(parts))


def funnel(files: RunFiles, errors_total: int) -> list[dict]:
    """Records in and out of every stage, summed over the committed partitions' manifests."""
    stages: dict[str, list[int]] = {}
    counted = bool(files.manifests)
    for _, manifest in sorted(files.manifests.items()):
        found = (manifest.get("dropped") or {}).get("stages")
        if not isinstance(found, dict):
            counted = False
            continue
        for name, counts in found.items():
            seen = stages.setdefault(str(name), [0, 0, 0])
            for index in range(3):
                seen[index] += int(counts[index]) if index < len(counts) else 0
    rows: list[dict[str, Any]] = [{"stage": name, "in": c[0], "out": c[1], "errors": c[2], "dropped": c[0] - c[1] - c[2]}
                                  for name, c in stages.items()]
    if rows:
        made_by_stages = sum(r["errors"] for r in rows)
        rows.insert(0, {"stage": "read", "in": None, "out": rows[0]["in"],
                        "errors": max(0, errors_total - made_by_stages), "dropped": 0})
    return rows if counted or rows else []


def _funnel_section(rows: list[dict], stats: dict | None, charts: list) -> str:
    if not rows:
        note = ("the manifests do not count records per stage (a run made before the report existed, or no "
                "manifest)")
        if stats:
            return (f"<p class=missing>No per-stage counts: {_e(note)}. Records {stats.get('records')}, failed "
                    f"{stats.get('failed')}, filtered {stats.get('filtered')}, deduplicated "
                    f"{_e(_scalar(stats.get('deduplicated')))}.</p>")
        return f"<p class=missing>No per-stage counts: {_e(note)}.</p>"
    charts.append({"id": "chart-funnel", "data": [{
        "type": "funnel", "y": [r["stage"] for r in rows], "x": [r["out"] for r in rows],
        "textinfo": "value+percent initial"}],
        "layout": {"title": {"text": "records out of each stage"}, "margin": {"l": 140, "r": 20, "t": 40, "b": 30},
                   "height": 80 + 45 * len(rows)}})
    body = "".join(f"<tr data-stage='{_e(r['stage'])}'><td>{_e(r['stage'])}</td><td>{_e('' if r['in'] is None else r['in'])}"
                   f"</td><td>{_e(r['out'])}</td><td>{_e(r['errors'])}</td><td>{_e(r['dropped'])}</td></tr>"
                   for r in rows)
    return ("<div class=chart id=chart-funnel></div><table class=grid id=funnel><tr><th>stage</th><th>in</th>"
            f"<th>out</th><th>error records made</th><th>dropped (filtered, deduplicated)</th></tr>{body}</table>")


def _bar(chart_id: str, hist: dict, title: str, xtitle: str, height: int = 220) -> dict:
    return {"id": chart_id, "data": [{"type": "bar", "x": hist["x"], "y": hist["y"], "width": hist.get("width")}],
            "layout": {"title": {"text": title, "font": {"size": 12}}, "height": height, "bargap": 0.05,
                       "margin": {"l": 50, "r": 10, "t": 30, "b": 40}, "xaxis": {"title": {"text": xtitle}},
                       "yaxis": {"title": {"text": "records"}}}}


def _profile_card(p: dict, index: list, charts: list, fits: dict | None = None) -> str:
    number = len(index)
    index.append(p["name"])
    facts = [("type", p["type"] + ("" if len([t for t in p["types"] if t != "null"]) <= 1
                                   else " (" + ", ".join(f"{k}: {v}" for k, v in p["types"].items()) + ")")),
             ("present", p["present"]), ("missing", p["missing"]), ("nulls", p["nulls"]),
             ("distinct", f"{p['distinct']}" + ("" if p["distinct_exact"] else " (estimated, or not counted for lists and objects)"))]
    if "length_mean" in p:
        facts.append(("length mean / max", f"{p['length_mean']} / {p['length_max']}"))
    if "numbers" in p:
        n = p["numbers"]
        facts.append(("min / mean / max", f"{n['min']:g} / {n['mean']:.4g} / {n['max']:g}"))
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    parts = [f"<div class=field id='field-{number}'><h3>{_e(p['name'])}</h3><table class=kv>{rows}</table>"]
    if p.get("lengths"):
        charts.append(_bar(f"chart-len-{number}", p["lengths"], "text length", "characters"))
        parts.append(f"<div class=chart id='chart-len-{number}'></div>")
    if p.get("numbers") and p["numbers"]["histogram"]["x"]:
        charts.append(_bar(f"chart-num-{number}", p["numbers"]["histogram"],
                           "values" + (" (a sample of them)" if p["numbers"]["sampled"] else ""), "value"))
        parts.append(f"<div class=chart id='chart-num-{number}'></div>")
    if p.get("list_lengths"):
        charts.append(_bar(f"chart-list-{number}", p["list_lengths"], "list length", "items"))
        parts.append(f"<div class=chart id='chart-list-{number}'></div>")
    if fits and p["name"] in fits:  # a sampled column: set against its declared distribution
        from recipe.report.goodness import field_block

        parts.append(field_block(fits[p["name"]], number, charts))
    if p["top"] and p["type"] not in ("number",):
        top = "".join(f"<tr><td class=val>{_e(text)}</td><td>{_e(count)}</td></tr>" for text, count in p["top"])
        note = " (approximate: many distinct values)" if p["top_approximate"] else ""
        parts.append(f"<details><summary>top values{_e(note)}</summary><table class=grid>{top}</table></details>")
    for child in p.get("keys") or []:
        parts.append(_profile_card(child, index, charts))
    if p.get("other_keys"):
        parts.append(f"<p>{_e(p['other_keys'])} more keys not profiled</p>")
    parts.append("</div>")
    return "".join(parts)


def _requests_section(files: RunFiles, stats: dict | None, charts: list) -> str:
    from recipe.clients import request_timings as rt

    timings = rt.empty()
    for attempt in files.attempts:
        rt.merge(timings, (attempt.get("usage") or {}).get("timings"))
    latency = timings["latency_ms"]
    if not latency:
        cached = (stats or {}).get("cache_hits")
        return ("<p class=missing>No request timings: no request was sent"
                + (f" ({_e(cached)} answers came from the cache)" if cached else "")
                + ", or the attempts' accounts predate them.</p>")
    pct = {q: rt.percentile(latency, q) for q in (50, 90, 99)}
    total = sum(latency.values())
    facts = "".join(f"<tr><th>latency p{q}</th><td data-latency='p{q}'>{v:.1f} ms</td></tr>" for q, v in pct.items())
    facts += f"<tr><th>request attempts timed</th><td data-latency='count'>{total}</td></tr>"
    items = sorted((int(k), v) for k, v in latency.items())
    charts.append({"id": "chart-latency", "data": [{"type": "bar", "x": [round(rt.bucket_value(k, rt.LATENCY_RATIO), 2)
                                                                          for k, _ in items],
                                                     "y": [v for _, v in items]}],
                   "layout": {"title": {"text": "latency per request attempt"}, "height": 260,
                              "xaxis": {"type": "log", "title": {"text": "ms"}}, "yaxis": {"title": {"text": "requests"}},
                              "margin": {"l": 50, "r": 10, "t": 40, "b": 40}}})
    minutes = sorted((int(k), v) for k, v in timings["minutes"].items())
    x = [time.strftime("%Y-%m-%d %H:%M", time.gmtime(m)) for m, _ in minutes]
    charts.append({"id": "chart-timeline", "data": [
        {"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": [v[i] for _, v in minutes]}
        for i, name in enumerate(("answered", "429 (rate limited)", "failed, retried", "failed"))],
        "layout": {"title": {"text": "request attempts per minute (UTC)"}, "height": 260,
                   "margin": {"l": 50, "r": 10, "t": 40, "b": 40}}})
    tokens = sorted((int(k), v) for k, v in timings["tokens"].items())
    parts = [f"<table class=kv id=latency>{facts}</table><div class=chart id=chart-latency></div>",
             "<div class=chart id=chart-timeline></div>"]
    if tokens:
        charts.append({"id": "chart-tokens", "data": [{"type": "bar", "x": [round(rt.bucket_value(k, rt.TOKENS_RATIO))
                                                                             for k, _ in tokens],
                                                        "y": [v for _, v in tokens]}],
                       "layout": {"title": {"text": "tokens per answered request"}, "height": 240,
                                  "xaxis": {"type": "log", "title": {"text": "tokens (prompt + completion)"}},
                                  "margin": {"l": 50, "r": 10, "t": 40, "b": 40}}})
        parts.append("<div class=chart id=chart-tokens></div>")
    return "".join(parts)


def _attempts_section(files: RunFiles) -> str:
    if not files.attempts:
        return "<p class=missing>No attempts recorded (attempts/ is missing).</p>"
    rows = []
    for a in sorted(files.attempts, key=lambda a: a.get("attempt") or 0):
        usage = a.get("usage") or {}
        rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in (
            a.get("attempt"), a.get("outcome"), a.get("partitions_to_do"), usage.get("requests", 0),
            usage.get("cache_hits", 0), usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
            usage.get("cost_usd"), a.get("wall_seconds"))) + "</tr>")
    return ("<table class=grid id=attempts><tr><th>attempt</th><th>outcome</th><th>partitions</th><th>requests</th>"
            f"<th>cache hits</th><th>tokens</th><th>cost (USD)</th><th>seconds</th></tr>{''.join(rows)}</table>")


def _errors_section(groups: list[dict], charts: list) -> str:
    if not groups:
        return "<p>No error records.</p>"
    charts.append({"id": "chart-errors", "data": [{"type": "bar", "x": [g["class"] for g in groups],
                                                    "y": [g["count"] for g in groups]}],
                   "layout": {"title": {"text": "error records by class"}, "height": 240,
                              "margin": {"l": 50, "r": 10, "t": 40, "b": 60}}})
    return "<div class=chart id=chart-errors></div><div id=errors></div>"


# ---- the page -------------------------------------------------------------------------------------

def build(files: RunFiles, sample_size: int) -> str:
    """The page's HTML for the run folder ``files`` (its records and errors are read here, once)."""
    from recipe.report import folder, goodness

    problems = files.problems
    fits = goodness.Fits.of_run(files.info, problems)
    expected = sum(int(m.get("records") or 0) for m in files.manifests.values()) or None
    profiler = Profiler(sample_size, expected)
    for part in folder.parts(files.part_files, problems):
        if isinstance(part, list):
            for record in part:
                profiler.add(record)
            fits.add_records(part)
        else:
            profiler.add_table(part)
            fits.add_table(part)
    errors = ErrorGroups()
    for record in folder.records(files.error_files, problems):
        errors.add(record)
    stats = files.stats
    if stats is not None and isinstance(stats.get("records"), int) and stats["records"] != profiler.records:
        problems.append(f"stats.json counts {stats['records']} records, the part files hold {profiler.records}")
    sample, kept_chars, dropped = [], 0, 0
    for item in profiler.sample():
        size = len(json.dumps(item, ensure_ascii=False, default=str))
        if kept_chars + size > SAMPLE_CHARS:
            dropped += 1
            continue
        kept_chars += size
        sample.append(item)
    charts: list[dict] = []
    groups = errors.groups()
    rows = funnel(files, errors.total)
    profiles = profiler.profiles()
    fit_results = fits.results()
    goodness.note_losses(fit_results, rows)
    by_field = {r["column"]: r for r in fit_results}
    index: list[str] = []
    cards = "".join(_profile_card(p, index, charts, by_field) for p in profiles) or "<p>No records to profile.</p>"
    title, config = _masked_config(files)
    command = _command(files)
    clipped = sum(1 for item in sample if item["clipped"])
    browser_note = (f"{len(sample)} of {profiler.records} records"
                    + (f" (a deterministic sample; profiles above cover all {profiler.records})"
                       if len(sample) < profiler.records else "")
                    + (f"; {dropped} more sampled records left out to keep the page small" if dropped else "")
                    + (f"; values longer than {CLIP_CHARS} characters are clipped ({clipped} records)" if clipped else ""))
    data = {"sample": sample, "errors": groups, "charts": charts, "records": profiler.records,
            "declared": goodness.for_page(fit_results)}
    problems_html = ("<div id=problems class=problems><h2>What is missing</h2><ul>"
                     + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul></div>") if problems else ""
    script = resources.files("recipe.report").joinpath("browser.js").read_text(encoding="utf-8")
    style = resources.files("recipe.report").joinpath("page.css").read_text(encoding="utf-8")
    name = (files.info or {}).get("identity", {}).get("recipe", {}).get("name") if isinstance(
        (files.info or {}).get("identity", {}).get("recipe"), dict) else None
    heading = f"run report: {name or files.root}"
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>{_e(heading)}</title><style>{style}</style></head>
<body>
<h1>{_e(heading)}</h1>
<p class=sub>{_e(files.root)} · built {_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>
<nav><a href="#s-summary">summary</a> <a href="#s-funnel">funnel</a> <a href="#s-fields">fields</a>
<a href="#s-requests">requests</a> <a href="#s-records">records</a> <a href="#s-errors">errors</a></nav>
{problems_html}
<section id=s-summary><h2>Summary</h2>{_summary(stats)}
{f'<h3>command</h3><pre id=command>{_e(command)}</pre>' if command else ''}
<h3>attempts</h3>{_attempts_section(files)}
<details><summary>{_e(title)}</summary><pre id=config>{_e(config)}</pre></details></section>
<section id=s-funnel><h2>Funnel</h2>{_funnel_section(rows, stats, charts)}</section>
<section id=s-fields><h2>Fields</h2><p>{profiler.records} records profiled (every record).</p>{goodness.summary_table(fit_results)}<div class=fields>{cards}</div></section>
<section id=s-requests><h2>Requests</h2>{_requests_section(files, stats, charts)}</section>
<section id=s-records><h2>Records</h2><p id=rec-info>{_e(browser_note)}</p>
<div class=bar><input id=rec-search type=search placeholder="search the records shown here">
<button id=rec-prev>previous</button> <span id=rec-page></span> <button id=rec-next>next</button>
<button id=rec-all hidden>show all</button></div><p id=rec-note></p><div id=records></div></section>
<section id=s-errors><h2>Errors</h2><p>{errors.total} error records.</p>{_errors_section(groups, charts)}</section>
<script type="application/json" id=report-data>{_json_block(data)}</script>
<script>{_plotly_js()}</script>
<script>{script}</script>
</body></html>
"""
