"""Command line for incremental-load state: ``python -m beam_etl.state list|show|reset``.

    python -m beam_etl.state list [PIPELINE]                 every saved cursor / file set
    python -m beam_etl.state show PIPELINE SOURCE            one, in full (JSON)
    python -m beam_etl.state reset PIPELINE [SOURCE]         forget it: the next run starts over

``--state URL`` picks the store (default ``./beam_etl_output/beam_etl_state.sqlite``, the one
``python -m beam_etl.run`` uses with its default ``--output-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from beam_etl.ops.state import STATE_FILE_NAME, SavedState, StateError, encode_value, open_store
from beam_etl.run import DEFAULT_OUTPUT_DIR


def _default_url() -> str:
    return os.path.join(os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR), STATE_FILE_NAME)


def _line(state: SavedState) -> str:
    shown = f"{len(state.value or [])} file(s) read" if state.kind == "new_files" else repr(state.value)
    return f"{state.pipeline:24} {state.source:20} {state.kind:10} {shown:32} run {state.run_id} at {state.updated_at}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_etl.state", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--state", default=None, metavar="URL", help="state store (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every saved cursor")
    listing.add_argument("pipeline", nargs="?")
    show = sub.add_parser("show", help="one saved state as JSON")
    show.add_argument("pipeline")
    show.add_argument("source")
    reset = sub.add_parser("reset", help="forget saved state: the next run reads from the start")
    reset.add_argument("pipeline")
    reset.add_argument("source", nargs="?")
    args = parser.parse_args(argv)
    url = args.state or _default_url()
    try:
        store = open_store(url)
        if args.command == "list":
            states = store.list(args.pipeline)
            if not states:
                print(f"no saved state in {store!r}")
            for state in states:
                print(_line(state))
        elif args.command == "show":
            state = store.get(args.pipeline, args.source)
            if state is None:
                print(f"no saved state for {args.pipeline}/{args.source} in {store!r}", file=sys.stderr)
                return 1
            print(json.dumps({"pipeline": state.pipeline, "source": state.source, "kind": state.kind,
                              "value": encode_value(state.value), "run_id": state.run_id,
                              "updated_at": state.updated_at}, indent=2))
        else:
            removed = store.delete(args.pipeline, args.source)
            what = f"{args.pipeline}/{args.source}" if args.source else f"every source of {args.pipeline}"
            print(f"reset {what}: {removed} saved state(s) removed from {store!r}")
    except StateError as err:
        print(f"beam_etl.state: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
