"""The AutoTuner: model fit on synthetic timings, the never-slower guard, the JSON file, --tuned, end to end."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from beam_etl import run as run_cli
from beam_etl import tune as tune_cli
from beam_etl.ml.tuner import (
    Measurement,
    SearchSpace,
    Setting,
    choose,
    fit_line,
    fit_model,
    paired_ratios,
    search,
)
from beam_etl.spec import TemplateError

REPO = Path(__file__).resolve().parents[2]
IN_MEMORY, THREADS, PROCESSES = ("in_memory", 1), ("multi_threading", 2), ("multi_processing", 2)
FIXED = {IN_MEMORY: 1.0, THREADS: 1.3, PROCESSES: 4.0}
PER_ROW = {IN_MEMORY: 1.0, THREADS: 0.6, PROCESSES: 0.5}


def true_seconds(setting: Setting, rows: int) -> float:
    """A synthetic pipeline: start-up per execution, per-record cost lowest at batch factor 2."""
    x = math.log2(setting.batch_factor)
    return FIXED[setting.execution] + rows * 2e-6 * PER_ROW[setting.execution] * (1 + 0.15 * (x - 1) ** 2)


def synthetic(settings_sizes, rows=None, noise=0.02, seed=0, repeats=3):
    rows = rows or {"small": 25_000, "large": 100_000}
    rng = random.Random(seed)
    return [Measurement(s, rows[size], true_seconds(s, rows[size]) * (1 + rng.uniform(-noise, noise)), "screen", r)
            for r in range(repeats) for s, size in settings_sizes]


def space() -> SearchSpace:
    return SearchSpace(Setting(), [IN_MEMORY, THREADS, PROCESSES], [0.125, 0.25, 0.5, 1.0, 2.0, 4.0])


def test_fit_line_recovers_fixed_and_per_record_cost():
    fixed, per_row = fit_line([10_000, 40_000, 100_000], [1.0 + 2e-6 * r for r in (10_000, 40_000, 100_000)])
    assert fixed == pytest.approx(1.0, rel=1e-6) and per_row == pytest.approx(2e-6, rel=1e-6)
    assert fit_line([100], [2.0]) == (0.0, pytest.approx(0.02))  # one size: no start-up estimate


def test_model_fit_on_synthetic_measurements_picks_the_optimum():
    measurements = synthetic(space().screen(), rows={"small": 250_000, "large": 1_000_000}, noise=0.01)
    model = fit_model(measurements, reference=Setting())
    assert model.best_batch_factor(0.125, 4.0) == 2.0
    assert model.fixed_s[THREADS] == pytest.approx(1.3, rel=0.15)
    grid = space().grid()
    best = max(grid, key=lambda s: model.throughput(s, 4_000_000))
    assert best == Setting("multi_threading", 2, 2.0)
    assert best == max(grid, key=lambda s: 4_000_000 / true_seconds(s, 4_000_000))
    assert model.throughput(best, 4_000_000) == pytest.approx(4_000_000 / true_seconds(best, 4_000_000), rel=0.05)
    # at 1G records the lower per-record cost of worker processes outweighs their start-up
    assert max(grid, key=lambda s: model.throughput(s, 1_000_000_000)).mode == "multi_processing"


def test_search_recommends_the_faster_setting_and_beats_the_defaults():
    def measure(setting, size, phase, repeat):
        rows = {"small": 250_000, "large": 1_000_000}[size]
        return Measurement(setting, rows, true_seconds(setting, rows), phase, repeat)

    result = search(space(), measure, lambda read: read * 4, repeats=2, budget_s=1e9, log=lambda _: None)
    choice = result.choice
    assert choice.setting == Setting("multi_threading", 2, 2.0)
    assert choice.measured >= choice.defaults_measured
    assert choice.predicted == pytest.approx(4_000_000 / true_seconds(choice.setting, 4_000_000), rel=0.03)
    assert result.full_rows == 4_000_000 and result.large_rows == 1_000_000
    phases = {m.phase for m in result.measurements}
    assert phases == {"warmup", "screen", "confirm"}


@pytest.mark.parametrize("seed", range(6))
def test_recommendation_is_never_slower_than_the_defaults_in_the_same_invocation(seed):
    """Screening says worker threads are faster; in the confirmation pairs it is a coin toss."""
    rng = random.Random(seed)

    def measure(setting, size, phase, repeat):
        rows = {"small": 250_000, "large": 1_000_000}[size]
        seconds = true_seconds(setting, rows) * rng.uniform(0.9, 1.1)
        if phase == "confirm" and setting != Setting():
            seconds = true_seconds(Setting(), rows) * rng.uniform(0.7, 1.3)
        return Measurement(setting, rows, seconds, phase, repeat)

    result = search(space(), measure, lambda read: read * 4, repeats=3, budget_s=1e9, log=lambda _: None)
    choice = result.choice
    confirmed = [m for m in result.measurements if m.phase == "confirm"]
    assert choice.measured >= choice.defaults_measured
    if choice.setting != Setting():
        pairs = paired_ratios(confirmed, Setting(), choice.setting)
        assert len(pairs) == 3 and all(ratio >= 1.0 for ratio, _, _ in pairs)


def test_a_slower_candidate_is_never_recommended():
    def measure(setting, size, phase, repeat):
        rows = {"small": 250_000, "large": 1_000_000}[size]
        if phase == "confirm" and setting != Setting():
            return Measurement(setting, rows, true_seconds(Setting(), rows) * 1.1, phase, repeat)
        return Measurement(setting, rows, true_seconds(setting, rows), phase, repeat)

    result = search(space(), measure, lambda read: read * 4, repeats=2, budget_s=1e9, log=lambda _: None)
    assert result.choice.setting == Setting()
    assert "defaults kept" in result.choice.reason


def test_choose_needs_a_win_in_every_pair():
    measurements = synthetic(space().screen(), rows={"small": 250_000, "large": 1_000_000}, noise=0.01)
    model = fit_model(measurements, reference=Setting())
    fast = Setting("multi_threading", 2, 2.0)

    def pairs(candidate_seconds):
        out = []
        for k, seconds in enumerate(candidate_seconds):
            out += [Measurement(Setting(), 100_000, 1.0, "confirm", k),
                    Measurement(fast, 100_000, seconds, "confirm", k)]
        return out

    assert choose(model, pairs([0.8, 0.8, 1.01]), Setting(), [fast], 1_000_000).setting == Setting()
    assert choose(model, pairs([0.98, 0.99, 0.97]), Setting(), [fast], 1_000_000).setting == Setting()  # < 5%
    picked = choose(model, pairs([0.8, 0.85, 0.9]), Setting(), [fast], 1_000_000)
    assert picked.setting == fast and picked.measured == pytest.approx(100_000 / 0.85)
    assert picked.defaults_measured == pytest.approx(100_000.0)


def test_failed_settings_are_dropped_and_failing_defaults_are_an_error():
    def measure(setting, size, phase, repeat):
        if setting.mode == "multi_processing":
            return None
        rows = {"small": 25_000, "large": 100_000}[size]
        return Measurement(setting, rows, true_seconds(setting, rows), phase, repeat)

    result = search(space(), measure, lambda read: read, repeats=1, budget_s=1e9, log=lambda _: None)
    assert set(result.failed) == {Setting("multi_processing", 2)}
    assert result.choice.setting.mode != "multi_processing"
    with pytest.raises(RuntimeError, match="default settings"):
        search(space(), lambda *a: None, lambda read: read, repeats=1, log=lambda _: None)


def test_measurement_json_round_trip():
    m = Measurement(Setting("multi_threading", 2, 0.5, 4.0), 1234, 0.5, "confirm", 2)
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert Setting.from_dict(Setting().to_dict()) == Setting()
    with pytest.raises(ValueError, match="mode"):
        Setting("threads")


# ------------------------------------------------------------------ beam_etl.tune without running Beam

@pytest.fixture
def fake_trials(monkeypatch):
    """Trials timed by the synthetic model instead of running the pipeline."""
    calls = []

    def measure(self, setting, size, phase, repeat):
        rows = self.plan.samples["orders"].rows[self.plan.sizes["orders"][0 if size == "small" else 1]]
        calls.append((setting, size, tune_cli.trial_overrides(self.plan, setting, size, self.root / "t")))
        return Measurement(setting, rows, true_seconds(setting, rows * 2500), phase, repeat)

    monkeypatch.setattr(tune_cli.TrialRunner, "__call__", measure)
    return calls


def test_tune_writes_json_that_round_trips_and_samples_the_input(tmp_path, fake_trials):
    doc = tune_cli.tune("quickstart", sample_rows=400, output_dir=str(tmp_path), repeats=2, max_workers=2,
                        batch_factors=[0.5, 1.0, 2.0])
    path = tmp_path / "tuned" / "quickstart.json"
    assert doc["written_to"] == str(path)
    saved = json.loads(path.read_text())
    assert saved["recommended"]["beam_args"] == ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    assert saved["recommended"]["overrides"] == ["sources.orders.config.batch_rows=131072"]
    assert saved["defaults"]["overrides"] == ["sources.orders.config.batch_rows=65536"]
    assert saved["recommended"]["measured_records_per_s"] >= saved["defaults"]["measured_records_per_s"]
    assert saved["input"]["sources"]["orders"]["sample_rows"] == [100, 400]
    assert saved["input"]["full_rows"] > 3000  # counted lines of the bundled CSV
    trials = [Measurement.from_dict(t) for t in saved["trials"]]
    assert {t.phase for t in trials} == {"warmup", "screen", "confirm"}
    assert all(t.records_per_s > 0 for t in trials)
    # each trial reads a sample, writes to a scratch folder, never to the template's sinks
    _, _, overrides = fake_trials[0]
    assert any(o.startswith("sources.orders.config.path=") and o.endswith("orders_100.csv") for o in overrides)
    assert "sinks.orders_sqlite.config.create_table=true" in overrides
    assert any(o.startswith("sinks.orders_parquet.config.path=") and "/t/_tune_orders_parquet" in o
               for o in overrides)
    assert list(tmp_path.joinpath("tuned").iterdir()) == [path]  # trial folders and samples removed


def test_tune_errors_are_clear(tmp_path, capsys):
    assert tune_cli.main(["no_such_template", "--output-dir", str(tmp_path)]) == 2
    assert "no such file or template" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("order_id,amount\n")
    code = tune_cli.main(["csv_to_parquet", "--set", f"params.input={empty}", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "sample is empty" in capsys.readouterr().err
    assert tune_cli.main(["quickstart", "--runner=FlinkRunner", "--output-dir", str(tmp_path)]) == 2
    assert "DirectRunner only" in capsys.readouterr().err


# ------------------------------------------------------------------ --tuned in beam_etl.run

def write_tuned(path: Path, template: str = "quickstart") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"template": template, "recommended": {
        "beam_args": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
        "overrides": ["sources.orders.config.batch_rows=4096"]}}))
    return path


@pytest.fixture
def captured_run(monkeypatch):
    calls = []

    def fake_run_template(template, overrides, beam_args, **kwargs):
        calls.append((template, overrides, beam_args))
        return 0

    monkeypatch.setattr(run_cli, "run_template", fake_run_template)
    return calls


def test_tuned_applies_the_recommended_options(tmp_path, captured_run):
    write_tuned(tmp_path / "tuned" / "quickstart.json")
    argv = ["--output-dir", str(tmp_path), "--tuned", "--set", "sources.orders.config.batch_rows=512",
            "--direct_num_workers=1"]
    assert run_cli.main(argv) == 0
    template, overrides, beam_args = captured_run[0]
    assert template == "quickstart"
    # tuned overrides first, so the command line's --set wins; a given Beam option is kept
    assert overrides == ["sources.orders.config.batch_rows=4096", "sources.orders.config.batch_rows=512"]
    assert beam_args == ["--direct_num_workers=1", "--direct_running_mode=multi_threading"]


def test_tuned_file_path_missing_file_and_wrong_template(tmp_path, captured_run, capsys):
    other = write_tuned(tmp_path / "elsewhere.json")
    assert run_cli.main(["--output-dir", str(tmp_path), "--tuned", str(other)]) == 0
    assert captured_run[-1][2] == ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    assert run_cli.main(["--output-dir", str(tmp_path / "none"), "--tuned"]) == 2
    assert "does not exist; run `python -m beam_etl.tune quickstart`" in capsys.readouterr().err
    wrong = write_tuned(tmp_path / "wrong.json", template="csv_to_parquet")
    assert run_cli.main(["--output-dir", str(tmp_path), "--tuned", str(wrong)]) == 2
    assert "made for template 'csv_to_parquet'" in capsys.readouterr().err
    with pytest.raises(TemplateError, match="not a tuner result"):
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        tune_cli.apply_tuned(str(bad), "quickstart", str(tmp_path), [], [])


# ------------------------------------------------------------------ end to end on the quickstart

@pytest.mark.slow
def test_tuner_end_to_end_on_the_quickstart(tmp_path):
    """A tiny sample, one repeat, two batch sizes: then --tuned runs the pipeline with the result."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "beam_etl.tune", "quickstart", "--sample-rows", "300", "--repeats", "1",
           "--modes", "in_memory", "--batch-factors", "0.5,1", "--budget-s", "60", "--output-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tune: screen 1/1" in done.stderr and "written to" in done.stdout
    doc = json.loads((tmp_path / "tuned" / "quickstart.json").read_text())
    assert doc["recommended"]["measured_records_per_s"] >= doc["defaults"]["measured_records_per_s"]
    assert [t["phase"] for t in doc["trials"]].count("screen") == 3
    assert doc["input"]["sample_rows"] > 0
    code = run_cli.main(["--output-dir", str(tmp_path), "--tuned", "--quiet", "--run-id", "tuned-run"])
    assert code == 0
    summary = json.loads((tmp_path / "tuned-run" / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert set(doc["recommended"]["overrides"]) <= set(summary["overrides"])
