"""A narrow fix for Beam 2.75's SDK worker when Prism finalises bundles.

Prism sends a FinalizeBundle request for every bundle of a stage that contains a finalising
DoFn (``ReadFromKafka``), including bundles in which that DoFn registered no callback (those that
only split restrictions). The SDK worker released such bundles already, answers the request with
``RuntimeError: Bundle is not in a finalizable state`` and prints its traceback to stderr. There
is nothing to finalise in such a bundle, so this patch answers with an empty success instead.
A bundle that failed, or one still running, is left to Beam as before.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_INSTALLED = False


def install() -> None:
    """Patches ``SdkWorker.finalize_bundle`` once per process (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        from apache_beam.portability.api import beam_fn_api_pb2
        from apache_beam.runners.worker import sdk_worker

        original = sdk_worker.SdkWorker.finalize_bundle

        def finalize_bundle(self: Any, request: Any, instruction_id: str) -> Any:
            cache = self.bundle_processor_cache
            target = request.instruction_id
            with cache._lock:
                released = (target in cache.known_not_running_instruction_ids
                            and target not in cache.active_bundle_processors
                            and target not in cache.failed_instruction_ids)
            if released:  # nothing was registered in that bundle: nothing to finalise
                return beam_fn_api_pb2.InstructionResponse(
                    instruction_id=instruction_id, finalize_bundle=beam_fn_api_pb2.FinalizeBundleResponse())
            return original(self, request, instruction_id)

        sdk_worker.SdkWorker.finalize_bundle = finalize_bundle
        _INSTALLED = True
