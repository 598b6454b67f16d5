"""Command line for column-level lineage: ``python -m beam_etl.lineage impact|upstream|show|runs``.

    python -m beam_etl.lineage impact DATASET[.COLUMN]     every dataset and column downstream
    python -m beam_etl.lineage upstream DATASET[.COLUMN]   every dataset and column it comes from
    python -m beam_etl.lineage show RUN_ID                 one run: inputs, outputs, column lineage
    python -m beam_etl.lineage runs                        the recorded runs

A dataset is written as ``show`` prints it (``file:///abs/path``, ``sqlite:///abs/db.sqlite/table``,
``postgres://host:5432/db.public.table``), as its name, as a file path, or as the unambiguous end of
a name (``orders``). Walks go across recorded runs: a sink of one run read as the source of another
(same namespace and name, or a path/glob that takes in the files the sink wrote) continues the chain.
``--store PATH`` picks the store (default ``$BEAM_ETL_LINEAGE_STORE``, else
``<output dir>/beam_etl_lineage.sqlite``, the one ``python -m beam_etl.run`` writes by default).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from beam_etl.ops.lineage import Hit, LineageStore, default_store_path, display_name, run_uuid


def _rows(value: Any) -> str:
    return f"{value:,} rows" if isinstance(value, int) else "rows unknown"


def _transforms(item: dict[str, Any]) -> str:
    parts = [" ".join(str(t[k]) for k in ("type", "subtype", "description") if t.get(k))
             for t in item.get("transformations") or []]
    return "; ".join(parts)


def _source(item: dict[str, Any], aliases: dict[tuple[str, str], str]) -> str:
    where = aliases.get((item["namespace"], item["name"])) or display_name(item["namespace"], item["name"])
    return f"{where}.{item['field']} ({_transforms(item)})"


def format_walk(hits: list[Hit], start: str, column: str | None, downstream: bool) -> str:
    """Hits grouped by dataset, nearest first."""
    what = "impact of" if downstream else "upstream of"
    head = f"{what} {start}" + (f" column {column}" if column else " (every column)")
    if not hits:
        return head + ": nothing recorded" + (" downstream" if downstream else " upstream")
    datasets: dict[tuple[str, str], list[Hit]] = {}
    for hit in hits:
        datasets.setdefault((hit.namespace, hit.name), []).append(hit)
    runs = {r for h in hits for r in h.runs}
    lines = [f"{head}: {len(hits)} column(s) in {len(datasets)} dataset(s), across {len(runs)} run(s)",
             "(PATH: DIRECT when every hop on the way is DIRECT; EDGES: the kinds of edges that reach the column)",
             "", f"  {'COLUMN':28} {'PATH':9} EDGES"]
    for number, ((namespace, name), found) in enumerate(datasets.items()):
        jobs = ", ".join(sorted({j for h in found for j in h.jobs}))
        depth = min(h.depth for h in found)
        if number:
            lines.append("")
        lines.append(f"{display_name(namespace, name)}   ({jobs}; {depth} hop{'s' if depth > 1 else ''})")
        for hit in sorted(found, key=lambda h: (h.field is None, h.relation != "DIRECT", h.field or "")):
            label = hit.field if hit.field is not None else "* (every row)"
            lines.append(f"  {label:28} {hit.relation:9} {', '.join(sorted(hit.subtypes))}")
    return "\n".join(lines)


def format_event(event: dict[str, Any]) -> str:
    """A run event as text: the run, its inputs and outputs, each output column's sources."""
    facet = event["run"].get("facets", {}).get("beam_etl_run", {})
    lines = [f"run {facet.get('runId', '?')}  (OpenLineage runId {event['run']['runId']})",
             f"pipeline {event['job']['name']}  {event['eventType']} at {event['eventTime']}"]
    if facet.get("template"):
        lines.append(f"template {facet['template']}")
    error = event["run"].get("facets", {}).get("errorMessage", {}).get("message")
    if error:
        lines.append(f"error {error}")
    lines.append("inputs")
    aliases: dict[tuple[str, str], str] = {}
    for number, ds in enumerate(event.get("inputs") or [], 1):
        aliases[(ds["namespace"], ds["name"])] = f"#{number}"
        stats = (ds.get("inputFacets") or {}).get("inputStatistics", {})
        origin = ds.get("facets", {}).get("beam_etl_dataset", {}).get("schemaOrigin", "")
        lines.append(f"  #{number} {display_name(ds['namespace'], ds['name'])}  {_rows(stats.get('rowCount'))}"
                     + (f"  [schema: {origin}]" if origin else ""))
        fields = ds.get("facets", {}).get("schema", {}).get("fields", [])
        lines.append("    " + (", ".join(f"{f['name']} {f.get('type', '?')}" for f in fields) or "(no columns known)"))
    lines.append("outputs")
    for ds in event.get("outputs") or []:
        stats = (ds.get("outputFacets") or {}).get("outputStatistics", {})
        lines.append(f"  {display_name(ds['namespace'], ds['name'])}  {_rows(stats.get('rowCount'))}")
        types = {f["name"]: f.get("type", "?") for f in ds.get("facets", {}).get("schema", {}).get("fields", [])}
        lineage = ds.get("facets", {}).get("columnLineage", {})
        unsourced = []
        for name, spec in lineage.get("fields", {}).items():
            sources = [_source(i, aliases) for i in spec.get("inputFields", [])]
            if sources:
                lines.append(f"    {name} {types.get(name, '?')} <- " + ", ".join(sources))
            else:
                unsourced.append(name)
        if unsourced:
            lines.append(f"    from no input column: {', '.join(unsourced)}")
        every_row = [_source(i, aliases) for i in lineage.get("dataset") or []]
        if every_row:
            lines.append("    * (every row) <- " + ", ".join(every_row))
    return "\n".join(lines)


