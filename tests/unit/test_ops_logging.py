"""The run's logging set-up drops only the known-benign SDK worker error."""

from __future__ import annotations

import logging

from beam_etl.ops.logging import configure


def test_benign_finalize_error_is_dropped_and_others_pass(caplog):
    configure("WARNING")
    worker = logging.getLogger("apache_beam.runners.worker.sdk_worker")
    with caplog.at_level(logging.ERROR, logger=worker.name):
        try:
            raise RuntimeError("Bundle is not in a finalizable state for inst-7")
        except RuntimeError:
            worker.error("Error processing instruction inst-7. Original traceback is", exc_info=True)
        worker.error("Error processing instruction inst-8: something real")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Error processing instruction inst-8: something real"]


def test_configure_twice_adds_one_filter():
    configure("INFO")
    configure("INFO")
    worker = logging.getLogger("apache_beam.runners.worker.sdk_worker")
    assert len(worker.filters) == 1
    assert logging.getLogger("apache_beam").level == logging.INFO
