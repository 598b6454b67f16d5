"""Secret values seen while loading a template, and redaction of text that may hold them."""

from __future__ import annotations

import re
from typing import Any

_SECRETS: set[str] = set()
_MIN_SECRET_LEN = 4
REDACTED = "***"
SECRET_KEY_RE = re.compile(r"(password|passwd|secret|token|api[_-]?key|credential)", re.IGNORECASE)
#: environment variables whose values are secrets (or may embed one, like a connection URI)
SECRET_ENV_RE = re.compile(r"(pass|pwd|secret|token|key|credential|auth|private|uri|url|dsn|conn)", re.IGNORECASE)


def is_secret_env(name: str) -> bool:
    """Whether ``${name}`` holds a secret: PGPASSWORD, AWS_SECRET_ACCESS_KEY, MONGO_URI, API_TOKEN, ..."""
    return bool(SECRET_ENV_RE.search(name))


def register_secret(value: str) -> None:
    """Remembers a value that came from the environment or a secret file."""
    if value and len(value) >= _MIN_SECRET_LEN:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Replaces every registered secret value in ``text``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    """Copies a config mapping with secret-looking keys and registered values hidden."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if SECRET_KEY_RE.search(str(key)) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, dict):
            out[key] = redact_mapping(value)
        elif isinstance(value, str):
            out[key] = redact(value)
        else:
            out[key] = value
    return out
