"""Where the runner programs live: the Prism binary and Beam's job-server jars.

``scripts/runners.sh`` puts them in one folder per machine (``$BEAM_ETL_RUNNERS_DIR``, default
``~/.cache/beam_etl/runners``) so every clone and every CI run reuses a build:

    <runners dir>/prism-<beam version>/prism
    <runners dir>/jars/beam-runners-flink-1.19-job-server-<beam version>.jar

Beam's own jar cache (``~/.apache_beam/cache/jars``) is searched too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path

from beam_etl.runners.capabilities import BEAM_VERSION

_JAR_RE = re.compile(r"^beam-runners-(?P<engine>flink-[\d.]+|spark-\d+)-job-server-(?P<version>\d+\.\d+\.\d+)\.jar$")


def runners_dir() -> Path:
    """The per-machine folder scripts/runners.sh fills."""
    return Path(os.environ.get("BEAM_ETL_RUNNERS_DIR", Path.home() / ".cache" / "beam_etl" / "runners"))


def prism_path(version: str = BEAM_VERSION) -> Path:
    """Where scripts/runners.sh installs Prism for ``version``."""
    return runners_dir() / f"prism-{version}" / "prism"


def find_prism() -> Path | None:
    """``$BEAM_ETL_PRISM`` if set, else the built binary for the installed Beam, else None."""
    explicit = os.environ.get("BEAM_ETL_PRISM")
    if explicit:
        return Path(explicit)
    path = prism_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclasses.dataclass(frozen=True)
class JobServerJar:
    path: Path
    engine: str  # flink-1.19, spark-3
    version: str  # Beam version the jar was built from


def parse_jar_name(path: str | Path) -> JobServerJar | None:
    """Engine and Beam version from a job-server jar's file name, or None if it does not follow Beam's naming."""
    match = _JAR_RE.match(Path(path).name)
    return JobServerJar(Path(path), match["engine"], match["version"]) if match else None


def find_job_server_jars(engine_prefix: str) -> list[JobServerJar]:
    """Job-server jars for ``flink`` or ``spark`` found in the runners folder and Beam's jar cache."""
    folders = [runners_dir() / "jars", Path.home() / ".apache_beam" / "cache" / "jars"]
    found: list[JobServerJar] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"beam-runners-{engine_prefix}-*-job-server-*.jar")):
            jar = parse_jar_name(path)
            if jar:
                found.append(jar)
    return found


def split_endpoint(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` -> (host, port); None when it is not of that form."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def reachable(endpoint: str, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout_s``."""
    parts = split_endpoint(endpoint)
    if parts is None:
        return False
    try:
        with socket.create_connection(parts, timeout=timeout_s):
            return True
    except OSError:
        return False
