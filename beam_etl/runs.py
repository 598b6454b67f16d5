"""Command line for the run ledger: ``python -m beam_etl.runs list|show``.

    python -m beam_etl.runs list [--pipeline P] [--limit N] [--json]   newest runs first
    python -m beam_etl.runs show RUN_ID [--json]                        one run in full

``--state URL`` picks the store (default ``./beam_etl_output/beam_etl_state.sqlite``, or under
``$BEAM_ETL_OUTPUT_DIR``: the one ``python -m beam_etl.run`` uses with its default ``--output-dir``,
as for ``python -m beam_etl.state``). A run whose template sets ``state.url`` is in that store.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from beam_etl.ops.ledger import RunLedger, RunRecord
from beam_etl.ops.logging import mask_secrets
from beam_etl.ops.state import StateError
from beam_etl.state import _default_url as default_state_url


def _status(record: RunRecord) -> str:
    """The status, noting a ``running`` run whose process on this host is gone (it crashed or was killed)."""
    if record.status != "running" or record.host != socket.gethostname():
        return record.status
    pid = record.environment.get("pid")
    try:
        import psutil

        alive = pid is None or psutil.pid_exists(int(pid))
    except ImportError:  # pragma: no cover - psutil is in requirements.txt
        alive = True
    return record.status if alive else "running (process gone)"


def _line(record: RunRecord) -> str:
    totals = record.totals or {}
    counts = (f"read {totals.get('records_read', 0):>9,} written {totals.get('records_written', 0):>9,} "
              f"dlq {totals.get('dead_letters', 0):>7,}") if totals else f"{'':>44}"
    seconds = f"{record.seconds:8.1f} s" if record.seconds is not None else f"{'':10}"
    return (f"{record.run_id:28} {record.pipeline:22} {_status(record):23} {record.started_at:20} {seconds} "
            f"{counts}  {record.user_name}@{record.host}")


def _show(record: RunRecord) -> str:
    env = record.environment
    rows = [f"run        {record.run_id}", f"pipeline   {record.pipeline}", f"status     {_status(record)}",
            f"template   {record.template} (sha256 {record.template_sha256[:16]}...)",
            f"runner     {record.runner}", f"who        {record.user_name}@{record.host} (pid {env.get('pid')})",
            f"tenant     {record.tenant or '-'}",
            f"versions   python {env.get('python')}, beam {env.get('beam')}, beam_etl {env.get('beam_etl')}",
            f"started    {record.started_at}", f"ended      {record.ended_at or '-'}",
            f"seconds    {record.seconds if record.seconds is not None else '-'}"]
    if record.error:
        rows.append(f"error      {record.error}")
    if record.totals:
        rows.append("totals     " + ", ".join(f"{k} {v:,}" for k, v in record.totals.items()))
    cost = record.cost or {}
    if cost:
        rss = cost.get("peak_rss_bytes", 0) / 2**20
        rows.append(f"cost       cpu {cost.get('cpu_seconds')} s, peak rss {rss:,.0f} MiB, "
                    f"read {cost.get('bytes_read', 0):,} B, written {cost.get('bytes_written', 0):,} B")
    if record.steps:
        rows.append("")
        sources = {s.get("name") for s in record.config.get("spec", {}).get("sources", [])}
        rows.append(f"{'step':24} {'in':>10} {'out':>10} {'filtered':>9} {'failed':>7} {'bytes in':>12}")
        for name, c in record.steps.items():
            records_in = c.get("records_in", 0)
            if name in sources:  # a source counts what it read: out + dead letters
                records_in = c.get("records_out", 0) + c.get("records_failed", 0)
            rows.append(f"{name:24} {records_in:>10,} {c.get('records_out', 0):>10,} "
                        f"{c.get('records_filtered', 0):>9,} {c.get('records_failed', 0):>7,} "
                        f"{c.get('bytes_in', 0):>12,}")
    rows.append("")
    rows.append("resolved config (secrets hidden):")
    rows.append(json.dumps(record.config, indent=2, default=str))
    return "\n".join(rows)


def _json(value: Any) -> str:
    return mask_secrets(json.dumps(value, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.runs``."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--state", default=argparse.SUPPRESS, metavar="URL",
                       help="state store holding the ledger (default: <output dir>/beam_etl_state.sqlite)")
    parser = argparse.ArgumentParser(prog="python -m beam_etl.runs", description=__doc__.splitlines()[0],
                                     parents=[store], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", parents=[store], help="recorded runs, newest first")
    listing.add_argument("--pipeline", default=None, help="only runs of this pipeline")
    listing.add_argument("--limit", type=int, default=20, help="at most N runs (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", parents=[store], help="one run in full")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    url = getattr(args, "state", None) or default_state_url()
    try:
        ledger = RunLedger(url)
        if args.command == "list":
            records = ledger.list(args.pipeline, max(0, args.limit))
            if args.json:
                print(_json([{**r.as_dict(), "status": _status(r)} for r in records]))
            elif not records:
                print(f"no runs recorded in {ledger!r}")
            else:
                for record in records:
                    print(mask_secrets(_line(record)))
        else:
            record = ledger.get(args.run_id)
            if record is None:
                print(f"no run {args.run_id!r} in {ledger!r}", file=sys.stderr)
                return 1
            print(_json({**record.as_dict(), "status": _status(record)}) if args.json else mask_secrets(_show(record)))
    except StateError as err:
        print(f"beam_etl.runs: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
