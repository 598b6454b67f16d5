"""Offsets read in the current bundle, per worker thread, for a transactional WriteToKafka.

A bundle runs on one SDK worker thread, and every ``start_bundle`` of a bundle runs before any
``process``. ``WriteToKafka(transactional=True)`` clears its thread's ledger in ``start_bundle``;
``ReadFromKafka`` records the next offset of each partition it read; the writer takes the
entries in ``finish_bundle`` and commits them inside its transaction. So the ledger a writer
takes holds exactly the offsets read in its own bundle, and when the reader and the writer are
not fused into one bundle the writer finds nothing (and the reader's finaliser commits instead).
"""

from __future__ import annotations

import threading

_LOCAL = threading.local()


def _entries() -> dict[tuple[str, str, int], int]:
    entries = getattr(_LOCAL, "entries", None)
    if entries is None:
        entries = _LOCAL.entries = {}
    return entries


def record(group: str, topic: str, partition: int, next_offset: int) -> None:
    """Notes that this thread's bundle read ``topic/partition`` up to ``next_offset`` (exclusive)."""
    entries = _entries()
    key = (group, topic, partition)
    entries[key] = max(next_offset, entries.get(key, next_offset))


def clear() -> None:
    _entries().clear()


def take() -> dict[str, list[tuple[str, int, int]]]:
    """The recorded offsets, by group, as ``(topic, partition, next_offset)``; the ledger is emptied."""
    entries = _entries()
    by_group: dict[str, list[tuple[str, int, int]]] = {}
    for (group, topic, partition), offset in sorted(entries.items()):
        by_group.setdefault(group, []).append((topic, partition, offset))
    entries.clear()
    return by_group
