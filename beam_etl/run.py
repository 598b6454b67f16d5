"""Command line: ``python -m beam_etl.run [--template NAME|PATH] [--set k=v] [beam options]``.

With no template it runs the bundled quickstart on the sample data shipped in the package.
Every flag this parser does not know passes through to Beam as a pipeline option.
"""

from __future__ import annotations

from beam_etl import _startup

_IMPORTING = _startup.begin_imports(__name__)  # the collector pauses while a CLI run imports (_startup.py)

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_etl import pruning
from beam_etl.build import DLQ_STEP, build_pipeline, describe_graph
from beam_etl.ops import ledger as run_ledger
from beam_etl.ops import progress, prometheus
from beam_etl.ops.context import RunContext, new_run_id, use_run_context
from beam_etl.ops.lineage import LineageRecorder, default_store_path
from beam_etl.ops.logging import LOG_FORMATS, tap_dead_letters
from beam_etl.ops.logging import configure as configure_logging
from beam_etl.ops.logging import set_run as set_log_run
from beam_etl.ops.logging import settings as log_settings
from beam_etl.ops.metrics import COUNTERS, summarise
from beam_etl.ops.schema_registry import commit_pending_schemas, describe_schema_change
from beam_etl.ops.secrets import redact
from beam_etl.ops.state import STATE_FILE_NAME, STATE_URL_ENV, StateError, commit_pending, describe_change
from beam_etl.runners import PreflightError, capability_table, preflight
from beam_etl.runners.services import runner_services
from beam_etl.spec import (
    PipelineSpec,
    TemplateError,
    build_spec,
    contract_step_name,
    list_templates,
    load_document,
    resolve_template_path,
)

_startup.end_imports(_IMPORTING)

DEFAULT_TEMPLATE = "quickstart"
DEFAULT_OUTPUT_DIR = "beam_etl_output"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BUDGET = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_etl.run",
        description=(
            "Run a beam_etl pipeline template. With no --template it runs the bundled quickstart on "
            "sample data shipped in the package. Every option not listed here passes through to Beam "
            "as a pipeline option (e.g. --runner=DirectRunner, --direct_num_workers=2)."
        ),
        epilog="Examples:\n"
        "  python -m beam_etl.run --runner=DirectRunner\n"
        "  python -m beam_etl.run --template csv_to_parquet --set params.input=in.csv\n"
        "  python -m beam_etl.run --template templates/quickstart.yaml --validate\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --runner must reach Beam, not match one of ours by prefix
    )
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="template name in templates/ or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="DOTTED.KEY=VALUE",
                        help="override a template value, e.g. params.input=in.csv or "
                             "sources.orders.config.delimiter=';' (repeatable)")
    parser.add_argument("--list-templates", action="store_true", help="list the bundled templates and exit")
    parser.add_argument("--validate", action="store_true",
                        help="check the template and print the graph without running it")
    parser.add_argument("--output-dir", default=os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR),
                        help="folder for run outputs; each run writes <output-dir>/<run_id>/ (default: %(default)s)")
    parser.add_argument("--run-id", default=None, help="use this run id instead of a generated one")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary line")
    parser.add_argument("--full-refresh", action="store_true",
                        help="incremental sources read everything again; their saved cursors are replaced on success")
    parser.add_argument("--state", default=os.environ.get(STATE_URL_ENV) or None, metavar="URL",
                        help="state store for incremental cursors: a SQLite path or postgresql://... (default: "
                             f"${STATE_URL_ENV}, else the template's state.url, else "
                             "<output-dir>/beam_etl_state.sqlite); a URL with a password is better given in "
                             f"${STATE_URL_ENV}, where other users' `ps` cannot see it")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="submit without the runner preflight (features, job server, workers; docs/runners.md)")
    parser.add_argument("--list-runners", action="store_true",
                        help="print which features each runner supports and exit")
    parser.add_argument("--log-level", default="WARNING", help="Python log level for Beam's own logs")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text, or json: one JSON object per line with run_id, pipeline, step, tenant "
                             "(docs/observability.md)")
    parser.add_argument("--tenant", default=None,
                        help="tenant named on every log line and in the run ledger (default: $BEAM_ETL_TENANT)")
    parser.add_argument("--log-payload-sample", type=int, default=0, metavar="N",
                        help="log the records of up to N dead letters per step (default 0: records are never logged)")
    parser.add_argument("--tuned", nargs="?", const="", default=None, metavar="FILE",
                        help="apply the options `python -m beam_etl.tune` recommended (default file: "
                             "<output-dir>/tuned/<template>.json); command-line options win (docs/tuning.md)")
    parser.add_argument("--report", action="store_true",
                        help="write <run_dir>/report.html: step counts, DLQ, quality, anomalies (docs/report.md)")
    parser.add_argument("--lineage-url", default=os.environ.get("OPENLINEAGE_URL"), metavar="URL",
                        help="also POST OpenLineage events to URL/api/v1/lineage (default: $OPENLINEAGE_URL); "
                             "they always go to <run_dir>/lineage.jsonl (docs/observability.md#lineage)")
    prometheus.add_arguments(parser)  # --metrics-port, --metrics-host, --pushgateway (docs/observability.md)
    return parser


