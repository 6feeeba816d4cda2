"""Encryption at rest of per-job callback secrets (Fernet, keyed from `GMIQ_SECRET_KEY`).

Without `GMIQ_SECRET_KEY` a random key is generated once under `var_dir` (right for standalone
and single-machine setups; API and workers on several machines must share a configured key).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "secret_key"


class SecretUnreadableError(Exception):
    """A stored secret does not decrypt with any configured key (the key changed)."""


def derive_fernet_key(secret_key: str) -> bytes:
    """A Fernet key from any operator-chosen string (HKDF-SHA256, fixed context)."""
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gmiq callback secret"
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(derived)


def load_or_create_key_file(var_dir: str) -> str:
    """The key kept in `var_dir`, created atomically (0600) by whichever process comes first."""
    path = Path(var_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(scratch, path)  # fails if another process linked first; theirs wins
            log.warning("generated GMIQ_SECRET_KEY in %s; set it explicitly across hosts", path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    return path.read_text().strip()


class SecretBox:
    """Seals and opens secrets; the first key seals, every key opens (for key rotation).
    Keys are loaded on first use, so processes that never see a per-job secret need none."""

    def __init__(self, secret_key: str | None, var_dir: str) -> None:
        self._secret_key = secret_key
        self._var_dir = var_dir
        self._fernet: MultiFernet | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The deployment's box: `GMIQ_SECRET_KEY`, else a key file under `GMIQ_VAR_DIR`."""
        key = settings.secret_key.get_secret_value() if settings.secret_key else None
        return cls(key, settings.var_dir)

    def _keys(self) -> MultiFernet:
        with self._lock:
            if self._fernet is None:
                raw = self._secret_key or load_or_create_key_file(self._var_dir)
                parts = [part.strip() for part in raw.split(",") if part.strip()]
                self._fernet = MultiFernet([Fernet(derive_fernet_key(part)) for part in parts])
            return self._fernet

    def seal(self, plaintext: str) -> str:
        """The encrypted form, as text."""
        return self._keys().encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        """The plaintext; SecretUnreadableError if no key opens it."""
        try:
            return self._keys().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadableError(
                "the stored secret does not decrypt with GMIQ_SECRET_KEY"
            ) from None
