"""Structured logs: JSON lines with correlation fields, redaction, payload samples only on request."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_etl.ops import logging as ops_logging
from beam_etl.ops.secrets import register_secret

REPO = Path(__file__).resolve().parents[2]
CANARY = "canary-Log-Pw-4417"
MARKER = "payload-marker-"
FIELDS = {"ts", "level", "logger", "message", "run_id", "pipeline", "step", "tenant"}

LEAKY_TEMPLATE = """name: leaky
params:
  password: "${{BEAM_ETL_TEST_LOG_PASSWORD}}"
sources:
  - name: rows
    type: ReadFromCsv
    config: {{path: "{csv}"}}
steps:
  - name: leak
    type: MapRecords
    input: rows
    config:
      fn: "tests.unit.test_logging_json:leaky_udf"
      fn_kwargs: {{password: "{{{{ password }}}}"}}
sinks:
  - name: out
    type: WriteToJsonl
    input: leak
    config: {{path: "{{{{ run_dir }}}}/out"}}
"""


def leaky_udf(record: dict, password: str = "") -> dict:
    """A careless user function: logs the password, and rejects even ids (they go to the DLQ)."""
    logging.getLogger("tests.leaky").warning("calling the API for %s with password %s", record["id"], password)
    if int(record["id"]) % 2 == 0:
        raise ValueError(f"rejected {record['id']}")
    return record


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    environ = {k: v for k, v in os.environ.items() if k != "BEAM_ETL_TENANT"}
    environ.update({"PYTHONPATH": str(REPO), "BEAM_ETL_TEST_LOG_PASSWORD": CANARY, **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "beam_etl.run", "--output-dir", str(tmp_path / "out"),
                           "--log-format=json", *args], capture_output=True, text=True, cwd=REPO, env=environ,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    try:
        parsed = [json.loads(line) for line in lines]
    except json.JSONDecodeError as err:
        pytest.fail(f"stderr is not JSON lines ({err}):\n{proc.stderr[-3000:]}")
    return proc.returncode, parsed, proc.stdout + proc.stderr


def _leaky(tmp_path: Path) -> Path:
    csv = tmp_path / "in.csv"
    rows = [f"{i},{MARKER}{i},tok-PLAIN-{i},{'note ' + CANARY if i == 2 else 'ok'}" for i in range(1, 6)]
    csv.write_text("id,name,api_token,note\n" + "\n".join(rows) + "\n")
    template = tmp_path / "leaky.yaml"
    template.write_text(LEAKY_TEMPLATE.format(csv=csv))
    return template


def test_quickstart_json_lines_carry_the_run_on_every_line(tmp_path):
    code, lines, raw = _run(tmp_path, "--run-id", "json-qs", env={"BEAM_ETL_TENANT": "acme"})
    assert code == 0, raw[-3000:]
    assert lines and all(set(line) >= FIELDS for line in lines)
    assert all(line["run_id"] == "json-qs" and line["pipeline"] == "quickstart" for line in lines)
    assert all(line["tenant"] == "acme" for line in lines)
    worker = [line for line in lines if line["logger"].startswith("beam_etl.transforms.")]
    assert worker and all(line["step"] for line in worker)  # e.g. fuzzy_dedup's statistics line
    assert any(line["message"].startswith("beam_etl: running 'quickstart'") for line in lines)  # the launcher
    assert not [line for line in lines if line["logger"] == "beam_etl.dlq"]  # no payload sample by default


def test_secrets_never_logged_and_payload_samples_only_with_the_flag(tmp_path):
    template = _leaky(tmp_path)
    code, lines, raw = _run(tmp_path, "--template", str(template), "--run-id", "leaky-1", "--tenant", "t1")
    assert code == 0, raw[-3000:]
    assert CANARY not in raw
    udf = [line for line in lines if line["logger"] == "tests.leaky"]
    assert len(udf) == 5 and all(line["step"] == "leak" and "password ***" in line["message"] for line in udf)
    assert all(line["run_id"] == "leaky-1" and line["pipeline"] == "leaky" and line["tenant"] == "t1"
               for line in lines)
    assert MARKER not in raw and not [line for line in lines if line["logger"] == "beam_etl.dlq"]

    code, lines, raw = _run(tmp_path, "--template", str(template), "--run-id", "leaky-2", "--log-payload-sample=1")
    assert code == 0, raw[-3000:]
    samples = [line for line in lines if line["logger"] == "beam_etl.dlq"]
    assert len(samples) == 1, samples  # two dead letters in step leak, one sampled
    sample = samples[0]
    assert sample["step"] == "leak" and sample["run_id"] == "leaky-2" and sample["tenant"] is None
    assert f"{MARKER}2" in sample["message"] and "rejected 2" in sample["message"]
    assert "tok-PLAIN" not in raw and CANARY not in raw  # a secret-named field and a registered secret


def test_filters_format_and_redact_in_process():
    register_secret(CANARY)
    ops_logging.set_run("r-1", "p")
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "pw=%s", (CANARY,), None)
    for f in (ops_logging.RedactingFilter(), ops_logging.CorrelationFilter()):
        assert f.filter(record)
    line = json.loads(ops_logging.JsonFormatter().format(record))
    assert line["message"] == "pw=***" and line["run_id"] == "r-1" and line["pipeline"] == "p"
    assert line["step"] is None and line["level"] == "WARNING" and line["logger"] == "x.y"
    assert ops_logging.mask_secrets("postgresql://u:hunter2@h/db") == "postgresql://u:***@h/db"
    assert ops_logging.payload_text({"password": "p", "token": "t", "name": CANARY}) == \
        '{"password": "***", "token": "***", "name": "***"}'


REMOTE_WORKER = r"""
import io, logging, pickle, sys
# A fresh process standing in for a remote SDK worker: one plain root handler (Beam's log shipper
# there), none of the launcher's filters, and the DoFn arrives pickled.
stream = io.StringIO()
handler = logging.StreamHandler(stream)
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
import pyarrow as pa
dofn = pickle.loads(sys.stdin.buffer.read())
dofn.setup()
list(dofn.process(pa.record_batch({"x": [1, 2]})))
sys.stdout.write(stream.getvalue())
"""


def log_inside(batch):
    """A batch function that logs, as user code on a worker would."""
    logging.getLogger("user.fn").warning("processing %d rows", batch.num_rows)
    return batch


def test_a_remote_worker_gets_the_run_fields_from_the_pickled_run_context():
    import pickle

    from beam_etl.ops.context import RunContext
    from beam_etl.transforms.base import BatchFnDoFn

    ctx = RunContext(pipeline="remote_demo", run_id="run-remote-1", log_format="json", tenant="acme")
    from beam_etl.ops.context import use_run_context

    with use_run_context(ctx):
        dofn = BatchFnDoFn(log_inside, "step_a")
    out = subprocess.run([sys.executable, "-c", REMOTE_WORKER], input=pickle.dumps(dofn), capture_output=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout.decode()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    (line,) = [x for x in lines if x["logger"] == "user.fn"]
    assert line["message"] == "processing 2 rows"
    assert (line["run_id"], line["pipeline"], line["tenant"]) == ("run-remote-1", "remote_demo", "acme")