def _template_title(path: Path) -> str:
    try:
        doc = load_document(path)
    except TemplateError:
        return "(invalid YAML)"
    return str(doc.get("description", "")).strip().splitlines()[0] if doc.get("description") else ""


def print_templates() -> None:
    """Prints the bundled templates with their one-line descriptions."""
    for path in list_templates():
        print(f"{path.stem:28} {_template_title(path)}")


def _beam_args(spec: PipelineSpec, beam_args: list[str]) -> list[str]:
    """Command-line Beam options, then the template's ``options:`` for keys not given, then the default runner."""
    args = list(beam_args)
    given = {a.split("=", 1)[0].lstrip("-") for a in args if a.startswith("--")}
    for key, value in spec.options.items():
        if key not in given:
            args.append(f"--{key}={value}")
    if "runner" not in given and "runner" not in spec.options:
        args.append("--runner=DirectRunner")
    return args


def _step_types(spec: PipelineSpec) -> dict[str, tuple[str, str]]:
    types: dict[str, tuple[str, str]] = {}
    for section, _, t in spec.transforms():
        if t.contract is not None:  # a sink's contract runs as a step just before it
            types[contract_step_name(t.name)] = ("steps", "EnforceContract")
        types[t.name] = (section, t.type)
    types[DLQ_STEP] = ("sinks", spec.dlq.type)
    return types


