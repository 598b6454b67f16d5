"""What a run cost: CPU seconds, peak memory and bytes moved (``summary.json`` → ``"cost"``).

Run-level numbers come from the operating system for the launcher process and the child
processes it waited for (``resource.getrusage`` self + children, ``psutil`` I/O counters), so
they cover the in-process runners (DirectRunner, LOOPBACK workers of Prism/Flink/Spark) and
not workers on other machines. Per-step numbers are derived from the step metrics that
``summary.json`` already holds (``bytes_in``, ``batches_in``) and, where a step reports it, the
``batch_latency_us`` distribution (time its function spent on batches); Beam gives no
per-step CPU time, so per-step ``cpu_seconds_est`` splits the run's CPU seconds by that busy time.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

try:  # I/O counters; optional (not every platform has them)
    import psutil
except ImportError:  # pragma: no cover - psutil is in requirements.txt
    psutil = None

_LATENCY_UNITS = {"_ns": 1e-9, "_us": 1e-6, "_ms": 1e-3, "_s": 1.0}


def _maxrss_bytes(usage: resource.struct_rusage) -> int:
    """``ru_maxrss`` is KiB on Linux and bytes on macOS."""
    return int(usage.ru_maxrss) if sys.platform == "darwin" else int(usage.ru_maxrss) * 1024


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _io_chars() -> tuple[int, int] | None:
    """(bytes passed to read(), bytes passed to write()) by this process so far, or None."""
    if psutil is None:
        return None
    try:
        io = psutil.Process().io_counters()
    except (AttributeError, NotImplementedError, psutil.Error):
        return None
    return int(getattr(io, "read_chars", io.read_bytes)), int(getattr(io, "write_chars", io.write_bytes))


def busy_seconds(counts: Mapping[str, Any]) -> float | None:
    """Seconds a step's function ran, from a latency distribution in its summary entry (None if absent).

    Accepts ``{"batch_latency_us": {"sum": ...}}`` or a flat ``batch_latency_us_sum``; the unit comes
    from the name's suffix (_ns, _us, _ms, _s).
    """
    total = None
    for key, value in counts.items():
        if "latency" not in key:
            continue
        base = key.removesuffix("_sum")
        if isinstance(value, Mapping):
            value = value.get("sum")
        elif base == key:  # a flat value that is not a sum (count, min, max, mean)
            continue
        scale = next((s for suffix, s in _LATENCY_UNITS.items() if base.endswith(suffix)), None)
        if scale is None or not isinstance(value, (int, float)):
            continue
        total = (total or 0.0) + float(value) * scale
    return total


@dataclasses.dataclass
class CostMeter:
    """Snapshots taken when a run starts; ``finish`` turns them into the ``cost`` of the summary."""

    wall_start: float = dataclasses.field(default_factory=time.perf_counter)
    self_start: resource.struct_rusage = dataclasses.field(
        default_factory=lambda: resource.getrusage(resource.RUSAGE_SELF))
    children_start: resource.struct_rusage = dataclasses.field(
        default_factory=lambda: resource.getrusage(resource.RUSAGE_CHILDREN))
    io_start: tuple[int, int] | None = dataclasses.field(default_factory=_io_chars)

    def finish(self, steps: Mapping[str, Mapping[str, Any]] | None, sources: Iterable[str],
               sinks: Iterable[str]) -> dict[str, Any]:
        """The run's cost; ``sources``/``sinks`` name the steps whose bytes count as read/written."""
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_self = _cpu(own) - _cpu(self.self_start)
        cpu_children = _cpu(children) - _cpu(self.children_start)
        steps = steps or {}
        sources, sinks = set(sources), set(sinks)
        cost: dict[str, Any] = {
            "wall_seconds": round(time.perf_counter() - self.wall_start, 3),
            "cpu_seconds": round(cpu_self + cpu_children, 3),
            "cpu_user_seconds": round(own.ru_utime - self.self_start.ru_utime
                                      + children.ru_utime - self.children_start.ru_utime, 3),
            "cpu_system_seconds": round(own.ru_stime - self.self_start.ru_stime
                                        + children.ru_stime - self.children_start.ru_stime, 3),
            "cpu_children_seconds": round(cpu_children, 3),
            "peak_rss_bytes": _maxrss_bytes(own),
            "peak_rss_children_bytes": _maxrss_bytes(children),
            "bytes_read": sum(int(c.get("bytes_in", 0)) for s, c in steps.items() if s in sources),
            "bytes_written": sum(int(c.get("bytes_in", 0)) for s, c in steps.items() if s in sinks),
        }
        io_end = _io_chars()
        if self.io_start is not None and io_end is not None:
            cost["process_io"] = {"read_chars": io_end[0] - self.io_start[0],
                                  "write_chars": io_end[1] - self.io_start[1]}
        cost["steps"] = step_costs(steps, cost["cpu_seconds"])
        return cost


def step_costs(steps: Mapping[str, Mapping[str, Any]], cpu_seconds: float) -> dict[str, dict[str, Any]]:
    """Per step: bytes and batches in, share of all bytes in, and busy time / CPU estimate when measured."""
    total_bytes = sum(int(c.get("bytes_in", 0)) for c in steps.values()) or 0
    busy = {name: busy_seconds(c) for name, c in steps.items()}
    total_busy = sum(b for b in busy.values() if b)
    out: dict[str, dict[str, Any]] = {}
    for name, counts in steps.items():
        nbytes = int(counts.get("bytes_in", 0))
        entry: dict[str, Any] = {"bytes_in": nbytes, "batches_in": int(counts.get("batches_in", 0)),
                                 "bytes_share": round(nbytes / total_bytes, 4) if total_bytes else 0.0}
        if busy[name] is not None:
            entry["busy_seconds"] = round(busy[name], 6)
            entry["cpu_seconds_est"] = round(cpu_seconds * busy[name] / total_busy, 3) if total_busy else 0.0
        out[name] = entry
    return out
