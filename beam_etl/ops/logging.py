"""Logging for runs: text or JSON lines, correlation fields, secret redaction, payload samples.

``configure`` (called by ``python -m beam_etl.run``) sets the format:

* ``text`` (default): ``LEVEL logger: message`` on stderr, as before.
* ``json``: one JSON object per line on stderr with ``ts``, ``level``, ``logger``, ``message`` and the
  correlation fields ``run_id``, ``pipeline``, ``step`` (the step whose code is running, else null)
  and ``tenant`` (``--tenant`` or ``$BEAM_ETL_TENANT``, else null). The launcher's own stderr messages
  (progress, errors) are re-emitted as JSON lines too, so stderr holds nothing else.

Every root handler gets a ``RedactingFilter`` (``ops.secrets.redact`` and URL passwords, on message,
arguments and traceback) and a ``CorrelationFilter``; a record factory applies the same redaction to
records that reach other handlers (pytest's, Beam's). The step is read from Beam's state sampler of
the thread running the bundle, so DoFns log with plain ``logging`` and need no extra code. Record
payloads are never logged unless ``--log-payload-sample N`` asks for N dead letters per step (``tap_dead_letters``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.worker import statesampler

from beam_etl.ops.secrets import REDACTED, SECRET_KEY_RE, redact

LOG_FORMATS = ("text", "json")
TENANT_ENV = "BEAM_ETL_TENANT"
CORRELATION_FIELDS = ("run_id", "pipeline", "step", "tenant")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
DLQ_MERGE_LABEL = "DeadLetters/Merge"  # build.py's Flatten of every step's dead letters
_PAYLOAD_LIMIT = 2000  # characters of one sampled record in a log line
_WHILE_RUNNING_RE = re.compile(r"\[while running '([^'/]+)")
_URL_PASSWORD_RE = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/?#@\s]*:)[^@/\s]+@")

log = logging.getLogger("beam_etl.run")


@dataclasses.dataclass
class LogSettings:
    """What ``configure`` was given; read by the run hooks (ledger tenant, DLQ payload sample)."""

    fmt: str = "text"
    tenant: str | None = None
    payload_sample: int = 0


_SETTINGS = LogSettings()
_RUN: dict[str, str | None] = {"run_id": None, "pipeline": None}  # the launcher's current run


def settings() -> LogSettings:
    """The settings of the last ``configure`` call (defaults when never called)."""
    return _SETTINGS


def set_run(run_id: str | None, pipeline: str | None) -> None:
    """Makes ``run_id``/``pipeline`` the correlation fields of this process's log lines (and redacts them)."""
    _RUN.update(run_id=run_id, pipeline=pipeline)
    install_redaction()


def current_step() -> str | None:
    """The template step whose code this thread is running (its top-level label), else None."""
    try:
        tracker = statesampler.get_current_tracker()
        state = tracker.current_state() if tracker is not None else None
        name = getattr(getattr(state, "name_context", None), "step_name", None)
    except Exception:  # noqa: BLE001 - logging must never fail because of Beam internals
        return None
    return name.split("/", 1)[0] if name else None


def mask_secrets(text: str) -> str:
    """``redact`` plus the password of any ``scheme://user:password@host`` URL."""
    return _URL_PASSWORD_RE.sub(rf"\g<1>{REDACTED}@", redact(text))


class RedactingFilter(logging.Filter):
    """Applies ``ops.secrets.redact`` to the message (after %-formatting), traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_beam_etl_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep the raw text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask_secrets(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        record._beam_etl_redacted = True
        return True


def install_redaction() -> None:
    """Redacts every log record this process creates, whatever handler (pytest's, Beam's) gets it.

    Wraps the record factory once; ``RedactingFilter`` on the handlers covers records made before.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_beam_etl_redacting", False):
        return
    redacting = RedactingFilter()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        redacting.filter(record)
        return record

    make_record._beam_etl_redacting = True
    logging.setLogRecordFactory(make_record)