def compute_totals(spec: PipelineSpec, steps: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Run totals from per-step counters: read, written, filtered, dead letters."""
    kinds = _step_types(spec)
    zero = dict.fromkeys(COUNTERS, 0)
    read = written = filtered = failed = 0
    for name, (section, _) in kinds.items():
        counts = steps.get(name, zero)
        if name == DLQ_STEP:
            continue
        failed += counts["records_failed"]
        filtered += counts["records_filtered"]
        if section == "sources":
            read += counts["records_out"] + counts["records_failed"]
        elif section == "sinks":
            written += counts["records_out"]
    return {"records_read": read, "records_written": written, "records_filtered": filtered,
            "dead_letters": failed, "dead_letters_stored": steps.get(DLQ_STEP, zero)["records_out"]}


def check_budget(spec: PipelineSpec, totals: dict[str, Any]) -> str | None:
    """Returns a loud message when the error budget is exceeded, else None."""
    budget = spec.error_budget
    failed, read = totals["dead_letters"], totals["records_read"]
    if budget.max_count is not None and failed > budget.max_count:
        return f"error budget exceeded: {failed:,} dead letters > max_count {budget.max_count:,}"
    if budget.max_fraction is not None and read and failed / read > budget.max_fraction:
        return (f"error budget exceeded: {failed:,} of {read:,} records ({failed / read:.1%}) went to the DLQ, "
                f"above max_fraction {budget.max_fraction:.1%}")
    return None


def format_summary(spec: PipelineSpec, steps: dict[str, dict[str, int]], totals: dict[str, Any],
                   run: RunContext, runner: str, seconds: float) -> str:
    """A readable per-step table and the run totals."""
    kinds = _step_types(spec)
    rows = [f"{'step':22} {'type':22} {'in':>10} {'out':>10} {'filtered':>9} {'dlq':>7}"]
    for name, (section, type_name) in kinds.items():
        c = steps.get(name)
        if c is None:
            continue
        records_in = c["records_out"] + c["records_failed"] if section == "sources" else c["records_in"]
        label = "(dead-letter sink)" if name == DLQ_STEP else name
        filtered = f"{c['records_filtered']:,}" if not c.get("records_grouped") else "(groups)"
        rows.append(f"{label:22} {type_name:22} {records_in:>10,} {c['records_out']:>10,} "
                    f"{filtered:>9} {c['records_failed']:>7,}")
    share = totals["dead_letters"] / totals["records_read"] if totals["records_read"] else 0.0
    rows.append("")
    rows.append(f"records read {totals['records_read']:,} | written {totals['records_written']:,} | "
                f"filtered {totals['records_filtered']:,} | dead letters {totals['dead_letters']:,} ({share:.1%})")
    rows.append(f"pipeline {spec.name} | run {run.run_id} | runner {runner} | took {seconds:.1f} s")
    rows.append(f"outputs in {run.run_dir}")
    return "\n".join(rows)


def _load(template: str, overrides: list[str], run: RunContext,
          source_override: tuple[str, dict[str, Any]] | None) -> tuple[PipelineSpec, dict[str, Any], Path]:
    path = resolve_template_path(template)
    doc = load_document(path)
    if source_override is not None:
        name, replacement = source_override
        sources = doc.get("sources") or []
        if not any(isinstance(s, dict) and s.get("name") == name for s in sources):
            names = [s.get("name") for s in sources if isinstance(s, dict)]
            raise TemplateError(f"source {name!r} is not in the template; sources: {names}")
        doc["sources"] = [{**s, **replacement, "name": name} if s.get("name") == name else s for s in sources]
    run_vars = {"run_dir": run.run_dir, "run_id": run.run_id}
    spec, configs = build_spec(doc, overrides, run_vars)
    return spec, configs, path


def run_template(template: str, overrides: list[str] | None = None, beam_args: list[str] | None = None,
                 source_override: tuple[str, dict[str, Any]] | None = None, output_dir: str | None = None,
                 run_id: str | None = None, validate_only: bool = False, quiet: bool = False,
                 check_runner: bool = True, full_refresh: bool = False, state_url: str | None = None,
                 metrics: prometheus.ExportOptions | None = None, lineage_url: str | None = None) -> int:
    """Loads, validates, preflights and runs a template; returns the process exit code."""
    run_id = run_id or new_run_id()
    set_log_run(run_id, None)  # log lines name the run (ops/logging.py)
    root = Path(output_dir or os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR))
    run_dir = (root / run_id).resolve()
    try:
        provisional = RunContext(pipeline="?", run_id=run_id, run_dir=str(run_dir))
        spec, configs, path = _load(template, overrides or [], provisional, source_override)
    except TemplateError as err:
        print(f"beam_etl: {redact(str(err))}", file=sys.stderr)
        return EXIT_CONFIG
    state = state_url or spec.state.url or str(root.resolve() / STATE_FILE_NAME)
    run = RunContext(pipeline=spec.name, run_id=run_id, run_dir=str(run_dir), state_url=state,
                     full_refresh=full_refresh, log_format=log_settings().fmt, tenant=log_settings().tenant)
    set_log_run(run_id, spec.name)
    args = _beam_args(spec, beam_args or [])
    report = None
    if check_runner:
        try:
            report = preflight(spec, configs, args)
        except PreflightError as err:
            print(f"beam_etl: {redact(str(err))}", file=sys.stderr)
            return EXIT_CONFIG
        args += report.added_args
    if validate_only:
        print(f"template {path} is valid: pipeline {spec.name!r}")
        print("\n".join(describe_graph(spec, pruning.source_columns(spec, configs))))
        if report is not None:
            print(report.describe())
        return EXIT_OK
    runner = report.runner if report is not None else PipelineOptions(args).get_all_options().get("runner")
    runner = runner or "DirectRunner"
    progress.reset()
    progress.set_enabled(not quiet)
    if not quiet:
        print(f"beam_etl: running {spec.name!r} ({path.name}) on {runner}, run {run_id}", file=sys.stderr)
        if report is not None and report.notes:
            print(redact(report.describe()), file=sys.stderr)
    started = time.perf_counter()
    summary: dict[str, Any] = {"pipeline": spec.name, "run_id": run_id, "template": str(path), "runner": runner,
                               "overrides": [redact(o) for o in overrides or []], "run_dir": str(run_dir),
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with contextlib.ExitStack() as stack:
        try:
            service_args = stack.enter_context(runner_services(report.prism_binary if report else None))
            exporter = stack.enter_context(prometheus.exporting(spec.name, run_id, runner, metrics, _step_types(spec)))
        except RuntimeError as err:  # a runner service that would not start
            print(f"beam_etl: {redact(str(err))}", file=sys.stderr)
            run_ledger.start_run(summary, spec, path, state)
            run_ledger.abort_run(run_id, redact(str(err)))
            return EXIT_FAILED
        try:
            with use_run_context(run):
                pipeline = beam.Pipeline(options=PipelineOptions(args + service_args))
                build_pipeline(pipeline, spec, configs, run)
                tap_dead_letters(pipeline, run_id, spec.name)  # --log-payload-sample N (ops/logging.py)
        except TemplateError as err:  # a config error found while building: no run, nothing written
            print(f"beam_etl: {redact(str(err))}", file=sys.stderr)
            return EXIT_CONFIG
        run_ledger.start_run(summary, spec, path, state)  # ledger row "running" + cost meter (ops/ledger.py)
        run_dir.mkdir(parents=True, exist_ok=True)
        lineage = LineageRecorder.start(spec, configs, run_id=run_id, run_dir=run_dir, template=path, runner=runner,
                                        beam_args=args, store=default_store_path(state, root), url=lineage_url)
        try:
            with use_run_context(run):
                result = pipeline.run()
                exporter.watch(result)  # the /metrics endpoint reads the running job from here on
                result.wait_until_finish()
                steps = summarise(result)  # while the job service still answers
                summary["metrics"] = exporter.finish(result, run_dir)  # metrics.prom (+ Pushgateway)
        except Exception as err:  # noqa: BLE001 - any failure is reported, then the run exits non-zero
            seconds = time.perf_counter() - started
            message = redact(f"{type(err).__name__}: {err}")
            summary.update(status="failed", error=message, seconds=round(seconds, 3))
            _write_summary(run_dir, summary)
            lineage.finish(summary)  # OpenLineage FAIL (ops/lineage.py)
            print(f"beam_etl: run {run_id} FAILED after {seconds:.1f} s: {message}", file=sys.stderr)
            return EXIT_FAILED
    seconds = time.perf_counter() - started
    totals = compute_totals(spec, steps)
    over_budget = check_budget(spec, totals)
    changes: list[dict[str, Any]] = []
    schema_changes: list[dict[str, Any]] = []
    state_error = None
    if not over_budget:  # every sink committed: only now may incremental cursors move
        try:
            changes = commit_pending(run_dir, state, spec.name, run_id)
            schema_changes = commit_pending_schemas(run_dir, state, spec.name, run_id)  # EnforceContract
        except (StateError, OSError, ValueError) as err:
            state_error = (f"the data is written but the incremental state could not be saved ({redact(str(err))}); "
                           "the next run reads the same rows again")
    summary.update(status="failed" if over_budget or state_error else "succeeded", seconds=round(seconds, 3),
                   totals=totals, steps=steps, error=over_budget or state_error, state=changes,
                   schemas=schema_changes)
    summary["outcome"] = "budget_exceeded" if over_budget else summary["status"]  # for the run ledger
    _write_summary(run_dir, summary)
    lineage.finish(summary)  # OpenLineage COMPLETE or FAIL with row counts (ops/lineage.py)
    text = format_summary(spec, steps, totals, run, runner, seconds)
    if quiet:
        print(text.splitlines()[-3])
    else:
        print(text)
        for change in changes:
            print(f"incremental state saved: {describe_change(change)}")
        for change in schema_changes:
            print(f"schema registry: {describe_schema_change(change)}")
    if state_error:
        print(f"\nbeam_etl: RUN FAILED: {state_error}", file=sys.stderr)
        return EXIT_FAILED
    if over_budget:
        print(f"\nbeam_etl: RUN FAILED: {over_budget}. Inspect with: python -m beam_etl.dlq show {run_id}",
              file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    run_ledger.finish_run(summary)  # adds "cost", records the outcome in the run ledger
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.run``."""
    args, beam_args = _parser().parse_known_args(argv)
    configure_logging(args.log_level, args.log_format, args.tenant, args.log_payload_sample)
    if args.list_templates:
        print_templates()
        return EXIT_OK
    if args.list_runners:
        print(capability_table())
        return EXIT_OK
    overrides = args.overrides
    if args.tuned is not None:  # tuned options first; the command line wins
        from beam_etl.tune import apply_tuned  # imported here: beam_etl.tune imports this module

        try:
            overrides, beam_args = apply_tuned(args.tuned, args.template, args.output_dir, overrides, beam_args)
        except TemplateError as err:
            print(f"beam_etl: {redact(str(err))}", file=sys.stderr)
            return EXIT_CONFIG
    run_id = args.run_id or new_run_id()
    code = run_template(args.template, overrides, beam_args, output_dir=args.output_dir, run_id=run_id,
                        validate_only=args.validate, quiet=args.quiet, check_runner=not args.skip_preflight,
                        full_refresh=args.full_refresh, state_url=args.state,
                        metrics=prometheus.ExportOptions.from_args(args), lineage_url=args.lineage_url)
    if args.report and not args.validate:
        from beam_etl.ops.report import report_after_run

        report_after_run(Path(args.output_dir) / run_id)
    return code


if __name__ == "__main__":
    sys.exit(main())