def _load_event(store: LineageStore, run: str) -> dict[str, Any] | None:
    path = Path(run)
    if path.is_dir():
        path = path / "lineage.jsonl"
    if path.is_file():  # a run folder or its lineage.jsonl: the last event there
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    return store.event(run) or store.event(run_uuid(run))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, metavar="PATH",
                        help="lineage store (default: $BEAM_ETL_LINEAGE_STORE or "
                             "<output dir>/beam_etl_lineage.sqlite)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = argparse.ArgumentParser(prog="python -m beam_etl.lineage", description=__doc__.splitlines()[0],
                                     parents=[common], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("impact", "every dataset and column downstream of DATASET[.COLUMN]"),
                       ("upstream", "every dataset and column DATASET[.COLUMN] comes from")):
        walk = sub.add_parser(name, help=text, parents=[common])
        walk.add_argument("target", metavar="DATASET[.COLUMN]")
        walk.add_argument("--direct", action="store_true", help="follow DIRECT edges only (no filters, groupings)")
    show = sub.add_parser("show", help="one run's inputs, outputs and column lineage", parents=[common])
    show.add_argument("run", metavar="RUN_ID", help="beam_etl run id, OpenLineage runId, or a run folder")
    sub.add_parser("runs", help="the recorded runs", parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.lineage``."""
    args = _parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    store = LineageStore(getattr(args, "store", None) or default_store_path())
    try:
        if args.command == "runs":
            runs = store.runs()
            if as_json:
                print(json.dumps(runs, indent=2))
            for run in [] if as_json else runs:
                print(f"{run['run_id']:28} {run['job']:24} {run['status']:9} {run['event_time']}  {run['template']}")
            return 0
        if args.command == "show":
            event = _load_event(store, args.run)
            if event is None:
                print(f"beam_etl.lineage: no run {args.run!r} in {store}", file=sys.stderr)
                return 1
            print(json.dumps(event, indent=2) if as_json else format_event(event))
            return 0
        refs, column = store.resolve(args.target)
        if not refs:
            print(f"beam_etl.lineage: no dataset {args.target!r} in {store}; known datasets:\n  "
                  + "\n  ".join(d.display for d in store.datasets()), file=sys.stderr)
            return 1
        if len(refs) > 1:
            print(f"beam_etl.lineage: {args.target!r} names several datasets; write one in full:\n  "
                  + "\n  ".join(d.display for d in refs), file=sys.stderr)
            return 2
        downstream = args.command == "impact"
        hits = store.walk(refs, column, downstream=downstream, direct_only=args.direct)
        if as_json:
            print(json.dumps({"datasets": [r.display for r in refs], "column": column,
                              "direction": "downstream" if downstream else "upstream",
                              "hits": [h.as_dict() for h in hits]}, indent=2))
        else:
            print(format_walk(hits, refs[0].display, column, downstream))
        return 0
    except (FileNotFoundError, sqlite3.Error) as err:
        print(f"beam_etl.lineage: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
