"""``python -m beam_etl.api``: serve the REST API, or manage tenants and keys in its state store.

    python -m beam_etl.api [--host 127.0.0.1] [--port 8080] [--output-dir DIR] [--state URL]
    python -m beam_etl.api tenants create NAME [--max-concurrent-runs N] [--max-rows-per-day N]
    python -m beam_etl.api tenants list | set-quota NAME [--max-concurrent-runs N] [--max-rows-per-day N]
    python -m beam_etl.api keys create --tenant NAME --role admin|operator|viewer [--label TEXT]
    python -m beam_etl.api keys list --tenant NAME | revoke --tenant NAME KEY_ID

Tenant and key commands take the same ``--output-dir`` / ``--state`` as the server and print one
JSON document; a new key's secret appears only there (store it in a secret manager).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from beam_etl.api import auth
from beam_etl.api.store import ApiStore
from beam_etl.ops.state import STATE_FILE_NAME

ADMIN_COMMANDS = ("tenants", "keys")
UNLIMITED = -1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=os.environ.get("BEAM_ETL_OUTPUT_DIR", "beam_etl_output"),
                        help="where runs write their folders (default: %(default)s)")
    parser.add_argument("--state", default=os.environ.get("BEAM_ETL_API_STATE"), metavar="URL",
                        help="state store for the API tables and the run ledger "
                             "(default: $BEAM_ETL_API_STATE or <output dir>/beam_etl_state.sqlite)")


def _quota_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-concurrent-runs", type=int, default=None, metavar="N",
                        help=f"runs going at once (default: unlimited; {UNLIMITED} clears)")
    parser.add_argument("--max-rows-per-day", type=int, default=None, metavar="N",
                        help=f"records read per UTC day, checked when a run starts ({UNLIMITED} clears)")


def _admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_etl.api", description="Manage API tenants and keys.")
    groups = parser.add_subparsers(dest="group", required=True)
    tenants = groups.add_parser("tenants", help="tenants").add_subparsers(dest="command", required=True)
    create = tenants.add_parser("create", help="create a tenant and its first admin key")
    create.add_argument("name")
    _quota_flags(create)
    _common(create)
    _common(tenants.add_parser("list", help="list tenants with their quotas"))
    quota = tenants.add_parser("set-quota", help="change a tenant's quotas")
    quota.add_argument("name")
    _quota_flags(quota)
    _common(quota)
    keys = groups.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)
    make = keys.add_parser("create", help="make a key for a tenant")
    make.add_argument("--tenant", required=True)
    make.add_argument("--role", required=True, choices=auth.ROLES)
    make.add_argument("--label", default=None)
    _common(make)
    listing = keys.add_parser("list", help="a tenant's keys (never the secrets)")
    listing.add_argument("--tenant", required=True)
    _common(listing)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.add_argument("--tenant", required=True)
    _common(revoke)
    return parser


def _store(args: argparse.Namespace) -> ApiStore:
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return ApiStore(args.state or str(root / STATE_FILE_NAME))


def _quota_value(value: int | None) -> int | None:
    return None if value is None or value == UNLIMITED else value


def _make_key(store: ApiStore, tenant: dict[str, Any], role: str, label: str | None) -> dict[str, Any]:
    made = auth.new_key()
    store.add_key(made.key_id, tenant["id"], role, made.salt, made.digest, label)
    return {"tenant_id": tenant["id"], "name": tenant["name"], "key_id": made.key_id, "api_key": made.api_key,
            "role": role}


def admin_main(argv: list[str]) -> int:
    """The tenants / keys commands; prints JSON; exit 2 on a usage problem."""
    args = _admin_parser().parse_args(argv)
    store = _store(args)

    def tenant_or_exit(name: str) -> dict[str, Any]:
        tenant = store.tenant(name=name)
        if tenant is None:
            known = [t["name"] for t in store.tenants()]
            print(f"beam_etl.api: error: no tenant {name!r}; known: {known}", file=sys.stderr)
            raise SystemExit(2)
        return tenant

    if args.group == "tenants" and args.command == "create":
        if store.tenant(name=args.name):
            print(f"beam_etl.api: error: tenant {args.name!r} exists", file=sys.stderr)
            return 2
        tenant = store.add_tenant(args.name, {}, _quota_value(args.max_concurrent_runs),
                                  _quota_value(args.max_rows_per_day))
        out: Any = _make_key(store, tenant, "admin", "created with the tenant")
    elif args.group == "tenants" and args.command == "list":
        out = store.tenants()
    elif args.group == "tenants":
        tenant = tenant_or_exit(args.name)
        changes = {k: _quota_value(v) for k, v in (("max_concurrent_runs", args.max_concurrent_runs),
                                                   ("max_rows_per_day", args.max_rows_per_day)) if v is not None}
        if changes:
            store.update_tenant(tenant["id"], **changes)
        out = store.tenant(tenant["id"])
    elif args.command == "create":
        out = _make_key(store, tenant_or_exit(args.tenant), args.role, args.label)
    elif args.command == "list":
        out = store.keys(tenant_or_exit(args.tenant)["id"])
    else:
        if not store.revoke_key(tenant_or_exit(args.tenant)["id"], args.key_id):
            print(f"beam_etl.api: error: tenant {args.tenant!r} has no active key {args.key_id!r}", file=sys.stderr)
            return 2
        out = {"revoked": args.key_id}
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serves the API (uvicorn) until interrupted, or runs a tenants / keys command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ADMIN_COMMANDS:
        return admin_main(argv)
    parser = argparse.ArgumentParser(prog="python -m beam_etl.api",
                                     description="The beam_etl REST API and dashboard (docs/api.md). "
                                                 "Tenants and keys: python -m beam_etl.api tenants|keys --help.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--allow-template-paths", action="store_true",
                        help="accept YAML paths as templates (trusted single-team setups only)")
    _common(parser)
    args = parser.parse_args(argv)

    import uvicorn

    from beam_etl.api.app import create_app

    app = create_app(args.output_dir, args.state, allow_template_paths=args.allow_template_paths)
    if not app.state.store.tenants():
        print("beam_etl.api: no tenants yet: create one with "
              f"python -m beam_etl.api tenants create NAME --output-dir {args.output_dir}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
