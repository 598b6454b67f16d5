"""Runner fixtures: the Prism binary, a Prism job service and a Beam worker pool, on loopback.

Each is started once per test session on a free port and stopped at the end. When one cannot
be had the tests that need it fail with the reason (they are never skipped silently).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beam_etl.runners import locate
from tests.services import S3_SERVER

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], port: int, log: Path, what: str, timeout_s: float = 60,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = log.open("w")
    proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                            env={**os.environ, **env} if env else None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before listening; log {log}:\n{log.read_text()[-2000:]}")
        if locate.reachable(f"127.0.0.1:{port}", timeout_s=0.5):
            return proc
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{what} did not open 127.0.0.1:{port} within {timeout_s:.0f} s; log {log}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def prism_job_service(prism_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Prism job service: what PortableRunner submits to (as it would to a Flink job server)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("prism") / "prism.log"
    proc = _start([str(prism_binary), "--job_port", str(port), "--serve_http=false"], port, log, "Prism job service")
    yield f"localhost:{port}"
    _stop(proc)


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Beam's Python worker pool, the EXTERNAL environment clusters use instead of Docker."""
    port = _free_port()
    log = tmp_path_factory.mktemp("worker_pool") / "worker_pool.log"
    # A worker pool sidecar carries its cluster's object-store settings (here: the test S3 server's).
    env = {**S3_SERVER.aws_env(), "AWS_ENDPOINT_URL": S3_SERVER.endpoint}
    proc = _start([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                  port, log, "Beam worker pool", env=env)
    yield f"localhost:{port}"
    _stop(proc)
