"""Cost accounting: CPU seconds, peak memory and bytes in summary.json's "cost"."""

from __future__ import annotations

import json

import pytest

from beam_etl.ops.cost import CostMeter, busy_seconds, step_costs
from beam_etl.ops.ledger import RunLedger
from beam_etl.ops.state import STATE_FILE_NAME
from beam_etl.run import EXIT_OK, run_template

TEMPLATE = """name: cost_demo
sources:
  - name: rows
    type: ReadFromCsv
    config: {{path: "{csv}"}}
steps:
  - name: required
    type: NullRemover
    input: rows
    config: {{drop_rows: {{fields: [name]}}}}
sinks:
  - name: out
    type: WriteToJsonl
    input: required
    config: {{path: "{{{{ run_dir }}}}/out"}}
"""


def test_summary_has_cpu_memory_and_bytes(tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,name,amount\n" + "".join(f"{i},name {i},{i * 1.5}\n" for i in range(2000)) + "2000,,1\n")
    template = tmp_path / "cost.yaml"
    template.write_text(TEMPLATE.format(csv=csv))
    out = tmp_path / "out"
    code = run_template(str(template), None, ["--runner=DirectRunner"], output_dir=str(out), run_id="cost-1",
                        quiet=True)
    assert code == EXIT_OK
    summary = json.loads((out / "cost-1" / "summary.json").read_text())
    cost = summary["cost"]
    assert cost["cpu_seconds"] > 0 and cost["cpu_seconds"] >= cost["cpu_user_seconds"] > 0
    assert cost["peak_rss_bytes"] > 10 * 2**20  # a Python process with Beam and Arrow loaded
    assert cost["bytes_read"] == csv.stat().st_size  # the source read the whole file
    assert cost["bytes_written"] == summary["steps"]["out"]["bytes_in"] > 0  # Arrow bytes handed to the sink
    assert set(cost["steps"]) == set(summary["steps"])
    assert cost["steps"]["rows"]["bytes_in"] == csv.stat().st_size
    assert sum(s["bytes_share"] for s in cost["steps"].values()) == pytest.approx(1.0, abs=0.01)
    assert "process_io" in cost and cost["process_io"]["read_chars"] >= 0
    assert RunLedger(str(out / STATE_FILE_NAME)).get("cost-1").cost == cost


def test_per_step_busy_time_splits_cpu_when_a_latency_distribution_is_present():
    steps = {
        "a": {"bytes_in": 300, "batches_in": 3, "batch_latency_us": {"count": 3, "sum": 3_000_000, "min": 1, "max": 2}},
        "b": {"bytes_in": 100, "batches_in": 1, "batch_latency_us_sum": 1_000_000},
        "c": {"bytes_in": 0, "batches_in": 0},
    }
    assert busy_seconds(steps["a"]) == 3.0 and busy_seconds(steps["b"]) == 1.0 and busy_seconds(steps["c"]) is None
    costs = step_costs(steps, cpu_seconds=8.0)
    assert costs["a"]["cpu_seconds_est"] == 6.0 and costs["b"]["cpu_seconds_est"] == 2.0
    assert "cpu_seconds_est" not in costs["c"] and costs["a"]["bytes_share"] == 0.75


def test_meter_counts_cpu_spent_between_start_and_finish():
    meter = CostMeter()
    total = sum(i * i for i in range(2_000_000))  # some CPU work
    cost = meter.finish({"src": {"bytes_in": 10}, "sink": {"bytes_in": 7}}, ["src"], ["sink"])
    assert total > 0 and cost["cpu_seconds"] > 0 and cost["wall_seconds"] > 0
    assert (cost["bytes_read"], cost["bytes_written"]) == (10, 7)
