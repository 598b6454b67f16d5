"""Processes a run needs next to it: a Prism job service for ``--runner=PrismRunner``.

Beam's PrismRunner starts Prism itself but keeps one process-wide server whose options are
those of the first run that made it (the DirectRunner's own Prism attempt included), and with
that sharing off it leaves one Prism process per run until the interpreter exits. beam_etl
therefore starts Prism per run on a free loopback port, hands PrismRunner its ``--job_endpoint``
and stops it when the run ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from beam_etl.runners import locate

START_TIMEOUT_S = 60.0


def _die_with_parent() -> None:
    """Linux: the job service gets SIGKILL when the run that started it dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prism_job_service(binary: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Runs ``binary`` as a job service on a free port; yields ``localhost:PORT``; stops it on exit."""
    port = _free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([str(binary), "--job_port", str(port), "--serve_http=false", "--log_level=warn"],
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + timeout_s
            while not locate.reachable(f"127.0.0.1:{port}", timeout_s=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    why = f"exited with {proc.returncode}" if proc.poll() is not None else f"timed out ({timeout_s} s)"
                    raise RuntimeError(f"Prism ({binary}) did not start: {why}; its log:\n{log.read()[-2000:]}")
                time.sleep(0.05)
            yield f"localhost:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def runner_services(prism_binary: Path | None) -> Iterator[list[str]]:
    """Starts what the preflight asked for; yields the Beam options that point the runner at it."""
    if prism_binary is None:
        yield []
        return
    with prism_job_service(prism_binary) as endpoint:
        yield [f"--job_endpoint={endpoint}"]
