"""``python -m beam_etl.api [--host 127.0.0.1] [--port 8080] [--output-dir DIR] [--state URL]``: serve the REST API."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parses the flags and runs uvicorn until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m beam_etl.api", description="The beam_etl REST API (docs/api.md).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--output-dir", default=os.environ.get("BEAM_ETL_OUTPUT_DIR", "beam_etl_output"),
                        help="where runs write their folders (default: %(default)s)")
    parser.add_argument("--state", default=None, metavar="URL",
                        help="state store for the API tables and the run ledger "
                             "(default: <output dir>/beam_etl_state.sqlite)")
    args = parser.parse_args(argv)

    import uvicorn

    from beam_etl.api.app import create_app

    uvicorn.run(create_app(args.output_dir, args.state), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
