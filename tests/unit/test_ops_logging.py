"""The run's logging set-up, and the SDK worker patch for Prism's finalisation requests."""

from __future__ import annotations

import logging

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import sdk_worker

from beam_etl.ops import beam_compat
from beam_etl.ops.logging import configure


def test_configure_sets_beams_level():
    configure("INFO")
    assert logging.getLogger("apache_beam").level == logging.INFO


class _Worker:
    def __init__(self, cache: sdk_worker.BundleProcessorCache) -> None:
        self.bundle_processor_cache = cache


def test_finalising_a_released_bundle_is_an_empty_success_and_a_failed_one_is_still_an_error():
    beam_compat.install()
    beam_compat.install()  # idempotent
    cache = sdk_worker.BundleProcessorCache(None, None, None, {})
    cache.known_not_running_instruction_ids["released"] = True
    cache.failed_instruction_ids["failed"] = RuntimeError("boom")
    worker = _Worker(cache)
    request = beam_fn_api_pb2.FinalizeBundleRequest(instruction_id="released")
    response = sdk_worker.SdkWorker.finalize_bundle(worker, request, "finalize-1")
    assert response.instruction_id == "finalize-1" and response.HasField("finalize_bundle")
    assert not response.error
    failed = beam_fn_api_pb2.FinalizeBundleRequest(instruction_id="failed")
    response = sdk_worker.SdkWorker.finalize_bundle(worker, failed, "finalize-2")
    assert "has failed" in response.error
