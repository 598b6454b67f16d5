"""AutoTuner: ``python -m beam_etl.tune TEMPLATE [--set k=v] [--sample-rows N | --sample-fraction F]``.

Runs the template on the DirectRunner on a sample of its input with candidate settings
(execution mode and workers, source ``batch_rows``, SQL sink write batch where a sink has
one), times each run from its ``summary.json``, fits ``beam_etl.ml.tuner``'s model, predicts
the full input's throughput and writes the recommendation to ``<output-dir>/tuned/<template>.json``.
``python -m beam_etl.run --template T --tuned`` applies it. Each trial runs in a forked
child process (fresh Beam state, no re-import), with its outputs, DLQ and incremental state
in a scratch folder. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from beam_etl import _tune_sample as sampling
from beam_etl import registry
from beam_etl.ml.tuner import DEFAULT_BATCH_FACTORS, MODES, Measurement, SearchSpace, Setting, search
from beam_etl.ops.secrets import redact
from beam_etl.run import run_template  # imported before the trials fork: each child runs the same code
from beam_etl.spec import PipelineSpec, TemplateError, build_spec, load_document, resolve_template_path

DEFAULT_OUTPUT_DIR = "beam_etl_output"
DEFAULT_SAMPLE_ROWS = 100_000
FILE_SINKS = {"WriteToCsv", "WriteToJson", "WriteToJsonl", "WriteToParquet"}
SINK_BATCH_FIELDS = ("write_batch_rows", "batch_rows", "batch_size", "max_batch_rows")
STREAMING_SOURCES = {"ReadFromKafka"}
SQL_SINKS = {"WriteToSqlite", "WriteToPostgres", "WriteToMySql"}
_DIRECT_FLAGS = ("direct_num_workers", "direct_running_mode")
_MIN_BATCH, _MAX_BATCH = 1024, 4 << 20
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class TuneError(ValueError):
    """A problem the user can fix: the message names it."""


def _log(message: str) -> None:
    print(f"tune: {message}", file=sys.stderr, flush=True)


def default_tuned_path(template: str, output_dir: str | None = None) -> Path:
    """``<output-dir>/tuned/<template name>.json``."""
    root = Path(output_dir or os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR))
    return root / "tuned" / f"{Path(template).stem}.json"


# ------------------------------------------------------------------ --tuned (used by beam_etl.run)

def _option_name(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("-")


def apply_tuned(tuned: str, template: str, output_dir: str | None, overrides: list[str],
                beam_args: list[str]) -> tuple[list[str], list[str]]:
    """Merges a tuner recommendation into a run's ``--set`` overrides and Beam options.

    ``tuned`` is a file path, or "" for ``<output-dir>/tuned/<template>.json``. What the command
    line gives wins: the file's overrides go first, its Beam options only where not given.
    Raises TemplateError when the file is missing, unreadable, or made for another template.
    """
    path = Path(tuned) if tuned else default_tuned_path(template, output_dir)
    if not path.is_file():
        raise TemplateError(f"--tuned: {path} does not exist; run `python -m beam_etl.tune {template}` first "
                            "or pass --tuned PATH")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rec = doc["recommended"]
        tuned_overrides, tuned_args = list(rec["overrides"]), list(rec["beam_args"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TemplateError(f"--tuned: {path} is not a tuner result ({type(err).__name__}: {err})") from err
    made_for = str(doc.get("template", ""))
    if made_for and Path(made_for).stem != Path(template).stem:
        raise TemplateError(f"--tuned: {path} was made for template {made_for!r}, not {template!r}; "
                            f"tune this template with `python -m beam_etl.tune {template}`")
    given = {_option_name(a) for a in beam_args if a.startswith("--")}
    args = [*beam_args, *(a for a in tuned_args if _option_name(a) not in given)]
    print(f"beam_etl: applying tuned options from {path}: {' '.join([*tuned_args, *tuned_overrides]) or '(none)'}",
          file=sys.stderr)
    return [*tuned_overrides, *overrides], args


# ------------------------------------------------------------------ the pipeline being tuned

@dataclasses.dataclass
class Plan:
    """What the tuner knows about the template: sources, knobs, sink redirections, defaults."""

    template: str
    path: Path
    spec: PipelineSpec
    overrides: list[str]
    beam_args: list[str]
    default_execution: tuple[str, int]
    batch_sources: dict[str, int]  # source -> its batch_rows
    sink_batches: dict[str, tuple[str, int]]  # sink -> (field, value)
    samples: dict[str, sampling.SourceSample]
    split_sizes: dict[str, int | None]
    sizes: dict[str, tuple[int, int]]  # source -> (small, large) requested rows
    sink_overrides: list[tuple[str, str, str, str]]  # (override key, kind, sink name, scratch name)
    notes: list[str]


def _default_execution(spec: PipelineSpec, beam_args: list[str]) -> tuple[str, int]:
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args) + [f"--{k}={v}" for k, v in spec.options.items()
                              if k not in {_option_name(a) for a in beam_args}]
    opts = PipelineOptions(args)
    runner = opts.view_as(StandardOptions).runner or "DirectRunner"
    if runner.rsplit(".", 1)[-1] not in ("DirectRunner", "BatchDirectRunner", "FnApiRunner"):
        raise TuneError(f"the tuner runs trials on the DirectRunner only (got --runner={runner})")
    if opts.view_as(StandardOptions).streaming:
        raise TuneError("streaming pipelines cannot be tuned (the tuner needs a bounded input)")
    direct = opts.view_as(DirectOptions)
    mode = direct.direct_running_mode or "in_memory"
    return mode, int(direct.direct_num_workers or 1) if mode != "in_memory" else 1


def prepare(template: str, overrides: list[str], beam_args: list[str], folder: Path, sample_rows: int | None,
            sample_fraction: float | None, allow_sink_writes: bool = False) -> Plan:
    """Loads the template, counts and samples its file sources, finds the knobs."""
    registry.load_builtins()
    path = resolve_template_path(template)
    document = load_document(path)
    spec, configs = build_spec(document, overrides,
                               {"run_dir": str(folder / "validate"), "run_id": "tune"})
    default_exec = _default_execution(spec, beam_args)
    notes: list[str] = []
    samples: dict[str, sampling.SourceSample] = {}
    sizes: dict[str, tuple[int, int]] = {}
    split_sizes: dict[str, int | None] = {}
    batch_sources: dict[str, int] = {}
    for source in spec.sources:
        entry, config = registry.lookup(source.type), configs[source.name]
        if source.type in STREAMING_SOURCES:
            raise TuneError(f"source {source.name!r} ({source.type}) is a streaming source; the tuner needs a "
                            "bounded input")
        if entry is not None and "batch_rows" in entry.config_model.model_fields:
            batch_sources[source.name] = int(config.batch_rows)
        if not sampling.sampleable(source.type):
            notes.append(f"source {source.name!r} ({source.type}) is read in full in every trial (not sampled)")
            continue
        try:
            full = sampling.count_records(source.type, config)
            rows = full[0]
            if sample_fraction and rows is None:
                raise TuneError(f"source {source.name!r} is too large to count here; use --sample-rows")
            large = (max(1, math.ceil(rows * sample_fraction)) if sample_fraction and rows is not None
                     else int(sample_rows or DEFAULT_SAMPLE_ROWS))
            large = min(large, rows) if rows is not None else large
            small = max(1, large // 4)
            samples[source.name] = sampling.sample_source(source.name, source.type, config, folder / "samples",
                                                          [small, large], full)
        except sampling.SampleError as err:
            raise TuneError(str(err)) from err
        sizes[source.name] = (small, large)
        split_sizes[source.name] = getattr(config, "split_size", None)
        s = samples[source.name]
        _log(f"source {source.name!r}: {s.full_rows:,} records ({'counted' if s.exact else 'estimated'}, "
             f"{s.full_bytes / 1e6:,.1f} MB); samples of {s.rows[small]:,} and {s.rows[large]:,} records")
    sink_batches: dict[str, tuple[str, int]] = {}
    sink_overrides: list[tuple[str, str, str, str]] = []
    external = []
    for sink in spec.sinks:
        entry = registry.lookup(sink.type)
        fields = entry.config_model.model_fields if entry else {}
        for name in SINK_BATCH_FIELDS:
            if name in fields and isinstance(getattr(configs[sink.name], name, None), int):
                sink_batches[sink.name] = (name, int(getattr(configs[sink.name], name)))
                break
        if sink.type in FILE_SINKS:
            sink_overrides.append((f"sinks.{sink.name}.config.path", "file", sink.name, f"_tune_{sink.name}"))
        elif sink.type == "WriteToSqlite":
            shared = Path(str(configs[sink.name].database)).name  # sinks that shared a file share the scratch one
            sink_overrides.append((f"sinks.{sink.name}.config.database", "sqlite", sink.name, f"_tune_{shared}"))
        else:
            external.append(f"{sink.name!r} ({sink.type})")
    if spec.dlq.type in FILE_SINKS and "config" in (document.get("dlq") or {}):
        sink_overrides.append(("dlq.config.path", "dlq", "dlq", "dlq/"))
    if external and not allow_sink_writes:
        raise TuneError(f"sink(s) {', '.join(external)} write to an external system: every trial would write its "
                        "sample there. Point them at a scratch database with --set, or pass --allow-sink-writes")
    sql_sinks = [s.name for s in spec.sinks if s.type in SQL_SINKS and s.name not in sink_batches]
    if sql_sinks:
        notes.append(f"SQL sink(s) {', '.join(sql_sinks)} have no write batch setting: they write one transaction "
                     "per incoming batch, so the source batch_rows sets their batch size")
    return Plan(template, path, spec, list(overrides), list(beam_args), default_exec, batch_sources, sink_batches,
                samples, split_sizes, sizes, sink_overrides, notes)


def _batch_value(default: int, factor: float) -> int:
    return int(min(max(round(default * factor), _MIN_BATCH), _MAX_BATCH)) if factor != 1.0 else default


def knob_overrides(plan: Plan, setting: Setting) -> list[str]:
    """The ``--set`` overrides that give ``setting``'s batch sizes (explicit values)."""
    out = [f"sources.{n}.config.batch_rows={_batch_value(v, setting.batch_factor)}"
           for n, v in plan.batch_sources.items()]
    out += [f"sinks.{n}.config.{field}={_batch_value(v, setting.sink_factor)}"
            for n, (field, v) in plan.sink_batches.items()]
    return out


