"""Command line for the schema registry: ``python -m beam_etl.schema_cli list|show|diff|register``.

    python -m beam_etl.schema_cli list [PIPELINE]                     latest version of every table
    python -m beam_etl.schema_cli list PIPELINE TABLE                 every version of one table
    python -m beam_etl.schema_cli show PIPELINE TABLE [--version N]   one version as JSON (default latest)
    python -m beam_etl.schema_cli diff PIPELINE TABLE [OLD [NEW]]     OLD/NEW: a version number, latest, or a
                                                                      schema file (.json/.yaml/.parquet);
                                                                      default: the previous version vs latest
    python -m beam_etl.schema_cli register PIPELINE TABLE FILE        register a schema file (a new version
                                                                      unless it equals the latest)

``--state URL`` picks the store (default ``./beam_etl_output/beam_etl_state.sqlite``, the one
``python -m beam_etl.run`` uses with its default ``--output-dir``). ``--json`` prints diffs as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import pyarrow as pa

from beam_etl.ops.schema_registry import SchemaRegistry, SchemaVersion, diff, load_schema
from beam_etl.ops.state import STATE_FILE_NAME, StateError
from beam_etl.run import DEFAULT_OUTPUT_DIR


def _default_url() -> str:
    return os.path.join(os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR), STATE_FILE_NAME)


def _line(v: SchemaVersion) -> str:
    return (f"{v.pipeline:24} {v.table:20} v{v.version:<4} {len(v.schema)} column(s)  {v.hash[:12]}  "
            f"{v.created_at}  {v.run_id}")


class _Missing(LookupError):
    pass


def _resolve(reg: SchemaRegistry, pipeline: str, table: str, ref: str) -> tuple[str, pa.Schema]:
    """A version number, ``latest`` or a schema file -> (label, schema)."""
    if ref == "latest" or ref.isdigit():
        saved = reg.get(pipeline, table, None if ref == "latest" else int(ref))
        if saved is None:
            raise _Missing(f"no version {ref} of {pipeline}/{table} in {reg.location}")
        return f"v{saved.version}", saved.schema
    return ref, load_schema(ref, "schema file")


def _diff(reg: SchemaRegistry, args: argparse.Namespace) -> int:
    if args.old is None:
        versions = reg.versions(args.pipeline, args.table)
        if len(versions) < 2:
            print(f"{args.pipeline}/{args.table} has {len(versions)} version(s) in {reg.location}: nothing to diff",
                  file=sys.stderr)
            return 1
        refs = [str(versions[-2].version), str(versions[-1].version)]
    else:
        refs = [args.old, args.new or "latest"]
    (old_label, old), (new_label, new) = (_resolve(reg, args.pipeline, args.table, r) for r in refs)
    result = diff(old, new, rename_threshold=args.rename_threshold)
    if args.json:
        print(json.dumps({"old": old_label, "new": new_label, **result.to_dict()}, indent=2))
    else:
        print(f"{args.pipeline}/{args.table}: {old_label} -> {new_label}")
        print(result.render())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_etl.schema_cli", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--state", default=None, metavar="URL", help="state store (default: <output dir>/"
                                                                     f"{STATE_FILE_NAME})")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="latest version of every table, or every version of one")
    listing.add_argument("pipeline", nargs="?")
    listing.add_argument("table", nargs="?")
    show = sub.add_parser("show", help="one version as JSON")
    show.add_argument("pipeline")
    show.add_argument("table")
    show.add_argument("--version", default="latest", type=lambda v: v if v == "latest" else int(v),
                      help="version number or latest (default)")
    changes = sub.add_parser("diff", help="what changed between two versions (or a schema file)")
    changes.add_argument("pipeline")
    changes.add_argument("table")
    changes.add_argument("old", nargs="?", help="version, latest or schema file (default: the previous version)")
    changes.add_argument("new", nargs="?", help="version, latest or schema file (default: latest)")
    changes.add_argument("--json", action="store_true", help="print the diff as JSON")
    changes.add_argument("--rename-threshold", type=float, default=0.8, help="name similarity for rename candidates")
    register = sub.add_parser("register", help="register a schema file (.json, .yaml or .parquet)")
    register.add_argument("pipeline")
    register.add_argument("table")
    register.add_argument("file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        reg = SchemaRegistry(args.state or _default_url())
        if args.command == "list":
            found = (reg.versions(args.pipeline, args.table) if args.table else reg.tables(args.pipeline))
            if not found:
                print(f"no schemas in {reg.location}")
            for version in found:
                print(_line(version))
        elif args.command == "show":
            saved = reg.get(args.pipeline, args.table, args.version)
            if saved is None:
                raise _Missing(f"no version {args.version} of {args.pipeline}/{args.table} in {reg.location}")
            print(json.dumps(saved.to_dict(), indent=2))
        elif args.command == "diff":
            return _diff(reg, args)
        else:
            schema = load_schema(args.file, "schema file")
            saved = reg.register(args.pipeline, args.table, schema, run_id="cli")
            what = "registered as" if saved.created else "unchanged: already"
            print(f"{args.pipeline}/{args.table}: {what} version {saved.version} ({len(saved.schema)} column(s))")
    except _Missing as err:
        print(f"beam_etl.schema_cli: {err}", file=sys.stderr)
        return 1
    except (StateError, ValueError, OSError) as err:
        print(f"beam_etl.schema_cli: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
