"""``python -m beam_etl.dlq``: list, inspect and replay dead letters.

    python -m beam_etl.dlq list [ROOT]
    python -m beam_etl.dlq show RUN_ID|PATH [--step S] [--error-type T] [--limit N] [--json]
    python -m beam_etl.dlq replay RUN_ID|PATH --template NAME|PATH [--into SOURCE] [--dry-run] [beam options]

A run writes its dead letters as JSONL envelopes under ``<output dir>/<run_id>/dlq/``
(see ``beam_etl.ops.dlq`` for the envelope). ``replay`` runs a template again with one of
its sources replaced by ``ReadFromDlq`` reading the selected records; the replay is a new
run, and its own dead letters carry ``attempt + 1``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from beam_etl.io.dlq_source import (
    envelope_attempt,
    envelope_matches,
    list_dlq_files,
    read_envelopes,
    replayable_record,
)
from beam_etl.ops.dlq import ERROR_TYPES
from beam_etl.ops.state import STATE_URL_ENV

DEFAULT_ROOT = "beam_etl_output"
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")
SUMMARY_FILE = "summary.json"
DLQ_FOLDER = "dlq"
MAX_DEPTH = 4
DEFAULT_SHOW_LIMIT = 20
RECORD_WIDTH = 240
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


@dataclasses.dataclass
class RunFolder:
    """One run's output folder and what it says about itself."""

    path: Path
    run_id: str
    pipeline: str
    status: str

    @property
    def dlq_dir(self) -> Path:
        return self.path / DLQ_FOLDER


@dataclasses.dataclass
class Selection:
    """Envelopes read from DLQ files, after the step / error_type filters."""

    envelopes: list[tuple[str, int, dict[str, Any]]] = dataclasses.field(default_factory=list)
    unreadable: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    read: int = 0  # envelopes read before filtering

    def by_step_and_type(self) -> collections.Counter[tuple[str, str]]:
        return _counts(e for _, _, e in self.envelopes)


def _counts(envelopes: Iterable[dict[str, Any]]) -> collections.Counter[tuple[str, str]]:
    """Dead letters counted by (step, error_type)."""
    return collections.Counter((str(e.get("step")), str(e.get("error_type"))) for e in envelopes)


def default_root() -> str:
    return os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_ROOT)


# --------------------------------------------------------------------------------------
# Finding runs and reading their dead letters
# --------------------------------------------------------------------------------------


