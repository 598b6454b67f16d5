"""One boto3 S3 client per process and settings for Beam's S3 filesystem.

Beam's ``S3FileSystem`` builds a new ``boto3.session.Session()`` and client for every call
(``open``, ``match``, ``rename``, ``delete``...). Building a client loads botocore's JSON
service models, about 0.2 s each time, which made reading 200 small files take over a minute.
boto3 clients are thread-safe, so this module hands Beam's wrapper (``boto3_client.Client``,
which keeps its own per-instance download state) a cached client instead: one per process,
per keyword arguments (endpoint, region, keys from ``S3Options``) and per relevant ``AWS_*``
environment (so a changed ``AWS_ENDPOINT_URL`` or credential gets a fresh client).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE")
_lock = threading.Lock()
_installed = False


class _CachingBoto3:
    """Stands in for the ``boto3`` module inside Beam's ``boto3_client``: ``session.Session().client(...)``."""

    def __init__(self, boto3: Any) -> None:
        self._boto3 = boto3
        self._clients: dict[str, Any] = {}
        self.session = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._boto3, name)

    def Session(self) -> _CachingBoto3:  # noqa: N802 - the name Beam calls
        return self

    def client(self, **kwargs: Any) -> Any:
        key = _cache_key(kwargs)
        with _lock:
            client = self._clients.get(key)
            if client is None:
                client = self._boto3.session.Session().client(**kwargs)
                self._clients[key] = client
            return client

    def clear(self) -> None:
        with _lock:
            self._clients.clear()


def _cache_key(kwargs: dict[str, Any]) -> str:
    parts = [f"pid={os.getpid()}"]  # a forked worker builds its own connections
    parts += [f"{k}={kwargs[k]!r}" for k in sorted(kwargs)]
    parts += [f"{k}={os.environ.get(k, '')}" for k in _ENV_KEYS]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()  # keys and secrets are not kept as text


def _client_kwargs(options: Any) -> dict[str, Any]:
    """The keyword arguments Beam's ``boto3_client.Client`` passes to ``session.client('s3', ...)``."""
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    o = (options if isinstance(options, PipelineOptions) else PipelineOptions([])).view_as(S3Options)
    return {"service_name": "s3", "region_name": o.s3_region_name, "api_version": o.s3_api_version,
            "use_ssl": not o.s3_disable_ssl, "verify": o.s3_verify, "endpoint_url": o.s3_endpoint_url,
            "aws_access_key_id": o.s3_access_key_id, "aws_secret_access_key": o.s3_secret_access_key,
            "aws_session_token": o.s3_session_token}


_probes: dict[str, Any] = {}


def probe_client(options: Any) -> Any:
    """A boto3 S3 client with Beam's settings but short timeouts and one retry, for quick checks."""
    import boto3
    from botocore.config import Config

    kwargs = _client_kwargs(options)
    key = _cache_key(kwargs)
    with _lock:
        client = _probes.get(key)
        if client is None:
            config = Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"})
            client = boto3.session.Session().client(config=config, **kwargs)
            _probes[key] = client
        return client


def bucket_problem(path: str, options: Any) -> str:
    """'' when the bucket of an ``s3://`` path answers; otherwise what is wrong, naming bucket and endpoint.

    Missing buckets and unreachable endpoints are reported at once, instead of after the minutes
    of retries Beam's S3 listing spends on them.
    """
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    bucket = path[len("s3://"):].split("/", 1)[0]
    try:
        client = probe_client(options)
    except Exception:  # noqa: BLE001 - bad settings: Beam's own call will say what is wrong
        return ""
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"bucket {bucket!r} does not exist at {endpoint}"
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"access to bucket {bucket!r} at {endpoint} is denied (check the credentials)"
        return ""
    except EndpointConnectionError as exc:
        return (f"cannot reach the S3 endpoint {endpoint} ({exc}); set s3_endpoint_url (or AWS_ENDPOINT_URL) "
                "for a non-AWS store")
    except BotoCoreError:
        return ""
    return ""


def install() -> bool:
    """Makes Beam's S3 filesystem reuse boto3 clients; returns False when Beam's AWS support is absent."""
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            from apache_beam.io.aws.clients.s3 import boto3_client
        except ImportError:
            return False
        if getattr(boto3_client, "boto3", None) is None:
            return False
        if not isinstance(boto3_client.boto3, _CachingBoto3):
            boto3_client.boto3 = _CachingBoto3(boto3_client.boto3)
        _installed = True
        return True


def clear() -> None:
    """Drops the cached clients (tests; credentials rotated by hand)."""
    from apache_beam.io.aws.clients.s3 import boto3_client

    if isinstance(getattr(boto3_client, "boto3", None), _CachingBoto3):
        boto3_client.boto3.clear()
