"""Runner preflight: every refusal names the runner, the reason and what to do instead."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from beam_etl import registry
from beam_etl.run import EXIT_CONFIG, main
from beam_etl.runners import PreflightError, capability_table, preflight, profile_for
from beam_etl.runners.capabilities import BEAM_VERSION
from beam_etl.runners.locate import parse_jar_name
from beam_etl.runners.preflight import FN_API_RUNNER
from beam_etl.spec import build_spec, load_document, resolve_template_path


@pytest.fixture(autouse=True)
def no_runner_programs(tmp_path, monkeypatch):
    """An empty runners folder and no Docker: what a fresh machine has."""
    monkeypatch.setenv("BEAM_ETL_RUNNERS_DIR", str(tmp_path / "runners"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BEAM_ETL_PRISM", raising=False)
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)


def _quickstart():
    registry.load_builtins()
    doc = load_document(resolve_template_path("quickstart"))
    return build_spec(doc, [], {"run_dir": "/tmp/x", "run_id": "x"})


def _refusal(*args: str) -> str:
    spec, configs = _quickstart()
    with pytest.raises(PreflightError) as err:
        preflight(spec, configs, list(args))
    return str(err.value)


@pytest.fixture
def listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def _fake_prism(tmp_path: Path) -> Path:
    path = tmp_path / "runners" / f"prism-{BEAM_VERSION}" / "prism"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_direct_runner_batch_passes():
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=DirectRunner"])
    assert report.runner == "DirectRunner" and list(report.features) == ["batch"]
    assert report.added_args == [f"--runner={FN_API_RUNNER}"]  # DirectRunner's batch engine, minus its Prism try


def test_runner_names_are_normalised():
    assert profile_for("flink").name == "FlinkRunner"
    assert profile_for("apache_beam.runners.portability.prism_runner.PrismRunner").name == "PrismRunner"
    assert profile_for("DataflowRunner") is None


def test_unknown_runner_is_noted_not_refused():
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=DataflowRunner"])
    assert "not in beam_etl's runner matrix" in report.notes[0]


def test_streaming_on_spark_is_refused_with_alternative():
    message = _refusal("--runner=SparkRunner", "--streaming")
    assert "SparkRunner does not support streaming" in message and "FlinkRunner or PrismRunner" in message


def test_streaming_names_batch_only_steps():
    message = _refusal("--runner=DirectRunner", "--streaming")
    assert "DirectRunner does not support streaming" in message
    assert "dedup (ExactDeduplicator)" in message and "orders_parquet (WriteToParquet)" in message
    assert "parse_dates (Cast)" not in message  # per-batch steps are fine on unbounded input


def test_flink_without_job_server_names_the_coordinates():
    message = _refusal("--runner=FlinkRunner")
    assert f"org.apache.beam:beam-runners-flink-2.2-job-server:{BEAM_VERSION}" in message
    assert "--flink_job_server_jar" in message and "--job_endpoint" in message


def test_job_server_jar_of_another_beam_version_is_refused(tmp_path):
    jar = tmp_path / "beam-runners-spark-3-job-server-2.60.0.jar"
    jar.write_bytes(b"PK")
    message = _refusal("--runner=SparkRunner", f"--spark_job_server_jar={jar}")
    assert f"is Beam 2.60.0 but this SDK is Beam {BEAM_VERSION}" in message


def test_cached_job_server_jar_is_used(tmp_path):
    jars = tmp_path / "runners" / "jars"
    jars.mkdir(parents=True)
    jar = jars / f"beam-runners-spark-3-job-server-{BEAM_VERSION}.jar"
    jar.write_bytes(b"PK")
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=SparkRunner"])
    assert f"--spark_job_server_jar={jar}" in report.added_args
    assert "--environment_type=LOOPBACK" in report.added_args  # no Docker, local job server


def test_missing_prism_says_how_to_build_it():
    message = _refusal("--runner=PrismRunner")
    assert "scripts/runners.sh prism" in message and f"prism@v{BEAM_VERSION}" in message


def test_built_prism_is_found(tmp_path):
    prism = _fake_prism(tmp_path)
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=PrismRunner"])
    assert report.prism_binary == prism and not report.added_args  # started per run by runners.services


def test_portable_runner_needs_a_reachable_job_endpoint():
    assert "PortableRunner needs --job_endpoint" in _refusal("--runner=PortableRunner")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    message = _refusal("--runner=PortableRunner", f"--job_endpoint=localhost:{port}")
    assert f"localhost:{port} is not reachable" in message


def test_docker_environment_without_docker_is_refused(listening_port):
    message = _refusal("--runner=PortableRunner", f"--job_endpoint=localhost:{listening_port}",
                       "--environment_type=DOCKER")
    assert "needs a Docker engine" in message and "worker_pool_main" in message


def test_default_environment_falls_back_to_loopback_for_local_job_service(listening_port):
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=PortableRunner", f"--job_endpoint=localhost:{listening_port}"])
    assert "--environment_type=LOOPBACK" in report.added_args
    assert any("LOOPBACK" in note for note in report.notes)


def test_remote_job_service_without_docker_needs_a_worker_pool():
    message = _refusal("--runner=PortableRunner", "--job_endpoint=10.255.255.1:8099")
    assert "no Docker engine" in message and "--environment_type=EXTERNAL" in message


def test_external_environment_checks_the_worker_pool(listening_port):
    message = _refusal("--runner=PortableRunner", f"--job_endpoint=localhost:{listening_port}",
                       "--environment_type=EXTERNAL")
    assert "needs --environment_config=HOST:PORT" in message
    spec, configs = _quickstart()
    report = preflight(spec, configs, ["--runner=PortableRunner", f"--job_endpoint=localhost:{listening_port}",
                                       "--environment_type=EXTERNAL",
                                       f"--environment_config=localhost:{listening_port}"])
    assert not report.problems


def test_all_problems_are_reported_at_once():
    message = _refusal("--runner=SparkRunner", "--streaming", "--environment_type=DOCKER")
    assert message.count("\n  - ") >= 3


def test_jar_names_are_parsed():
    jar = parse_jar_name("/x/beam-runners-flink-1.19-job-server-2.75.0.jar")
    assert jar is not None and (jar.engine, jar.version) == ("flink-1.19", "2.75.0")
    assert parse_jar_name("flink-dist.jar") is None


def test_capability_table_lists_every_runner():
    table = capability_table()
    for runner in ("DirectRunner", "PrismRunner", "PortableRunner", "FlinkRunner", "SparkRunner"):
        assert runner in table.splitlines()[0]
    assert "| `streaming` | **no** | yes |" in table


def test_cli_refusal_exits_2_before_running(tmp_path, capsys):
    code = main(["--runner=FlinkRunner", "--output-dir", str(tmp_path)])
    assert code == EXIT_CONFIG
    assert "preflight refused FlinkRunner" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_runner_flag_is_not_taken_as_an_abbreviation(tmp_path, capsys):
    code = main(["--runner=PrismRunner", "--validate"])
    assert code == EXIT_CONFIG  # refused by the preflight (no Prism here), not an argparse error
    assert "Prism is not built" in capsys.readouterr().err


def test_list_runners_prints_the_capability_table(capsys):
    assert main(["--list-runners"]) == 0
    assert "FlinkRunner" in capsys.readouterr().out


def test_docs_show_the_current_capability_table():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "runners.md").read_text()
    block = docs.split("<!-- capability-table start -->\n", 1)[1].split("\n<!-- capability-table end -->", 1)[0]
    assert block == capability_table(), "docs/runners.md is stale: paste `python -m beam_etl.run --list-runners`"
