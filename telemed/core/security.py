"""Passwords and tokens.

Passwords are hashed with Argon2id and must meet the MLPS level-3 complexity rule (at least 12 characters, at
least three of four character classes, not containing the username). Access tokens are short-lived (at most 15
minutes) HMAC-signed documents naming a server-side session, so that sign-out and account disable revoke at once.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher: Final = PasswordHasher()
#: Verified against when the username is unknown, so both cases cost the same time (no user enumeration).
DUMMY_HASH: Final = _hasher.hash("telemed-dummy-password-for-timing")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_problems(password: str, username: str) -> list[str]:
    """Reason codes for a password that breaks the policy; empty when it is acceptable."""
    problems = []
    if len(password) < 12:
        problems.append("password.too_short")
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    if classes < 3:
        problems.append("password.too_simple")
    if username and username.lower() in password.lower():
        problems.append("password.contains_username")
    return problems


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class AccessClaims:
    session_id: str
    user_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"telemed access token|" + secret).digest()

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), "sha256").digest())

    def issue(self, *, session_id: str, user_id: str, lifetime: dt.timedelta, now: dt.datetime) -> str:
        claims = {"sid": session_id, "sub": user_id, "iat": int(now.timestamp()),
                  "exp": int((now + lifetime).timestamp())}  # fmt: skip
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, *, now: dt.datetime) -> AccessClaims | None:
        body, _, signature = token.partition(".")
        if not body or not hmac.compare_digest(self._sign(body), signature):
            return None
        try:
            claims = json.loads(_unb64(body))
            issued = dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC)
            expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
            session_id, user_id = str(claims["sid"]), str(claims["sub"])
        except (ValueError, KeyError, TypeError):
            return None
        if now >= expires:
            return None
        return AccessClaims(session_id=session_id, user_id=user_id, issued_at=issued, expires_at=expires)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def digest_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
