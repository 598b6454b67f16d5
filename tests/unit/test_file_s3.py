"""Beam's S3 filesystem reuses one boto3 client per process and settings (no server needed)."""

from __future__ import annotations

from apache_beam.io.aws.clients.s3 import boto3_client
from apache_beam.options.pipeline_options import PipelineOptions

from beam_etl.io import _file_common, _file_s3  # noqa: F401 - importing _file_common installs the cache


def test_clients_are_shared_per_settings(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _file_s3.clear()
    options = PipelineOptions(["--s3_endpoint_url=http://127.0.0.1:1"])
    first, second = boto3_client.Client(options), boto3_client.Client(options)
    assert first is not second  # Beam's wrappers keep their own download state...
    assert first.client is second.client  # ...around one boto3 client
    assert first.client.meta.endpoint_url == "http://127.0.0.1:1"
    other = boto3_client.Client(PipelineOptions(["--s3_endpoint_url=http://127.0.0.1:2"]))
    assert other.client is not first.client and other.client.meta.endpoint_url == "http://127.0.0.1:2"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3")  # the environment is part of the settings
    from_env = boto3_client.Client(PipelineOptions([]))
    assert from_env.client.meta.endpoint_url == "http://127.0.0.1:3"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4")
    assert boto3_client.Client(PipelineOptions([])).client.meta.endpoint_url == "http://127.0.0.1:4"
    assert _file_s3.install() is True  # idempotent
