"""``BatchDirectRunner``: what DirectRunner runs a batch pipeline on, minus its Prism attempt.

Beam 2.75's DirectRunner first tries to download and start Prism (offline that fails, after a
network lookup and a job-server start-up), then falls back to the in-process FnApiRunner. For a
batch pipeline the preflight picks this runner instead: the same FnApiRunner, given the pipeline
options the way DirectRunner gives them, so worker processes (``--direct_running_mode=
multi_processing``) see every option (S3 endpoints, credentials, ...).
"""

from __future__ import annotations

from typing import Any

from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

QUALIFIED_NAME = "beam_etl.runners.direct.BatchDirectRunner"


class BatchDirectRunner(fn_runner.FnApiRunner):
    """The FnApiRunner with the pipeline options provisioned to its workers."""

    def run_pipeline(self, pipeline: Any, options: Any) -> Any:
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)