def execution_args(setting: Setting) -> list[str]:
    return [f"--direct_num_workers={setting.workers}", f"--direct_running_mode={setting.mode}"]


def trial_overrides(plan: Plan, setting: Setting, size: str, run_dir: Path) -> list[str]:
    """User overrides, then the sample inputs, scratch sinks and the setting's batch sizes."""
    out = list(plan.overrides)
    for name, sample in plan.samples.items():
        requested = plan.sizes[name][0 if size == "small" else 1]
        out += sample.overrides(requested, plan.split_sizes.get(name))
    for key, kind, name, target in plan.sink_overrides:
        out.append(f"{key}={run_dir / target}")
        if kind == "sqlite":
            out.append(f"sinks.{name}.config.create_table=true")
    return out + knob_overrides(plan, setting)


def full_rows(plan: Plan, large_read: int) -> int:
    """The full input's records: what a large-sample trial read, plus what the samples left out."""
    left_out = sum(s.full_rows - s.rows[plan.sizes[n][1]] for n, s in plan.samples.items())
    return large_read + max(left_out, 0)


# ------------------------------------------------------------------ one trial, in a forked child

def _child(template: str, overrides: list[str], beam_args: list[str], root: str, run_id: str, log: str) -> None:
    os.setsid()  # its own process group: a timeout kills the SDK workers too
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from beam_etl.ops.logging import configure

    configure("WARNING")
    code = run_template(template, overrides, beam_args, output_dir=root, run_id=run_id, quiet=True,
                        full_refresh=True, state_url=str(Path(root) / run_id / "tune_state.sqlite"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class TrialRunner:
    """Runs trials of a Plan; ``__call__`` is the ``measure`` function of ``ml.tuner.search``."""

    def __init__(self, plan: Plan, root: Path, timeout_s: float = 600.0, keep: bool = False) -> None:
        self.plan, self.root, self.timeout_s, self.keep = plan, root, timeout_s, keep
        methods = multiprocessing.get_all_start_methods()
        self._mp = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.errors: dict[Setting, str] = {}
        self._count = 0
        self.beam_args = [a for a in plan.beam_args if _option_name(a) not in _DIRECT_FLAGS]

    def __call__(self, setting: Setting, size: str, phase: str, repeat: int) -> Measurement | None:
        self._count += 1
        run_id = f"trial{self._count:03d}"
        run_dir = self.root / run_id
        args = list(self.beam_args if setting.execution != self.plan.default_execution else self.plan.beam_args)
        if setting.execution != self.plan.default_execution:
            args += execution_args(setting)
        overrides = trial_overrides(self.plan, setting, size, run_dir)
        log = self.root / f"{run_id}.log"
        sys.stdout.flush()
        sys.stderr.flush()
        proc = self._mp.Process(target=_child, args=(str(self.plan.path), overrides, args, str(self.root), run_id,
                                                     str(log)))
        proc.start()
        proc.join(self.timeout_s)
        if proc.is_alive():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.join()
            return self._failed(setting, f"timed out after {self.timeout_s:.0f} s", log)
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            seconds, rows = float(summary["seconds"]), int(summary["totals"]["records_read"])
        except (OSError, ValueError, KeyError, TypeError):
            return self._failed(setting, f"exit status {proc.exitcode}", log)
        finally:
            if not self.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        if rows <= 0:
            raise TuneError(f"the sample is empty: trial {run_id} ({setting.label()}) read no records")
        if not self.keep:
            log.unlink(missing_ok=True)
        return Measurement(setting, rows, seconds, phase, repeat)

    def _failed(self, setting: Setting, why: str, log: Path) -> None:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        self.errors[setting] = redact(f"{why}: {' | '.join(tail)}")
        _log(f"trial {setting.label()} failed ({self.errors[setting]}); log {log}")
        return None


# ------------------------------------------------------------------ the whole tuning

def search_space(plan: Plan, modes: list[str], max_workers: int, batch_factors: list[float]) -> SearchSpace:
    """Executions (in_memory x1, then each parallel mode x2..max_workers) and batch factors."""
    executions = [("in_memory", 1)] if "in_memory" in modes else []
    executions += [(m, w) for m in ("multi_threading", "multi_processing") if m in modes
                   for w in range(2, max_workers + 1)]
    if plan.default_execution not in executions:
        executions.insert(0, plan.default_execution)
    factors = sorted({*batch_factors, 1.0}) if plan.batch_sources else [1.0]
    sink_factors = [0.25, 1.0, 4.0] if plan.sink_batches else [1.0]
    return SearchSpace(Setting(*plan.default_execution), executions, factors, sink_factors)


def options_for(plan: Plan, setting: Setting) -> dict[str, Any]:
    return {"settings": setting.to_dict(), "label": setting.label(), "beam_args": execution_args(setting),
            "overrides": knob_overrides(plan, setting)}


def tune(template: str, overrides: list[str] | None = None, beam_args: list[str] | None = None,
         sample_rows: int | None = None, sample_fraction: float | None = None, budget_s: float = 300.0,
         out: str | None = None, output_dir: str | None = None, repeats: int = 3, modes: list[str] | None = None,
         max_workers: int | None = None, batch_factors: list[float] | None = None, min_gain: float = 0.05,
         allow_sink_writes: bool = False, keep_trials: bool = False, trial_timeout_s: float = 600.0) -> dict[str, Any]:
    """Tunes ``template``; writes and returns the recommendation document."""
    started = time.monotonic()
    root = Path(output_dir or os.environ.get("BEAM_ETL_OUTPUT_DIR", DEFAULT_OUTPUT_DIR))
    work = Path(tempfile.mkdtemp(prefix="trials-", dir=_mkdir(root / "tuned")))
    runner: TrialRunner | None = None
    try:
        plan = prepare(template, list(overrides or []), list(beam_args or []), work, sample_rows, sample_fraction,
                       allow_sink_writes)
        for note in plan.notes:
            _log(note)
        space = search_space(plan, modes or list(MODES), max_workers or os.cpu_count() or 1,
                             batch_factors or list(DEFAULT_BATCH_FACTORS))
        runner = TrialRunner(plan, work, trial_timeout_s, keep_trials)
        _log(f"{len(space.executions)} execution(s) x {len(space.batch_factors)} batch size(s); "
             f"{repeats} repeat(s); budget {budget_s:.0f} s")
        result = search(space, runner, lambda read: full_rows(plan, read), repeats, budget_s, min_gain, _log)
    except RuntimeError as err:
        detail = next(iter(runner.errors.values()), "") if runner else ""
        raise TuneError(f"{err}: {detail}" if detail else str(err)) from err
    finally:
        if not keep_trials:
            shutil.rmtree(work, ignore_errors=True)
    choice = result.choice
    doc = {
        "version": 1, "template": Path(template).stem, "template_path": str(plan.path), "pipeline": plan.spec.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
        "recommended": {**options_for(plan, choice.setting), "predicted_records_per_s": round(choice.predicted, 1),
                        "measured_records_per_s": _round(choice.measured)},
        "defaults": {**options_for(plan, choice.defaults),
                     "predicted_records_per_s": round(choice.defaults_predicted, 1),
                     "measured_records_per_s": _round(choice.defaults_measured)},
        "predicted_speedup": round(choice.predicted / choice.defaults_predicted, 3),
        "reason": choice.reason,
        "warnings": result.warnings,
        "input": {"full_rows": result.full_rows, "sample_rows": result.large_rows,
                  "sources": {n: {"type": s.type, "full_rows": s.full_rows, "counted": s.exact,
                                  "sample_rows": [s.rows[k] for k in plan.sizes[n]]}
                              for n, s in plan.samples.items()}},
        "tuned_with": {"overrides": [redact(o) for o in plan.overrides],
                       "beam_args": [redact(a) for a in plan.beam_args]},
        "search": {"repeats": repeats, "budget_s": budget_s, "elapsed_s": round(time.monotonic() - started, 1),
                   "executions": [f"{m}x{w}" for m, w in space.executions], "batch_factors": space.batch_factors,
                   "failed": {s.label(): why for s, why in runner.errors.items()}, "notes": plan.notes},
        "model": result.model.describe(),
        "trials": [m.to_dict() for m in result.measurements],
    }
    target = Path(out) if out else default_tuned_path(template, output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    doc["written_to"] = str(target)
    return doc


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ------------------------------------------------------------------ command line

def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in MODES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"modes must be among {', '.join(MODES)} (got {text!r})")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_etl.tune", allow_abbrev=False,
        description="Tune a template's DirectRunner settings on a sample of its input; writes the recommended "
                    "options for `python -m beam_etl.run --template T --tuned`. Unknown options pass to Beam.")
    parser.add_argument("template", help="template name in templates/ or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="DOTTED.KEY=VALUE",
                        help="template override, as for beam_etl.run (e.g. params.input=big.csv)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--sample-rows", type=int, default=None,
                      help=f"records per source in the large sample (default {DEFAULT_SAMPLE_ROWS:,}); "
                           "the small sample is a quarter of it")
    size.add_argument("--sample-fraction", type=float, default=None, help="share of each source's records instead")
    parser.add_argument("--budget-s", type=float, default=300.0, help="rough time budget in seconds (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; medians are compared (default 3)")
    parser.add_argument("--out", default=None, help="result file (default <output-dir>/tuned/<template>.json)")
    parser.add_argument("--output-dir", default=None, help="run outputs folder (default $BEAM_ETL_OUTPUT_DIR or "
                                                           f"{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--modes", type=_modes, default=list(MODES),
                        help="direct_running_mode values to try (default: all three)")
    parser.add_argument("--max-workers", type=int, default=None, help="most direct_num_workers (default: CPU count)")
    parser.add_argument("--batch-factors", type=_floats, default=list(DEFAULT_BATCH_FACTORS),
                        help="source batch_rows multipliers to try (default 0.125,0.25,0.5,1,2,4)")
    parser.add_argument("--min-gain", type=float, default=0.05,
                        help="predicted gain over the defaults a setting needs to be recommended (and half of it "
                             "measured on the sample; default 0.05)")
    parser.add_argument("--allow-sink-writes", action="store_true",
                        help="let trials write to external sinks (databases, Kafka) as the template says")
    parser.add_argument("--keep-trials", action="store_true", help="keep trial folders and logs")
    parser.add_argument("--trial-timeout-s", type=float, default=600.0, help="seconds before a trial is killed")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.tune``."""
    args, beam_args = _parser().parse_known_args(argv)
    if args.sample_rows is not None and args.sample_rows < 1:
        print("beam_etl.tune: --sample-rows must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if args.sample_fraction is not None and not 0 < args.sample_fraction <= 1:
        print("beam_etl.tune: --sample-fraction must be in (0, 1]", file=sys.stderr)
        return EXIT_CONFIG
    if args.repeats < 1:
        print("beam_etl.tune: --repeats must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    from beam_etl.ops.logging import configure

    configure("ERROR")
    try:
        doc = tune(args.template, args.overrides, beam_args, args.sample_rows, args.sample_fraction, args.budget_s,
                   args.out, args.output_dir, args.repeats, args.modes, args.max_workers, args.batch_factors,
                   args.min_gain, args.allow_sink_writes, args.keep_trials, args.trial_timeout_s)
    except (TuneError, TemplateError) as err:
        print(f"beam_etl.tune: {redact(str(err))}", file=sys.stderr)
        return EXIT_CONFIG
    rec, base = doc["recommended"], doc["defaults"]
    print(f"recommended: {rec['label']}  ({' '.join(rec['beam_args'] + [f'--set {o}' for o in rec['overrides']])})")
    print(f"predicted at {doc['input']['full_rows']:,} records: {rec['predicted_records_per_s']:,.0f} rec/s vs "
          f"defaults {base['predicted_records_per_s']:,.0f} rec/s ({doc['predicted_speedup']:.2f}x); "
          f"measured on the sample: {rec['measured_records_per_s'] or 0:,.0f} vs "
          f"{base['measured_records_per_s'] or 0:,.0f} rec/s")
    print(f"why: {doc['reason']}")
    print(f"written to {doc['written_to']}; apply with: python -m beam_etl.run --template {args.template} --tuned"
          + ("" if args.out is None else f" {args.out}"))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