def _step_in_message(record: logging.LogRecord) -> str | None:
    """The step Beam names in its own error lines: ``... [while running 'step/Inner/ParDo(...)']``."""
    if not record.name.startswith("apache_beam"):
        return None
    found = _WHILE_RUNNING_RE.search(record.getMessage())
    return found.group(1) if found else None


class CorrelationFilter(logging.Filter):
    """Adds ``run_id``, ``pipeline``, ``step`` and ``tenant`` to every record (an ``extra=`` value wins).

    With no fixed values it reads the launcher's current run (``set_run``) and ``settings().tenant``;
    a worker that is not the launcher process gets fixed values (``install_worker_logging``).
    """

    def __init__(self, run_id: str | None = None, pipeline: str | None = None, tenant: str | None = None) -> None:
        super().__init__()
        self._fixed = {"run_id": run_id, "pipeline": pipeline, "tenant": tenant} if run_id else None

    def filter(self, record: logging.LogRecord) -> bool:
        values = self._fixed or {**_RUN, "tenant": _SETTINGS.tenant}
        for name, value in values.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if getattr(record, "step", None) is None:
            record.step = current_step() or _step_in_message(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, correlation fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        for name in CORRELATION_FIELDS:
            line[name] = getattr(record, name, None)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return mask_secrets(json.dumps(line, default=str, ensure_ascii=False))


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_beam_etl", False)


def _add_filters(handler: logging.Handler, correlation: CorrelationFilter | None = None) -> None:
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    if not any(isinstance(f, CorrelationFilter) for f in handler.filters):
        handler.addFilter(correlation or CorrelationFilter())


class _StderrAsLog(io.TextIOBase):
    """Stands in for ``sys.stderr`` in JSON mode: each line printed becomes a log record."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._buffer = ""
        self._busy = threading.local()
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._busy, "on", False):  # logging itself failed and reports it: pass it through
            return self.stream.write(text)
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self._busy.on = True
                try:
                    log.log(_level_of(line), line.strip())
                finally:
                    self._busy.on = False
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return False


def _level_of(line: str) -> int:
    """Launcher messages on stderr are progress unless they report a failure."""
    if "FAILED" in line or (line.startswith("beam_etl: ") and not line.startswith("beam_etl: running ")):
        return logging.ERROR
    return logging.INFO


def configure(beam_level: str, fmt: str = "text", tenant: str | None = None, payload_sample: int = 0) -> None:
    """Sets up the root handler for ``fmt``; Beam's own loggers log at ``beam_level``.

    The root logger stays at WARNING; in JSON mode ``beam_etl`` loggers log INFO (run start/end).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {LOG_FORMATS}")
    _SETTINGS.fmt, _SETTINGS.payload_sample = fmt, max(0, int(payload_sample))
    _SETTINGS.tenant = tenant or os.environ.get(TENANT_ENV) or None
    root = logging.getLogger()
    if isinstance(sys.stderr, _StderrAsLog):  # configured before: start again from the real stderr
        sys.stderr = sys.stderr.stream
    for handler in [h for h in root.handlers if _is_ours(h)]:
        root.removeHandler(handler)
    if fmt == "json":
        for handler in [h for h in root.handlers if type(h) is logging.StreamHandler
                        and h.stream in (sys.stderr, sys.__stderr__)]:
            root.removeHandler(handler)  # a plain-text stderr handler would break the JSON stream
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._beam_etl = True
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        logging.getLogger("beam_etl").setLevel(logging.INFO)
        logging.captureWarnings(True)
        sys.stderr = _StderrAsLog(sys.stderr)
    else:
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
            handler._beam_etl = True
            root.addHandler(handler)
        root.setLevel(logging.WARNING)
        logging.getLogger("beam_etl").setLevel(logging.NOTSET)
    for handler in root.handlers:
        _add_filters(handler)
    install_redaction()
    logging.getLogger("apache_beam").setLevel(beam_level.upper())


def install_worker_logging_for(ctx: Any) -> None:
    """``install_worker_logging`` from a DoFn's pickled ``RunContext`` (a no-op in the launcher)."""
    install_worker_logging(ctx.run_id, ctx.pipeline, getattr(ctx, "tenant", None), getattr(ctx, "log_format", "text"))


def install_worker_logging(run_id: str, pipeline: str, tenant: str | None, fmt: str) -> None:
    """On an SDK worker that is not the launcher process: redaction and fixed correlation fields.

    In the launcher (DirectRunner, LOOPBACK workers) the handlers already carry both filters and
    nothing changes. Elsewhere (DOCKER/PROCESS/EXTERNAL workers) the root handlers, usually Beam's
    ``FnApiLogRecordHandler`` that ships lines to the runner, get the filters and, in JSON mode, the
    JSON formatter for the message text. Secrets registered in the launcher are not known there:
    only URL passwords are masked.
    """
    root = logging.getLogger()
    if any(isinstance(f, CorrelationFilter) for h in root.handlers for f in h.filters):
        return
    for handler in root.handlers:
        _add_filters(handler, CorrelationFilter(run_id, pipeline, tenant))
        if fmt == "json":
            handler.setFormatter(JsonFormatter())


# --------------------------------------------------------------------------------------
# Payload samples (off unless --log-payload-sample N)
# --------------------------------------------------------------------------------------


def mask_record(value: Any) -> Any:
    """A record with values of secret-looking keys hidden and registered secrets redacted."""
    if isinstance(value, Mapping):
        return {k: REDACTED if SECRET_KEY_RE.search(str(k)) and v not in (None, "") else mask_record(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_record(v) for v in value]
    if isinstance(value, str):
        return mask_secrets(value)
    return value


def payload_text(record: Any, limit: int = _PAYLOAD_LIMIT) -> str:
    """A sampled record as masked JSON text of at most ``limit`` characters."""
    text = json.dumps(mask_record(record), default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} chars)"


_sample_lock = threading.Lock()
_sampled: dict[tuple[str, str], int] = {}


def _take_sample(run_id: str, step: str, limit: int) -> int:
    """The 1-based number of this sample for (run, step), or 0 once ``limit`` were taken in this process."""
    with _sample_lock:
        taken = _sampled.get((run_id, step), 0)
        if taken >= limit:
            return 0
        _sampled[(run_id, step)] = taken + 1
        return taken + 1


class LogDeadLetterSample(beam.DoFn):
    """Logs the first ``limit`` dead letters of each step (per worker process); outputs nothing."""

    def __init__(self, limit: int, run_id: str, pipeline: str, tenant: str | None, fmt: str) -> None:
        self._limit, self._run_id, self._pipeline, self._tenant, self._fmt = limit, run_id, pipeline, tenant, fmt

    def setup(self) -> None:
        install_worker_logging(self._run_id, self._pipeline, self._tenant, self._fmt)

    def process(self, letter: Any) -> None:
        if not isinstance(letter, Mapping):
            return
        step = str(letter.get("step") or "?")
        n = _take_sample(self._run_id, step, self._limit)
        if n:
            logging.getLogger("beam_etl.dlq").warning(
                "dead letter sample %d/%d of step %s: %s %s: %s; record: %s", n, self._limit, step,
                letter.get("error_type"), letter.get("exception") or "", letter.get("error"),
                payload_text(letter.get("record")), extra={"step": step})


def tap_dead_letters(pipeline: Any, run_id: str, pipeline_name: str, limit: int | None = None) -> bool:
    """With a payload sample set, logs up to N dead letters per step from the merged DLQ stream.

    ``limit`` defaults to ``settings().payload_sample``; 0 adds nothing. Returns whether a tap was added
    (False when the pipeline has no merged dead-letter stream).
    """
    limit = _SETTINGS.payload_sample if limit is None else limit
    if limit <= 0:
        return False
    found: list[Any] = []

    class _Find(PipelineVisitor):
        def visit_transform(self, node: Any) -> None:
            if node.full_label == DLQ_MERGE_LABEL:
                found.append(node)

    pipeline.visit(_Find())
    if not found:
        return False
    merged = next(iter(found[0].outputs.values()))
    sampler = LogDeadLetterSample(limit, run_id, pipeline_name, _SETTINGS.tenant, _SETTINGS.fmt)
    _ = merged | "DeadLetters/LogSample" >> beam.ParDo(sampler)
    return True