def _read_summary(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_run_folder(folder: Path) -> bool:
    return (folder / SUMMARY_FILE).is_file() or (folder / DLQ_FOLDER).is_dir() or bool(RUN_ID_RE.match(folder.name))


def _describe_run(folder: Path) -> RunFolder:
    summary = _read_summary(folder)
    run_id, pipeline = summary.get("run_id"), summary.get("pipeline")
    if not (run_id and pipeline) and folder.joinpath(DLQ_FOLDER).is_dir():
        for path in list_dlq_files(str(folder / DLQ_FOLDER)):
            envelope = next((e for _, _, e, _ in read_envelopes(path) if e is not None), None)
            if envelope is not None:
                run_id = run_id or envelope.get("run_id")
                pipeline = pipeline or envelope.get("pipeline")
                break
    return RunFolder(folder, str(run_id or folder.name), str(pipeline or "?"), str(summary.get("status") or ""))


def find_runs(root: str | Path) -> list[RunFolder]:
    """Run folders under ``root`` (a folder with summary.json or dlq/, or named like a run id)."""
    root = Path(root)
    if not root.is_dir():
        raise CliError(f"{root}: no such folder; runs write to ./{DEFAULT_ROOT} unless --output-dir says otherwise")
    runs: list[RunFolder] = []
    if _is_run_folder(root):  # ROOT is itself one run's folder
        return [_describe_run(root)]
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if _is_run_folder(child):
                runs.append(_describe_run(child))
            elif depth + 1 < MAX_DEPTH:
                pending.append((child, depth + 1))
    return sorted(runs, key=lambda r: (r.run_id, str(r.path)))


def resolve_target(target: str, root: str) -> tuple[str, list[str], RunFolder | None]:
    """``RUN_ID|PATH`` -> (location to read, its DLQ files, the run folder when known)."""
    path = Path(target)
    if path.is_file():
        return str(path.resolve()), [str(path.resolve())], None
    if path.is_dir():
        run = _describe_run(path) if _is_run_folder(path) else None
        location = path / DLQ_FOLDER if (path / DLQ_FOLDER).is_dir() else path
        return str(location.resolve()), list_dlq_files(str(location.resolve())), run
    if any(ch in target for ch in "*?["):
        files = list_dlq_files(target)
        if not files:
            raise CliError(f"{target}: the glob matches no DLQ files")
        return target, files, None
    runs = find_runs(root) if Path(root).is_dir() else []
    matches = [r for r in runs if target in (r.run_id, r.path.name)]
    if not matches:
        matches = [r for r in runs if r.run_id.startswith(target) or r.path.name.startswith(target)]
    if not matches:
        recent = ", ".join(r.run_id for r in runs[-5:]) or "none"
        raise CliError(f"{target!r} is neither a file, a folder nor a run id under {root}/ (recent runs: {recent}); "
                       f"see `python -m beam_etl.dlq list {root}`")
    if len(matches) > 1:
        raise CliError(f"{target!r} matches several runs: {', '.join(r.run_id for r in matches)}; give more of it")
    run = matches[0]
    return str(run.dlq_dir.resolve()), list_dlq_files(str(run.dlq_dir)) if run.dlq_dir.is_dir() else [], run


def select(files: Iterable[str], step: str | None = None, error_type: str | None = None) -> Selection:
    """Reads the envelopes of ``files`` that pass the filters."""
    selection = Selection()
    for path in files:
        for number, _, envelope, problem in read_envelopes(path):
            if envelope is None:
                selection.unreadable.append((path, number, problem))
                continue
            selection.read += 1
            if envelope_matches(envelope, step, error_type):
                selection.envelopes.append((path, number, envelope))
    return selection


# --------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------


def _breakdown(counts: collections.Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{step}:{kind}={n}" for (step, kind), n in sorted(counts.items())) or "-"


def _filters(step: str | None, error_type: str | None) -> str:
    parts = ([f"step={step}"] if step else []) + ([f"error_type={error_type}"] if error_type else [])
    return f" (filters: {', '.join(parts)})" if parts else ""


def _short(value: Any, width: int | None) -> str:
    """One line of text: records as JSON (raw text shows quoted), shortened to ``width``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if width and len(text) > width:
        return text[: width - 3] + "..."
    return text


def _warn_unreadable(selection: Selection) -> None:
    if selection.unreadable:
        first = selection.unreadable[0]
        print(f"warning: {len(selection.unreadable)} lines are not DLQ envelopes and were left out "
              f"(first: {first[0]}:{first[1]}: {first[2]})", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    root = args.root or default_root()
    runs = find_runs(root)
    if not runs:
        print(f"no runs under {root}/")
        return EXIT_OK
    rows = [("RUN_ID", "PIPELINE", "STATUS", "DEAD_LETTERS", "BY STEP:ERROR_TYPE")]
    for run in runs:
        files = list_dlq_files(str(run.dlq_dir)) if run.dlq_dir.is_dir() else []
        selection = select(files)
        rows.append((run.run_id, run.pipeline, run.status or "-", str(len(selection.envelopes)),
                     _breakdown(selection.by_step_and_type())))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    location, files, run = resolve_target(args.target, args.root or default_root())
    selection = select(files, args.step, args.error_type)
    _warn_unreadable(selection)
    limit = args.limit if args.limit is not None else (0 if args.json else DEFAULT_SHOW_LIMIT)
    shown = selection.envelopes[:limit] if limit else selection.envelopes
    if args.json:
        for _, _, envelope in shown:
            print(json.dumps(envelope, ensure_ascii=False, default=str))
        return EXIT_OK
    title = f"run {run.run_id} (pipeline {run.pipeline})" if run else location
    total = len(selection.envelopes)
    print(f"{title}: {total} dead letters{_filters(args.step, args.error_type)} in {len(files)} file(s)")
    if total:
        print(f"by step:error_type: {_breakdown(selection.by_step_and_type())}")
    width = None if args.full else RECORD_WIDTH
    for i, (path, number, e) in enumerate(shown, start=1):
        print()
        print(f"[{i}] {e.get('step')} | {e.get('error_type')} | attempt {e.get('attempt')} | {e.get('failed_at')}")
        print(f"    source:  {e.get('source') or '-'}")
        exception = f"{e.get('exception')}: " if e.get("exception") else ""
        error = exception + str(e.get("error"))
        print(f"    error:   {error if width is None or len(error) <= width else error[: width - 3] + '...'}")
        print(f"    record:  {_short(e.get('record'), width)}")
        print(f"    at:      {path}:{number}")
    if len(shown) < total:
        print(f"\nshowing {len(shown)} of {total}; --limit 0 shows all, --json prints JSONL")
    return EXIT_OK


def _template_sources(template: str) -> tuple[Path, list[tuple[str, str]]]:
    from beam_etl.spec import TemplateError, load_document, resolve_template_path

    try:
        path = resolve_template_path(template)
        doc = load_document(path)
    except TemplateError as err:
        raise CliError(str(err)) from err
    sources = [(str(s.get("name")), str(s.get("type"))) for s in doc.get("sources") or [] if isinstance(s, dict)]
    if not sources:
        raise CliError(f"{path}: the template has no sources to replace")
    return path, sources


def _source_schema(template: str, into: str) -> dict[str, str] | None:
    """The ``schema`` the replaced source declares, so replayed records are typed the same way."""
    from beam_etl.spec import load_document, resolve_template_path

    for source in load_document(resolve_template_path(template)).get("sources") or []:
        if isinstance(source, dict) and source.get("name") == into:
            schema = (source.get("config") or {}).get("schema")
            return dict(schema) if isinstance(schema, dict) else None
    return None


def cmd_replay(args: argparse.Namespace, beam_args: list[str]) -> int:
    location, files, run = resolve_target(args.target, args.root or default_root())
    template_path, sources = _template_sources(args.template)
    names = [name for name, _ in sources]
    into = args.into or names[0]
    if into not in names:
        raise CliError(f"--into {into!r}: the template has no such source; sources: {names}")
    for item in args.set:
        if "=" not in item:
            raise CliError(f"--set {item!r}: expected dotted.key=value")

    selection = select(files, args.step, args.error_type)
    _warn_unreadable(selection)
    replay = [e for _, _, e in selection.envelopes if replayable_record(e)]
    skipped = [e for _, _, e in selection.envelopes if not replayable_record(e)]
    attempts = collections.Counter(envelope_attempt(e) for e in replay)
    replaced_type = dict(sources)[into]

    print(f"replay from:   {run.run_id + ' (' + location + ')' if run else location} - {len(files)} file(s)")
    print(f"template:      {template_path}")
    print(f"into source:   {into} ({replaced_type} -> ReadFromDlq)")
    print(f"selected:      {len(selection.envelopes)} of {selection.read} dead letters"
          f"{_filters(args.step, args.error_type)}")
    print(f"replayable:    {len(replay)} records ({_breakdown(_counts(replay))})")
    if attempts:
        print("attempts:      " + ", ".join(f"{n} at attempt {a} -> {a + 1}" for a, n in sorted(attempts.items())))
    if skipped:
        print(f"skipped:       {len(skipped)} dead letters whose record is not a JSON object "
              f"({_breakdown(_counts(skipped))})\n"
              "               raw text from parse failures cannot be replayed as-is; edit the record into "
              "an object in the JSONL file to include it")
    if args.set:
        print(f"overrides:     {' '.join(args.set)}")
    if beam_args:
        print(f"beam options:  {' '.join(beam_args)}")
    if args.dry_run:
        print("dry run: no pipeline was run")
        return EXIT_OK
    if not replay:
        print("nothing to replay", file=sys.stderr)
        return EXIT_OK

    from beam_etl.run import run_template  # ReadFromDlq is registered by the import at the top

    config: dict[str, Any] = {"path": location, "bump_attempt": True}
    if args.step:
        config["step"] = args.step
    if args.error_type:
        config["error_type"] = args.error_type
    schema = _source_schema(args.template, into)
    if schema:
        config["schema"] = schema
    override = (into, {"type": "ReadFromDlq", "config": config})
    return run_template(str(template_path), list(args.set), beam_args, override, output_dir=args.output_dir,
                        run_id=args.run_id, quiet=args.quiet, state_url=args.state)


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------

EPILOG = """\
examples:
  python -m beam_etl.dlq list
  python -m beam_etl.dlq show 20261127T101500Z-3fa2c1 --step clean --limit 5
  python -m beam_etl.dlq show beam_etl_output/20261127T101500Z-3fa2c1/dlq --error-type constraint --json | jq .record
  python -m beam_etl.dlq replay 20261127T101500Z-3fa2c1 --template orders --error-type validation --dry-run
  python -m beam_etl.dlq replay 20261127T101500Z-3fa2c1 --template orders --set steps.clean.config.strict=false

RUN_ID may be a unique prefix of a run id under --root; PATH may be a run folder, its dlq/ folder,
one JSONL file or a glob. Error types: """ + ", ".join(ERROR_TYPES) + "."


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--step", help="only dead letters of this step")
    parser.add_argument("--error-type", choices=ERROR_TYPES, metavar="T",
                        help=f"only this error type ({', '.join(ERROR_TYPES)})")
    parser.add_argument("--root", help=f"folder holding the runs (default: $BEAM_ETL_OUTPUT_DIR or ./{DEFAULT_ROOT})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_etl.dlq",
        description="List, inspect and replay the dead letters of beam_etl runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_list = commands.add_parser("list", help="one line per run: run id, pipeline, dead letters by step and type",
                                 description="One line per run folder: run id, pipeline, status and the number "
                                             "of dead letters by step:error_type.")
    p_list.add_argument("root", nargs="?", metavar="ROOT",
                        help=f"folder holding the runs (default: $BEAM_ETL_OUTPUT_DIR or ./{DEFAULT_ROOT})")

    p_show = commands.add_parser("show", help="print the dead letters of a run, a folder or a file",
                                 description="Print dead-letter envelopes: step, error type, attempt, source, "
                                             "error and the record.")
    p_show.add_argument("target", metavar="RUN_ID|PATH", help="a run id (or unique prefix), run folder, "
                                                                "dlq/ folder, JSONL file or glob")
    _add_filters(p_show)
    p_show.add_argument("--limit", type=int, metavar="N",
                        help=f"show at most N (default {DEFAULT_SHOW_LIMIT}, all with --json; 0 = all)")
    p_show.add_argument("--json", action="store_true", help="print the envelopes as JSONL")
    p_show.add_argument("--full", action="store_true", help="do not shorten long records and errors")

    p_replay = commands.add_parser(
        "replay", help="run a template again on the records of dead letters",
        description="Run a template with one source replaced by ReadFromDlq, reading the selected dead "
                    "letters' records. Records that are not JSON objects (raw text of parse failures) are "
                    "skipped and counted. The replay is a new run; its dead letters carry attempt + 1. "
                    "Options not listed here go to Beam (e.g. --runner=DirectRunner).")
    p_replay.add_argument("target", metavar="RUN_ID|PATH", help="a run id, run folder, dlq/ folder, JSONL file or glob")
    p_replay.add_argument("--template", required=True, metavar="NAME|PATH", help="the template to run")
    p_replay.add_argument("--into", metavar="SOURCE_NAME",
                          help="the source to replace with the dead letters (default: the template's first)")
    _add_filters(p_replay)
    p_replay.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="template override, as for python -m beam_etl.run (repeatable)")
    p_replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; run nothing")
    p_replay.add_argument("--output-dir", default=None,
                          help="folder for the replay run's <run_id>/ (default: as for python -m beam_etl.run)")
    p_replay.add_argument("--run-id", default=None, help="the replay run's id (default: a new one)")
    p_replay.add_argument("--state", default=os.environ.get(STATE_URL_ENV) or None, metavar="URL",
                          help="state store for the run ledger and incremental state, as for python -m beam_etl.run "
                               f"(default: ${STATE_URL_ENV})")
    p_replay.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.dlq``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "replay":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "show":
            if args.limit is not None and args.limit < 0:
                raise CliError(f"--limit {args.limit}: expected 0 (all) or more")
            return cmd_show(args)
        return cmd_replay(args, extra)
    except CliError as err:
        print(f"beam_etl.dlq: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `| head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
