"""API keys and roles: how a request proves which tenant it acts for, and what it may do.

A key reads ``bek_<key_id>_<secret>``. Only ``key_id`` (the lookup handle, shown in listings and
the audit trail) and ``sha256(salt + secret)`` with a per-key random salt are stored; the secret
is printed once when the key is made. The secret is 256 random bits, so a salted fast hash is
enough: there is nothing to brute-force that a slow hash would protect (the reasoning GitHub and
Stripe tokens follow). Comparison is constant-time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "bek"
KEY_RE = re.compile(r"^bek_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: roles, weakest first; a role may do everything a weaker one may
ROLES = ("viewer", "operator", "admin")


def role_rank(role: str) -> int:
    """Position of ``role`` in ROLES (ValueError when unknown)."""
    return ROLES.index(role)


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who made a request: the tenant, the key and its role."""

    tenant_id: str
    tenant: str
    role: str
    key_id: str

    def may(self, role: str) -> bool:
        """Whether this principal's role is ``role`` or stronger."""
        return role_rank(self.role) >= role_rank(role)


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``api_key`` is shown once; the rest is stored."""

    key_id: str
    api_key: str
    salt: str
    digest: str


def digest(secret: str, salt: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key() -> NewKey:
    """A random key and its stored form."""
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    return NewKey(key_id=key_id, api_key=f"{KEY_PREFIX}_{key_id}_{secret}", salt=salt, digest=digest(secret, salt))


def parse_key(raw: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = KEY_RE.match(raw.strip())
    return (match.group(1), match.group(2)) if match else None


def verify(secret: str, salt: str, stored_digest: str) -> bool:
    """Constant-time check of a presented secret against the stored digest."""
    return hmac.compare_digest(digest(secret, salt), stored_digest)
