"""API tokens: random, shown once, stored as SHA-256 hashes.

A token is 32 random bytes, so a fast unsalted hash is enough (nothing to brute-force,
unlike a password); a database leak does not reveal usable tokens. Clients send it as
`Authorization: Bearer <token>`, or as the password of HTTP Basic auth (what a browser
sends for `http://any:<token>@host/`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

PREFIX = "vlf_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_from_header(authorization: str | None) -> str | None:
    """The token in an Authorization header (Bearer, or Basic with the token as password)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None

