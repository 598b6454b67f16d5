"""Encryption of tenant secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The master key comes from ``$BEAM_ETL_API_SECRET_KEY`` (a Fernet key), else from the file named by
``$BEAM_ETL_API_SECRET_KEY_FILE``, else from ``<output dir>/_api/secret.key``, which is created
(mode 0600) on first use. Losing the key makes the stored secrets unreadable: back it up with the
state store, or keep it in a secret manager (deploy/terraform/aws puts it in Secrets Manager).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_ENV = "BEAM_ETL_API_SECRET_KEY"
KEY_FILE_ENV = "BEAM_ETL_API_SECRET_KEY_FILE"


class VaultError(Exception):
    """The master key is missing or does not decrypt a stored secret."""


def _load_key(default_file: Path) -> bytes:
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = Path(os.environ.get(KEY_FILE_ENV) or default_file)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    return path.read_bytes().strip()


class Vault:
    """Encrypts and decrypts secret values with the master key."""

    def __init__(self, default_key_file: Path) -> None:
        try:
            self._fernet = Fernet(_load_key(default_key_file))
        except ValueError as err:
            raise VaultError(f"the secret master key is not a valid Fernet key ({KEY_ENV} / {KEY_FILE_ENV})") from err

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise VaultError("a stored secret does not decrypt with this master key (was the key changed?)") from None
