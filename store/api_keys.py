"""API key format and hashing: `mr_<8-char prefix>_<secret>`, stored only as prefix + Argon2 hash."""

from __future__ import annotations

import hashlib
import re
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

PREFIX_LENGTH = 8
SECRET_LENGTH = 40
_ALPHABET = string.ascii_letters + string.digits
_KEY_PATTERN = re.compile(rf"^mr_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")

_hasher = PasswordHasher()


def generate_key() -> tuple[str, str]:
    """A new key and its lookup prefix. The key is shown once and never stored."""
    prefix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(PREFIX_LENGTH))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return f"mr_{prefix}_{secret}", prefix


def key_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, or None for anything that cannot be one of ours."""
    match = _KEY_PATTERN.match(key)
    return match.group(1) if match else None


def hash_key(key: str) -> str:
    return _hasher.hash(key)


def verify_key(key_hash: str, key: str) -> bool:
    """Argon2 verification: tens of milliseconds by design, so never call it on an event loop."""
    try:
        return _hasher.verify(key_hash, key)
    except (VerificationError, InvalidHashError):
        return False


def key_fingerprint(key: str) -> str:
    """SHA-256 of the whole key: the in-memory cache's index, so the cache never holds a key.

    Any string has one: a header that is not UTF-8 reaches us with lone surrogates in it (mitmproxy
    decodes with surrogateescape), and such a key is simply one nobody holds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    return bool(password_hash) and verify_key(password_hash, password)
