"""The HTML run report: ``python -m beam_etl.ops.report RUN_DIR`` (or ``beam_etl.run --report``).

Reads what a run left in its folder, never the pipeline: ``summary.json`` (per-step counts),
the DLQ JSON Lines files (counts by error type and step), ``*quality*.json`` (QualityScorer),
Parquet outputs with anomaly columns (flagged count, top reasons; only those columns are read),
and any ``*schema*.json`` (shown generically as a field table). Writes one self-contained
``report.html``: inline CSS, charts as base64 PNG ``data:`` URIs (matplotlib, Agg), no scripts.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import html
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORT_NAME = "report.html"
MAX_DLQ_LINES = 200_000
MAX_SCHEMA_FILES = 10
_SKIP_PARTS = ("beam-temp", ".beam_etl-tmp")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem;
margin-top:2rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#656d76}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.cards{display:flex;gap:.8rem;flex-wrap:wrap;margin:1rem 0}.card{border:1px solid #d0d7de;border-radius:6px;
padding:.5rem .9rem;min-width:8rem}.card b{display:block;font-size:1.3rem}
img.chart{max-width:100%;border:1px solid #eaeef2;border-radius:4px;margin:.4rem 0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:24rem}
"""


# ------------------------------------------------------------------ small HTML helpers

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e("" if value is None else value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return _e(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers are right-aligned and grouped."""
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{_num(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
                        else f"<td>{_e(v) if v is not None else ''}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


# ------------------------------------------------------------------ charts

def _matplotlib() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str = "records",
              color: str = "#0969da") -> str:
    """A horizontal bar chart as an ``<img>`` with a base64 PNG data URI ('' without matplotlib or data)."""
    figure = _matplotlib()
    if figure is None or not labels:
        return ""
    fig = figure(figsize=(7.5, 0.38 * len(labels) + 1.1), dpi=100)
    ax = fig.subplots()
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, values, color=color)
    ax.set_yticks(positions, [str(x)[:40] for x in labels], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    for y, v in zip(positions, values, strict=True):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=7)
    fig.tight_layout()
    return _png(fig, title)


def histogram_chart(edges: Sequence[float], counts: Sequence[float], title: str, xlabel: str) -> str:
    """A histogram from bin edges and counts, as an ``<img>`` data URI ('' without matplotlib)."""
    figure = _matplotlib()
    if figure is None or not counts:
        return ""
    fig = figure(figsize=(7.5, 2.6), dpi=100)
    ax = fig.subplots()
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#8250df", edgecolor="white")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("records", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig, title)


def _png(fig: Any, title: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="chart" alt="{_e(title)}" src="data:image/png;base64,{data}">'


# ------------------------------------------------------------------ reading the run folder

def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json; raises FileNotFoundError naming the folder."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no summary.json: not a beam_etl run folder (or the run never started)")
    return json.loads(path.read_text(encoding="utf-8"))


def _visible(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(p.startswith((".", "_")) or p.startswith(_SKIP_PARTS) for p in parts)


def step_types(summary: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{step: (section, type)} from the template the run used, in template order ({} if unreadable)."""
    try:
        import yaml

        doc = yaml.safe_load(Path(summary.get("template", "")).read_text(encoding="utf-8"))
        types = {t["name"]: (section[:-1], t["type"]) for section in ("sources", "steps", "sinks")
                 for t in doc.get(section) or [] if isinstance(t, dict) and "name" in t}
        types["__dlq__"] = ("dlq", str((doc.get("dlq") or {}).get("type", "WriteToJsonl")))
        return types
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError):
        return {}


def dlq_breakdown(run_dir: Path, limit: int = MAX_DLQ_LINES) -> dict[str, Any] | None:
    """Counts of the run's dead letters (JSONL under the run folder) by error type, step and message."""
    files = sorted(p for p in run_dir.rglob("*.jsonl")
                   if _visible(p, run_dir) and "dlq" in p.relative_to(run_dir).parts)
    if not files:
        return None
    by_type: collections.Counter[str] = collections.Counter()
    by_step: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[tuple[str, str, str]] = collections.Counter()
    read = total = 0
    for path in files:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                total += 1
                if read >= limit:
                    continue
                try:
                    letter = json.loads(line)
                except ValueError:
                    continue
                read += 1
                kind, step = str(letter.get("error_type", "?")), str(letter.get("step", "?"))
                by_type[kind] += 1
                by_step[step] += 1
                messages[(kind, step, str(letter.get("error", ""))[:200])] += 1
    return {"files": [str(p.relative_to(run_dir)) for p in files], "total": total, "read": read,
            "by_type": by_type, "by_step": by_step, "messages": messages}


def find_json(run_dir: Path, pattern: str) -> list[Path]:
    found = sorted(p for p in run_dir.rglob(pattern) if p.is_file() and _visible(p, run_dir))
    return found[:MAX_SCHEMA_FILES]


def _output_name(path: Path) -> str:
    """``orders-00000-of-00002.parquet`` -> ``orders``: shards of one output belong together."""
    return re.sub(r"-\d+-of-\d+$", "", path.stem)


def anomaly_summary(run_dir: Path) -> list[dict[str, Any]]:
    """Per Parquet output with an ``is_anomaly`` column: rows, flagged, top reasons, scores."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    groups: dict[str, list[Path]] = collections.defaultdict(list)
    for path in sorted(run_dir.rglob("*.parquet")):
        if _visible(path, run_dir):
            groups[str(path.parent.relative_to(run_dir) / _output_name(path))].append(path)
    out = []
    for name, paths in groups.items():
        try:
            names = pq.read_schema(paths[0]).names
        except (OSError, ValueError):
            continue
        if "is_anomaly" not in names:
            continue
        cols = [c for c in ("is_anomaly", "anomaly_reasons", "anomaly_score") if c in names]
        item: dict[str, Any] = {"output": name.removeprefix("./"), "files": len(paths), "rows": 0, "flagged": 0,
                                "reasons": collections.Counter(), "scores": []}
        for path in paths:
            t = pq.read_table(path, columns=cols)
            flags = pc.fill_null(t.column("is_anomaly"), False)
            item["rows"] += t.num_rows
            item["flagged"] += int(pc.sum(pc.cast(flags, "int64")).as_py() or 0)
            if "anomaly_reasons" in cols:
                reasons = pc.list_flatten(t.filter(flags).column("anomaly_reasons")).to_pylist()
                item["reasons"].update(str(r) for r in reasons if r)
            if "anomaly_score" in cols:
                item["scores"].append(t.column("anomaly_score"))
        if item["rows"]:
            out.append(item)
    return out


# ------------------------------------------------------------------ sections

def _header(summary: dict[str, Any]) -> str:
    status = str(summary.get("status", "?"))
    totals = summary.get("totals") or {}
    cards = [("status", f'<span class="{"ok" if status == "succeeded" else "bad"}">{_e(status)}</span>'),
             ("records read", _num(totals.get("records_read"))), ("written", _num(totals.get("records_written"))),
             ("filtered", _num(totals.get("records_filtered"))), ("dead letters", _num(totals.get("dead_letters"))),
             ("seconds", _num(summary.get("seconds")))]
    seconds, read = summary.get("seconds"), totals.get("records_read")
    if seconds and read:
        cards.append(("records/s", _num(round(read / seconds))))
    facts = table([], [("pipeline", summary.get("pipeline")), ("run id", summary.get("run_id")),
                             ("runner", summary.get("runner")), ("started (UTC)", summary.get("started_at")),
                             ("template", summary.get("template")),
                             ("overrides", " ".join(summary.get("overrides") or []) or "—"),
                             ("run folder", summary.get("run_dir"))])
    error = f'<p class="bad">Error: {_e(summary["error"])}</p>' if summary.get("error") else ""
    return ('<div class="cards">' + "".join(f'<div class="card"><span class="muted">{_e(k)}</span><b>{v}</b></div>'
                                           for k, v in cards) + "</div>" + error + facts)


def steps_section(summary: dict[str, Any]) -> str:
    steps: dict[str, dict[str, int]] = summary.get("steps") or {}
    if not steps:
        return "<p class='muted'>No step counts in summary.json (the run failed before it finished).</p>"
    types = step_types(summary)
    order = [n for n in types if n in steps] + [n for n in steps if n not in types]
    rows, labels, outs = [], [], []
    for name in order:
        c = steps[name]
        section, kind = types.get(name, ("", ""))
        records_in = c.get("records_out", 0) + c.get("records_failed", 0) if section == "source" \
            else c.get("records_in", 0)
        label = "(dead-letter sink)" if name == "__dlq__" else name
        rows.append((label, section, kind, records_in, c.get("records_out", 0), c.get("records_filtered", 0),
                     c.get("records_grouped", 0), c.get("records_failed", 0), c.get("batches_in", 0),
                     c.get("bytes_in", 0)))
        labels.append(label)
        outs.append(c.get("records_out", 0))
    return (table(["step", "kind", "type", "in", "out", "filtered", "grouped", "dlq", "batches", "bytes in"], rows)
            + bar_chart(labels, outs, "Records out per step"))


def dlq_section(run_dir: Path, summary: dict[str, Any]) -> str:
    found = dlq_breakdown(run_dir)
    steps = summary.get("steps") or {}
    failed = {n: c.get("records_failed", 0) for n, c in steps.items() if c.get("records_failed")}
    if found is None:
        if not failed:
            return "<p>No dead letters.</p>"
        return ("<p class='muted'>The DLQ sink wrote outside the run folder; counts from the run summary:</p>"
                + table(["step", "dead letters"], sorted(failed.items(), key=lambda kv: -kv[1]))
                + bar_chart(list(failed), list(failed.values()), "Dead letters per step", color="#cf222e"))
    if not found["total"]:
        return "<p>No dead letters.</p>"
    note = "" if found["read"] == found["total"] else \
        f"<p class='muted'>Breakdown of the first {found['read']:,} of {found['total']:,} dead letters.</p>"
    by_type = found["by_type"].most_common()
    messages = [(k, s, m, n) for (k, s, m), n in found["messages"].most_common(15)]
    return (f"<p>{found['total']:,} dead letters in {len(found['files'])} file(s) under "
            f"<code>{_e(', '.join(found['files'][:3]))}</code>.</p>" + note
            + "<h3>By error type</h3>" + table(["error type", "dead letters"], by_type)
            + bar_chart([k for k, _ in by_type], [v for _, v in by_type], "Dead letters by error type",
                        color="#cf222e")
            + "<h3>By step</h3>" + table(["step", "dead letters"], found["by_step"].most_common())
            + "<h3>Most frequent errors</h3>" + table(["error type", "step", "error", "count"], messages))


def quality_section(run_dir: Path) -> str:
    parts = []
    for path in find_json(run_dir, "*quality*.json"):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict):
            continue
        fields = report.get("fields") or {}
        rows = [(name, f.get("null_count"), _pct(f.get("null_rate")), f.get("invalid_count"),
                 _pct(f.get("invalid_rate"))) for name, f in fields.items() if isinstance(f, dict)]
        hist = report.get("score_histogram") or {}
        chart = ""
        if isinstance(hist, dict) and hist.get("bins") and hist.get("counts"):
            chart = histogram_chart(hist["bins"], hist["counts"], "Quality score distribution", "quality score")
        mean = report.get("mean_score")
        parts.append(f"<h3><code>{_e(path.relative_to(run_dir))}</code></h3>"
                     f"<p>{_num(report.get('records'))} records scored; mean score "
                     f"<b>{_num(mean) if mean is not None else '—'}</b>.</p>"
                     + chart + table(["field", "nulls", "null rate", "invalid", "invalid rate"], rows))
    return "".join(parts)


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else ""


def anomaly_section(run_dir: Path) -> str:
    parts = []
    for item in anomaly_summary(run_dir):
        rate = item["flagged"] / item["rows"] if item["rows"] else 0.0
        top = item["reasons"].most_common(10)
        chart = ""
        if item["scores"]:
            import numpy as np
            import pyarrow as pa

            values = pa.chunked_array([c for col in item["scores"] for c in col.chunks]).drop_null().to_numpy()
            if len(values):
                counts, edges = np.histogram(values, bins=20, range=(0.0, max(1.0, float(values.max()))))
                chart = histogram_chart(edges.tolist(), counts.tolist(), f"Anomaly scores: {item['output']}",
                                        "anomaly score")
        parts.append(f"<h3>Output <code>{_e(item['output'])}</code></h3>"
                     f"<p>{item['flagged']:,} of {item['rows']:,} records flagged ({rate:.2%}).</p>"
                     + (table(["reason", "flagged records"], top) if top else "")
                     + (bar_chart([k for k, _ in top], [v for _, v in top], "Top anomaly reasons", color="#bf8700")
                        if top else "") + chart)
    return "".join(parts)


def schema_table(doc: Any) -> str:
    """Any schema-like JSON as a table: ``fields`` (list or mapping), JSON Schema ``properties``, else JSON."""
    fields: list[tuple[str, dict[str, Any]]] = []
    if isinstance(doc, dict):
        raw = doc.get("fields", doc.get("columns", doc.get("properties")))
        if isinstance(raw, list):
            fields = [(str(f.get("name", i)), f) for i, f in enumerate(raw) if isinstance(f, dict)]
        elif isinstance(raw, dict):
            fields = [(str(k), v if isinstance(v, dict) else {"type": v}) for k, v in raw.items()]
    if not fields:
        return f"<pre>{_e(json.dumps(doc, indent=2, default=str)[:5000])}</pre>"
    keys: list[str] = []
    for _, attrs in fields:
        keys += [k for k in attrs if k != "name" and k not in keys]

    def cell(value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, default=str, separators=(", ", ": "))[:200]
        return value

    rows = [(name, *(cell(attrs.get(k)) for k in keys)) for name, attrs in fields]
    extra = {k: v for k, v in doc.items() if k not in ("fields", "columns", "properties")} \
        if isinstance(doc, dict) else {}
    meta = table(["attribute", "value"], [(k, cell(v)) for k, v in extra.items()]) if extra else ""
    return table(["field", *keys], rows) + meta


def _looks_like_schema(doc: Any) -> bool:
    fields = doc.get("fields") if isinstance(doc, dict) else None
    return isinstance(fields, list) and bool(fields) and all(isinstance(f, dict) and "name" in f for f in fields)


def schema_files(run_dir: Path) -> list[tuple[Path, Any]]:
    """``*schema*.json`` in the run folder, plus other JSON files shaped like ``{"fields": [{"name": ...}]}``
    (an InferSchema ``output_path`` can be named anything); at most ``MAX_SCHEMA_FILES``."""
    found = []
    for path in sorted(p for p in run_dir.rglob("*.json") if p.is_file() and _visible(p, run_dir)):
        if path.name == "summary.json" or "quality" in path.name or path.stat().st_size > 5_000_000:
            continue
        named = "schema" in path.name.lower()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if named or _looks_like_schema(doc):
            found.append((path, doc))
        if len(found) >= MAX_SCHEMA_FILES:
            break
    return found


def schema_section(run_dir: Path) -> str:
    return "".join(f"<h3><code>{_e(path.relative_to(run_dir))}</code></h3>" + schema_table(doc)
                   for path, doc in schema_files(run_dir))


# ------------------------------------------------------------------ the report

def build_report(run_dir: Path | str) -> str:
    """The report's HTML for a run folder (raises FileNotFoundError without a summary.json)."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    sections = [("Steps", steps_section(summary), "steps"), ("Dead letters", dlq_section(run_dir, summary), "dlq")]
    for title, body, anchor in (("Data quality", quality_section(run_dir), "quality"),
                                ("Anomalies", anomaly_section(run_dir), "anomalies"),
                                ("Schemas", schema_section(run_dir), "schemas")):
        if body:
            sections.append((title, body, anchor))
    charts = "" if _matplotlib() else "<p class='muted'>matplotlib is not installed: charts left out.</p>"
    nav = " · ".join(f'<a href="#{a}">{_e(t)}</a>' for t, _, a in sections)
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"beam_etl run {summary.get('run_id', run_dir.name)} — {summary.get('pipeline', '')}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class='muted'>{nav}</p>{charts}{_header(summary)}"
            + "".join(_section(t, b, a) for t, b, a in sections)
            + f"<p class='muted'>Generated {made} by beam_etl.ops.report from the files in the run folder.</p>"
            "</body></html>\n")


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Writes the report (default ``<run_dir>/report.html``); returns its path."""
    run_dir = Path(run_dir)
    target = Path(out) if out else run_dir / REPORT_NAME
    target.write_text(build_report(run_dir), encoding="utf-8")
    return target


def report_after_run(run_dir: Path) -> Path | None:
    """For ``beam_etl.run --report``: writes the report, or says why not; never raises."""
    try:
        path = write_report(run_dir)
    except FileNotFoundError as err:
        print(f"beam_etl: no report: {err}", file=sys.stderr)
        return None
    except Exception as err:  # noqa: BLE001 - the run's own outcome must not change because of its report
        print(f"beam_etl: the report could not be written ({type(err).__name__}: {err})", file=sys.stderr)
        return None
    print(f"report: {path}", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.ops.report RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m beam_etl.ops.report",
                                     description="(Re)build the HTML report of a finished run.")
    parser.add_argument("run_dir", help="the run folder (<output-dir>/<run_id>), or a run id under --output-dir")
    parser.add_argument("--output-dir", default=None, help="where run ids are looked up (default beam_etl_output)")
    parser.add_argument("--out", default=None, help="report file (default <run_dir>/report.html)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        import os

        candidate = Path(args.output_dir or os.environ.get("BEAM_ETL_OUTPUT_DIR", "beam_etl_output")) / args.run_dir
        run_dir = candidate if candidate.is_dir() else run_dir
    if not run_dir.is_dir():
        print(f"beam_etl.ops.report: {args.run_dir} is not a run folder (nor a run id under the output folder)",
              file=sys.stderr)
        return 2
    try:
        path = write_report(run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"beam_etl.ops.report: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
