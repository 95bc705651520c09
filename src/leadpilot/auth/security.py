"""Password hashing (argon2), token signing (JWT HS256) and login throttling."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm.models import LoginThrottle, User
from leadpilot.db.base import utcnow

_hasher = PasswordHasher()
# Verified against when the username is unknown, so a miss costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("leadpilot-timing-equaliser")
MIN_PASSWORD_LENGTH = 8
USERNAME_MAX = 80


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    if len(password) < MIN_PASSWORD_LENGTH:
        from leadpilot.crm.errors import Invalid

        raise Invalid(f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether the password matches the hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def create_access_token(user: User, *, secret: str, minutes: int) -> str:
    """A signed JWT naming the user and role, valid for ``minutes``."""
    now = datetime.now(UTC)
    claims = {"sub": str(user.id), "role": user.role, "iat": now, "exp": now + timedelta(minutes=minutes)}
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_access_token(token: str, *, secret: str) -> dict[str, Any]:
    """The token's claims; raises jwt.InvalidTokenError when forged, expired or malformed."""
    return jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})


@dataclass(frozen=True)
class LoginResult:
    """Outcome of a login attempt: the user, or why not and how long to wait."""

    user: User | None
    retry_after: int = 0


def authenticate(
    session: Session, username: str, password: str, *, free_failures: int = 3, max_delay: int = 900
) -> LoginResult:
    """Check a username and password, slowing down repeated failures (exponential wait per username)."""
    now = utcnow()
    if len(username) > USERNAME_MAX:  # no such user can exist; answer like a wrong password, store nothing
        verify_password(_DUMMY_HASH, password)
        return LoginResult(None)
    throttle = session.get(LoginThrottle, username)
    if throttle and throttle.blocked_until and throttle.blocked_until > now:
        return LoginResult(None, retry_after=max(1, int((throttle.blocked_until - now).total_seconds() + 0.999)))
    user = session.scalar(select(User).where(User.username == username))
    ok = verify_password(user.password_hash if user else _DUMMY_HASH, password)
    if ok and user is not None and user.is_active:
        if throttle:
            session.delete(throttle)
        return LoginResult(user)
    if throttle is None:
        throttle = LoginThrottle(username=username, failures=0)
        session.add(throttle)
    throttle.failures += 1
    excess = throttle.failures - free_failures
    if excess > 0:
        delay = min(max_delay, 2 ** (excess - 1))
        throttle.blocked_until = now + timedelta(seconds=delay)
    return LoginResult(None)
