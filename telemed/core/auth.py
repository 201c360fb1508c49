"""Accounts, roles, sessions and sign-in (OAuth2 password flow).

Baseline of a level-3 system (MLPS 2.0, GB/T 22239-2019 8.1.4.1): five failed sign-ins lock the account for 30
minutes, counted atomically so that parallel guesses cannot exceed the limit; access tokens live at most 15
minutes; a refresh is refused after 30 idle minutes; sign-out and account disable end sessions at once because
every token names a server-side session that is checked on each request.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from sqlalchemy import Boolean, ForeignKey, Integer, String, Uuid, and_, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.config import Settings
from telemed.core.db import Base, UTCDateTime, utcnow
from telemed.core.errors import Locked, Unauthenticated
from telemed.core.security import (
    DUMMY_HASH,
    TokenSigner,
    digest_token,
    new_refresh_token,
    verify_password,
)

#: last_seen_at is written at most this often, so that reads do not all turn into writes.
TOUCH_EVERY: Final = dt.timedelta(seconds=30)
#: How long a checked session is trusted without a database look-up. Revocation in this process (sign-out, a
#: disabled account, a reused refresh token) forgets it at once; another worker process may still accept the
#: session for at most this long. The token's signature and expiry are checked on every request regardless.
PRINCIPAL_CACHE_SECONDS: Final = 1.0
_PRINCIPAL_CACHE_SIZE: Final = 4096


class Role(StrEnum):
    village_doctor = "village_doctor"
    township_doctor = "township_doctor"
    specialist = "specialist"
    radiologist = "radiologist"
    bureau_analyst = "bureau_analyst"
    admin = "admin"


#: Roles that treat patients, and so may read patient data within their facility scope.
CLINICAL_ROLES: Final = frozenset({Role.village_doctor, Role.township_doctor, Role.specialist, Role.radiologist})

ROLE_NAMES: Final = {
    Role.village_doctor: ("村医", "Village doctor"),
    Role.township_doctor: ("乡镇医生", "Township doctor"),
    Role.specialist: ("专科医生", "Specialist"),
    Role.radiologist: ("放射科医生", "Radiologist"),
    Role.bureau_analyst: ("卫健局分析员", "Health bureau analyst"),
    Role.admin: ("系统管理员", "Administrator"),
}


class UserAccount(Base):
    __tablename__ = "user_account"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(32))
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    department_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("department.id"))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthSession(Base):
    __tablename__ = "auth_session"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("user_account.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    refresh_expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    refresh_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Principal:
    """The signed-in user a request acts for."""

    user_id: uuid.UUID
    username: str
    display_name: str
    role: Role
    facility_id: uuid.UUID | None
    session_id: uuid.UUID
    _cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_clinical(self) -> bool:
        return self.role in CLINICAL_ROLES


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID


class AccountLocked(Locked):
    def __init__(self) -> None:
        super().__init__(
            "连续登录失败次数过多，账户已锁定，请稍后再试",
            "Too many failed sign-ins; the account is locked, try later",
        )


class BadCredentials(Unauthenticated):
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("用户名或密码错误", "Wrong username or password")


class SessionEnded(Unauthenticated):
    code = "session_ended"

    def __init__(self) -> None:
        super().__init__("会话已结束，请重新登录", "Your session has ended; please sign in again")


async def reserve_attempt(session: AsyncSession, username: str, settings: Settings) -> UserAccount | None:
    """Count one sign-in attempt before the password is checked; None when the account may not try now.

    One UPDATE both checks and counts, so concurrent guesses serialise on the row (PostgreSQL row lock, SQLite
    ``BEGIN IMMEDIATE``): at most ``lockout_threshold`` passwords are ever verified before the lock.
    An expired lock starts a fresh count.
    """
    now = utcnow()
    lock_expired = and_(UserAccount.locked_until.is_not(None), UserAccount.locked_until <= now)
    stmt = (
        update(UserAccount)
        .where(
            UserAccount.username == username,
            UserAccount.disabled.is_(False),
            or_(
                lock_expired,
                and_(
                    UserAccount.locked_until.is_(None),
                    UserAccount.failed_attempts < settings.lockout_threshold,
                ),
            ),
        )
        .values(
            failed_attempts=case((lock_expired, 1), else_=UserAccount.failed_attempts + 1),
            locked_until=case((lock_expired, None), else_=UserAccount.locked_until),
        )
        .returning(UserAccount.id)
    )
    user_id = (await session.execute(stmt)).scalar_one_or_none()
    if user_id is None:
        return None
    return await session.get(UserAccount, user_id, populate_existing=True)


async def sign_in(
    sessions: AsyncSession, signer: TokenSigner, settings: Settings, *, username: str, password: str
) -> tuple[UserAccount, IssuedTokens]:
    """Check the password and open a session. ``sessions`` must not be inside a transaction."""
    async with sessions.begin():
        account = await reserve_attempt(sessions, username, settings)
        # Refused before any password check: the username is unknown (None), disabled (True) or locked (False).
        refused_disabled = (
            None
            if account is not None
            else await sessions.scalar(select(UserAccount.disabled).where(UserAccount.username == username))
        )
        candidate_hash = account.password_hash if account is not None else DUMMY_HASH
    # The slow hash runs outside the transaction so that a queue of sign-ins does not hold the write lock; it runs
    # even for a refused attempt, so that the answer takes as long whatever the reason.
    valid = verify_password(candidate_hash, password)
    if account is None:
        raise AccountLocked() if refused_disabled is False else BadCredentials()
    if not valid:
        if account.failed_attempts >= settings.lockout_threshold:
            async with sessions.begin():
                await sessions.execute(
                    update(UserAccount)
                    .where(UserAccount.id == account.id)
                    .values(locked_until=utcnow() + dt.timedelta(minutes=settings.lockout_minutes))
                )
        raise BadCredentials()
    async with sessions.begin():
        await sessions.execute(
            update(UserAccount).where(UserAccount.id == account.id).values(failed_attempts=0, locked_until=None)
        )
        tokens = await open_session(sessions, signer, settings, account)
    return account, tokens


async def open_session(
    session: AsyncSession, signer: TokenSigner, settings: Settings, account: UserAccount
) -> IssuedTokens:
    now = utcnow()
    refresh = new_refresh_token()
    record = AuthSession(
        id=uuid.uuid4(),
        user_id=account.id,
        created_at=now,
        last_seen_at=now,
        refresh_expires_at=now + dt.timedelta(hours=settings.refresh_token_hours),
        refresh_hash=digest_token(refresh),
    )
    session.add(record)
    await session.flush()
    return _tokens(signer, settings, record, refresh, now)


def _tokens(
    signer: TokenSigner, settings: Settings, record: AuthSession, refresh: str, now: dt.datetime
) -> IssuedTokens:
    lifetime = dt.timedelta(minutes=settings.access_token_minutes)
    access = signer.issue(session_id=str(record.id), user_id=str(record.user_id), lifetime=lifetime, now=now)
    return IssuedTokens(access, refresh, int(lifetime.total_seconds()), record.id)


def _idle_limit(settings: Settings) -> dt.timedelta:
    return dt.timedelta(minutes=settings.idle_timeout_minutes)


async def refresh_session(
    session: AsyncSession, signer: TokenSigner, settings: Settings, *, refresh_token: str
) -> tuple[UserAccount, IssuedTokens]:
    """Rotate the refresh token; refused once revoked, past its absolute lifetime or idle too long."""
    now = utcnow()
    record = await session.scalar(
        select(AuthSession).where(AuthSession.refresh_hash == digest_token(refresh_token)).with_for_update()
    )
    if record is None or record.revoked_at is not None or record.refresh_expires_at <= now:
        raise SessionEnded()
    account = await session.get(UserAccount, record.user_id)
    if account is None or account.disabled or now - record.last_seen_at > _idle_limit(settings):
        _checked_sessions.forget_session(record.id)
        record.revoked_at = now
        await session.flush()
        raise SessionEnded()
    refresh = new_refresh_token()
    record.refresh_hash = digest_token(refresh)
    record.last_seen_at = now
    await session.flush()
    return account, _tokens(signer, settings, record, refresh, now)


async def revoke_session(session: AsyncSession, session_id: uuid.UUID) -> None:
    _checked_sessions.forget_session(session_id)
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_all_sessions(session: AsyncSession, user_id: uuid.UUID) -> None:
    _checked_sessions.forget_user(user_id)
    await session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def resolve_principal(
    sessions: Callable[[], AsyncSession], signer: TokenSigner, settings: Settings, token: str
) -> Principal:
    """The principal behind a bearer token, checked against its live session and account on every request.

    ``sessions`` makes a database session (``Database.read_session``): it is called only when the token's session
    was not checked in the last :data:`PRINCIPAL_CACHE_SECONDS`, so most requests open none.
    """
    now = utcnow()
    claims = signer.verify(token, now=now)
    if claims is None:
        raise Unauthenticated("登录凭证无效或已过期", "The access token is invalid or has expired")
    session_id = uuid.UUID(claims.session_id)
    cached = _checked_sessions.get(session_id)
    if cached is not None:
        return cached
    async with sessions() as session:
        return await _check_session(session, settings, session_id, now)


async def _check_session(
    session: AsyncSession, settings: Settings, session_id: uuid.UUID, now: dt.datetime
) -> Principal:
    async with session.begin():
        row = (
            await session.execute(
                select(AuthSession, UserAccount)
                .join(UserAccount, UserAccount.id == AuthSession.user_id)
                .where(AuthSession.id == session_id)
            )
        ).one_or_none()
        if row is None:
            raise SessionEnded()
        auth_session, account = row
        idle = now - auth_session.last_seen_at > _idle_limit(settings)
        if auth_session.revoked_at is not None or account.disabled or idle:
            raise SessionEnded()
        must_touch = now - auth_session.last_seen_at > TOUCH_EVERY
    if must_touch:
        async with session.begin():
            await session.execute(update(AuthSession).where(AuthSession.id == auth_session.id).values(last_seen_at=now))
    principal = Principal(
        user_id=account.id,
        username=account.username,
        display_name=account.display_name,
        role=Role(account.role),
        facility_id=account.facility_id,
        session_id=auth_session.id,
    )
    _checked_sessions.put(principal)
    return principal


class _CheckedSessions:
    """Sessions checked against the database in the last :data:`PRINCIPAL_CACHE_SECONDS` (one per process).

    A signed-in client sending a burst of requests (a village clinic's STOW of a study, a viewer scrolling a
    series) then pays for one session look-up a second instead of one per request.
    """

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, tuple[float, Principal]] = {}

    def get(self, session_id: uuid.UUID) -> Principal | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            self._entries.pop(session_id, None)
            return None
        return entry[1]

    def put(self, principal: Principal) -> None:
        if len(self._entries) >= _PRINCIPAL_CACHE_SIZE:
            now = time.monotonic()
            for key in [key for key, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[key]
            if len(self._entries) >= _PRINCIPAL_CACHE_SIZE:
                self._entries.clear()
        self._entries[principal.session_id] = (time.monotonic() + PRINCIPAL_CACHE_SECONDS, principal)

    def forget_session(self, session_id: uuid.UUID) -> None:
        self._entries.pop(session_id, None)

    def forget_user(self, user_id: uuid.UUID) -> None:
        for key in [key for key, (_, principal) in self._entries.items() if principal.user_id == user_id]:
            del self._entries[key]


_checked_sessions: Final = _CheckedSessions()
