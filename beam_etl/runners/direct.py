"""``BatchDirectRunner``: what DirectRunner runs a batch pipeline on, minus its Prism attempt.

Beam 2.75's DirectRunner first tries to download and start Prism (offline that fails, after a
network lookup and a job-server start-up), then falls back to the in-process FnApiRunner. For a
batch pipeline the preflight picks this runner instead: the same FnApiRunner, given the pipeline
options the way DirectRunner gives them, so worker processes (``--direct_running_mode=
multi_processing``) see every option (S3 endpoints, credentials, ...).

It also shortens Beam's state sampling period for the run (``SAMPLING_PERIOD_MS``): every bundle
starts a sampling thread that sleeps up to 200 ms between samples, and the bundle's end waits for
that sleep to finish (``statesampler_fast.pyx``: "May have to wait up to sampling_period_ms"), so
a bundle that ran longer than a second or so cost up to 0.2 s more. Beam uses the samples only
for its per-step timing counters, which beam_etl does not read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.worker import statesampler

QUALIFIED_NAME = "beam_etl.runners.direct.BatchDirectRunner"
SAMPLING_PERIOD_MS = 20  # Beam's default: 200


@contextlib.contextmanager
def short_state_sampling(period_ms: int = SAMPLING_PERIOD_MS) -> Iterator[None]:
    """Bundles started meanwhile sample every ``period_ms`` (their default argument is swapped back after)."""
    init = statesampler.StateSampler.__init__
    saved = init.__defaults__
    if saved is None or len(saved) != 1:  # not the signature this was written for: leave Beam alone
        yield
        return
    init.__defaults__ = (period_ms,)
    try:
        yield
    finally:
        init.__defaults__ = saved


class BatchDirectRunner(fn_runner.FnApiRunner):
    """The FnApiRunner with the pipeline options provisioned to its workers."""

    def run_pipeline(self, pipeline: Any, options: Any) -> Any:
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        with short_state_sampling():
            return super().run_pipeline(pipeline, options)
