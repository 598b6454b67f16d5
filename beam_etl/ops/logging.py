"""Logging set-up for runs: levels, and known-benign noise from Beam's SDK worker filtered out."""

from __future__ import annotations

import logging

# Prism asks every bundle of a stage that contains a finalising DoFn (ReadFromKafka) to finalise,
# including the bundles that only split restrictions and so registered no callback; the SDK worker
# answers those with this error. Offsets of the bundles that did read are committed normally.
_BENIGN = ("Bundle is not in a finalizable state",)


class _DropBenignWorkerErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not any(marker in text for marker in _BENIGN)


def configure(beam_level: str) -> None:
    """Root at WARNING with a short format; Beam at ``beam_level``; benign worker errors dropped."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(beam_level.upper())
    worker = logging.getLogger("apache_beam.runners.worker.sdk_worker")
    if not any(isinstance(f, _DropBenignWorkerErrors) for f in worker.filters):
        worker.addFilter(_DropBenignWorkerErrors())
