"""What the API serves about one run, read from its folder: counters, dead letters, lineage, logs.

Callers pass a run folder they already checked belongs to the caller's tenant.
"""

from __future__ import annotations

import collections
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beam_etl.io.dlq_source import list_dlq_files, read_envelopes
from beam_etl.ops.secrets import REDACTED, redact

COUNTER_FAMILIES = ("records_in", "records_out", "records_filtered", "records_failed")
SAMPLE_RE = re.compile(r'^beam_etl_(records_(?:in|out|filtered|failed))_total\{([^}]*)\}\s+(\S+)$')
ELAPSED_RE = re.compile(r"^beam_etl_run_elapsed_seconds\{[^}]*\}\s+(\S+)$", re.MULTILINE)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
SCRAPE_TIMEOUT_S = 1.0
MAX_LOG_TAIL = 5000


def parse_counters(text: str) -> dict[str, dict[str, float]]:
    """``{step: {records_in, records_out, records_filtered, records_failed}}`` from Prometheus text."""
    steps: dict[str, dict[str, float]] = collections.defaultdict(lambda: dict.fromkeys(COUNTER_FAMILIES, 0))
    for line in text.splitlines():
        match = SAMPLE_RE.match(line.strip())
        if match:
            labels = dict(LABEL_RE.findall(match.group(2)))
            if "step" in labels:
                steps[labels["step"]][match.group(1)] += float(match.group(3))
    return {step: {k: int(v) for k, v in counts.items()} for step, counts in sorted(steps.items())}


def scrape(port: int) -> str | None:
    """The run's live ``/metrics`` text, or None when it does not answer (not up yet, or done)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
            return response.read().decode("utf-8", "replace")
    except OSError:
        return None


def counters(run_dir: Path, metrics_port: int | None, active: bool) -> dict[str, Any]:
    """Per-step counters: live from the run's endpoint while it runs, else from summary.json / metrics.prom."""
    if active and metrics_port:
        text = scrape(metrics_port)
        if text is not None:
            elapsed = ELAPSED_RE.search(text)
            return {"live": True, "elapsed_s": float(elapsed.group(1)) if elapsed else None,
                    "steps": parse_counters(text), "totals": {}}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        steps = {name: {k: int(counts.get(k, 0)) for k in COUNTER_FAMILIES}
                 for name, counts in (summary.get("steps") or {}).items()}
        return {"live": False, "elapsed_s": summary.get("seconds"), "steps": steps, "totals": summary.get("totals")}
    return {"live": False, "elapsed_s": None, "steps": {}, "totals": {}}


def _dlq_envelopes(run_dir: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    if not (run_dir / "dlq").is_dir():
        return
    for path in list_dlq_files(str(run_dir)):
        for line, _text, envelope, _problem in read_envelopes(path):
            if envelope is not None:
                yield str(Path(path).relative_to(run_dir)), line, envelope


def dead_letters(run_dir: Path, step: str | None, error_type: str | None, limit: int, offset: int) -> dict[str, Any]:
    """A page of the run's DLQ envelopes (filtered), their total, and counts by step and error type."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    page: list[dict[str, Any]] = []
    total = 0
    for file, line, envelope in _dlq_envelopes(run_dir):
        key = (str(envelope.get("step")), str(envelope.get("error_type")))
        counts[key] += 1
        if (step and key[0] != step) or (error_type and key[1] != error_type):
            continue
        if offset <= total < offset + limit:
            page.append({"file": file, "line": line, "envelope": envelope})
        total += 1
    return {"total": total, "records": page,
            "by_step_and_type": [{"step": s, "error_type": t, "count": n} for (s, t), n in sorted(counts.items())]}


def lineage_graph(run_dir: Path) -> dict[str, Any]:
    """Datasets and the job between them, from the run's OpenLineage events (lineage.jsonl)."""
    path = run_dir / "lineage.jsonl"
    nodes: dict[str, dict[str, str]] = {}
    edges: set[tuple[str, str]] = set()
    events = 0
    if path.is_file():
        for text in path.read_text(encoding="utf-8").splitlines():
            if not text.strip():
                continue
            events += 1
            event = json.loads(text)
            job = event.get("job") or {}
            job_id = f"job:{job.get('namespace', '')}/{job.get('name', '')}"
            nodes[job_id] = {"id": job_id, "kind": "step", "name": str(job.get("name", ""))}
            for side in ("inputs", "outputs"):
                for dataset in event.get(side) or []:
                    ds_id = f"dataset:{dataset.get('namespace', '')}/{dataset.get('name', '')}"
                    nodes[ds_id] = {"id": ds_id, "kind": "dataset", "name": str(dataset.get("name", ""))}
                    edges.add((ds_id, job_id) if side == "inputs" else (job_id, ds_id))
    return {"nodes": list(nodes.values()), "edges": [{"from": a, "to": b} for a, b in sorted(edges)],
            "events": events}


def log_tail(log_path: Path, tail: int, secret_values: list[str]) -> str:
    """The last ``tail`` lines of a run's log, with the tenant's secret values (and registered ones) redacted."""
    if not log_path.is_file():
        return ""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    text = redact("\n".join(lines[-min(tail, MAX_LOG_TAIL):]))
    for value in sorted(filter(None, secret_values), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text + "\n"
