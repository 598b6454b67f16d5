"""Reads everything a run wrote into comparable, order-insensitive snapshots.

A snapshot maps each *logical output* (a file path with its shard numbers removed, or
``<database>.sqlite:<table>``) to its rows, run-specific values (run id, failure timestamps)
removed, sorted by a canonical JSON form with floats cut to 6 significant digits. Two runs
of the same template on different runners must give the same rows, floats equal to a relative
1e-9 (a sum or mean combined in another order differs in its last bits).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

RUN_SPECIFIC_KEYS = frozenset({"run_id", "failed_at"})
# run bookkeeping that differs by runner and time, not pipeline output
SKIPPED_FILES = frozenset({"summary.json", "lineage.jsonl", "metrics.prom", "report.html"})
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def logical_name(relative: str) -> str:
    """``orders-00000-of-00002.parquet`` -> ``orders.parquet``; folders are kept."""
    return _SHARD_RE.sub("", relative)


REL_TOLERANCE = 1e-9


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if k not in RUN_SPECIFIC_KEYS}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        try:  # JSON stored in a string column (the DLQ's record field): normalise inside too
            return json.dumps(_normalise(json.loads(value)), sort_keys=True)
        except ValueError:
            return value
    return value


def _coarse(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _coarse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coarse(v) for v in value]
    return value


def _sort_key(row: Any) -> tuple[str, str]:
    return (json.dumps(_coarse(row), sort_keys=True, default=str), json.dumps(row, sort_keys=True, default=str))


def close(a: Any, b: Any) -> bool:
    """Equal, with floats equal to a relative REL_TOLERANCE."""
    if isinstance(a, float) and isinstance(b, float | int) or isinstance(b, float) and isinstance(a, int):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _text(path: Path) -> str:
    opener = _OPENERS.get(path.suffix)
    if opener is None:
        return path.read_text(encoding="utf-8")
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix in _OPENERS else path.suffix


def read_rows(path: Path) -> dict[str, list[Any]]:
    """Rows of one output file, keyed by its logical sub-output (one per SQLite table)."""
    kind = _base_suffix(path)
    if kind == ".parquet":
        return {"": pq.read_table(path).to_pylist()}
    if kind == ".sqlite":
        with sqlite3.connect(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            out = {}
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [c[0] for c in cursor.description]
                out[f":{table}"] = [dict(zip(columns, r, strict=True)) for r in cursor]
            return out
    text = _text(path)
    if kind == ".jsonl":
        return {"": [json.loads(line) for line in text.splitlines() if line.strip()]}
    if kind == ".json":
        doc = json.loads(text)
        return {"": doc if isinstance(doc, list) else [doc]}
    if kind == ".csv":
        return {"": list(csv.DictReader(io.StringIO(text)))}
    return {"": [line for line in text.splitlines() if line]}


def snapshot(run_dir: Path) -> dict[str, list[Any]]:
    """Logical output -> its normalised rows in canonical order, for every file the run wrote."""
    grouped: dict[str, list[Any]] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir).as_posix()
        if path.name in SKIPPED_FILES or path.name.startswith(".") or relative.startswith("_state/"):
            continue  # _state/: incremental bookkeeping (file mtimes), not output
        for sub, rows in read_rows(path).items():
            grouped.setdefault(logical_name(relative) + sub, []).extend(_normalise(r) for r in rows)
    return {name: sorted(rows, key=_sort_key) for name, rows in grouped.items()}


def differences(expected: dict[str, list[Any]], actual: dict[str, list[Any]], limit: int = 5) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: missing ({len(expected[name])} rows expected)")
            continue
        if name not in expected:
            problems.append(f"{name}: unexpected output ({len(actual[name])} rows)")
            continue
        want, got = expected[name], actual[name]
        if not close(want, got):
            pairs = list(zip(want, got, strict=False))
            only_want = [w for w, g in pairs if not close(w, g)][:limit] + want[len(got):][:limit]
            only_got = [g for w, g in pairs if not close(w, g)][:limit] + got[len(want):][:limit]
            problems.append(f"{name}: {len(want)} rows expected, {len(got)} written; "
                            f"missing e.g. {only_want}; unexpected e.g. {only_got}")
    return problems
