"""Sign-in, lockout, token lifetime, refresh, idle timeout and revocation (MLPS 2.0 level 3, 8.1.4.1)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from telemed.core.auth import AuthSession, UserAccount
from telemed.core.security import password_problems
from tests.conftest import PASSWORD, Community


async def _token(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": username, "password": password})


async def _account(app: FastAPI, username: str) -> UserAccount:
    async with app.state.ctx.db.read_session() as session:
        account = await session.scalar(select(UserAccount).where(UserAccount.username == username))
        assert account is not None
        return account


async def test_sign_in_issues_short_lived_token(client: httpx.AsyncClient, community: Community) -> None:
    response = await _token(client, "vd_a1", PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] <= 900
    assert body["role"] == "village_doctor"
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["username"] == "vd_a1"
    assert me.json()["facility_name"] == "东岙村卫生室"


async def test_wrong_password_and_unknown_user_look_the_same(client: httpx.AsyncClient, community: Community) -> None:
    wrong = await _token(client, "vd_a1", "Wrong-Passw0rd!")
    unknown = await _token(client, "nobody", "Wrong-Passw0rd!")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_five_failures_lock_the_account_even_for_the_right_password(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    for _ in range(5):
        assert (await _token(client, "vd_a1", "Wrong-Passw0rd!")).status_code == 401
    locked = await _token(client, "vd_a1", PASSWORD)
    assert locked.status_code == 423
    assert locked.headers["content-type"] == "application/problem+json"
    account = await _account(app, "vd_a1")
    assert account.locked_until is not None
    assert dt.timedelta(minutes=29) < account.locked_until - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=30)
    # Thirty minutes later the lock has expired and the right password works again, resetting the count.
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(
            update(UserAccount)
            .where(UserAccount.username == "vd_a1")
            .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert (await _token(client, "vd_a1", PASSWORD)).status_code == 200
    account = await _account(app, "vd_a1")
    assert account.failed_attempts == 0
    assert account.locked_until is None


async def test_success_resets_the_failure_count(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    for _ in range(4):
        await _token(client, "vd_a1", "Wrong-Passw0rd!")
    assert (await _token(client, "vd_a1", PASSWORD)).status_code == 200
    assert (await _account(app, "vd_a1")).failed_attempts == 0


async def test_parallel_guesses_cannot_exceed_the_limit(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    responses = await asyncio.gather(*(_token(client, "vd_a1", f"Wrong-Passw0rd!{i}") for i in range(30)))
    statuses = [r.status_code for r in responses]
    # Exactly five passwords were checked (401); every other guess was refused unchecked (423).
    assert statuses.count(401) == 5, statuses
    assert statuses.count(423) == 25
    account = await _account(app, "vd_a1")
    assert account.failed_attempts == 5
    assert account.locked_until is not None


async def test_logout_revokes_the_token_at_once(client: httpx.AsyncClient, community: Community) -> None:
    headers = await community.login(client, "vd_a1")
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    after = await client.get("/api/v1/me", headers=headers)
    assert after.status_code == 401
    assert after.json()["code"] == "session_ended"


async def test_a_session_checked_a_moment_ago_is_not_looked_up_again(
    app: FastAPI, client: httpx.AsyncClient, community: Community, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request of a token reads its session and account; the next ones, within the cache's second,
    open no database session at all for it (a STOW-RS burst, a viewer scrolling a series)."""
    db = app.state.ctx.db
    opened: list[str] = []
    read_session = db.read_session

    def counting() -> AsyncSession:
        opened.append("read")
        return read_session()

    monkeypatch.setattr(db, "read_session", counting)
    headers = await community.login(client, "vd_a1")
    opened.clear()
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    first = len(opened)
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    assert len(opened) - first == first - 1


async def test_disabling_an_account_ends_its_sessions(client: httpx.AsyncClient, community: Community) -> None:
    doctor = await community.login(client, "vd_a1")
    admin = await community.login(client, "admin")
    disabled = await client.post(f"/api/v1/staff/{community.users['vd_a1']}/disable", headers=admin)
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    assert (await client.get("/api/v1/me", headers=doctor)).status_code == 401
    assert (await _token(client, "vd_a1", PASSWORD)).status_code == 401


async def test_refresh_rotates_and_idle_session_ends(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    first = (await _token(client, "vd_a1", PASSWORD)).json()
    refreshed = await client.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert refreshed.status_code == 200
    second = refreshed.json()
    assert second["refresh_token"] != first["refresh_token"]
    reused = await client.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert reused.status_code == 401
    # Thirty-one idle minutes: both the access token and the refresh token are refused.
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(
            update(AuthSession).values(last_seen_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31))
        )
    headers = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 401
    idle = await client.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert idle.status_code == 401


async def test_forged_or_expired_tokens_are_refused(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    body = (await _token(client, "vd_a1", PASSWORD)).json()
    forged = body["access_token"][:-2] + ("AA" if not body["access_token"].endswith("AA") else "BB")
    assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
    signer = app.state.ctx.signer
    expired = signer.issue(session_id="x", user_id="y", lifetime=dt.timedelta(minutes=15),
                           now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16))  # fmt: skip
    assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {expired}"})).status_code == 401


def test_password_policy() -> None:
    assert password_problems("short1A!", "bob") == ["password.too_short"]
    assert password_problems("alllowercaseletters", "bob") == ["password.too_simple"]
    assert "password.contains_username" in password_problems("Xiaoming-2026-ok", "xiaoming")
    assert password_problems("a long passphrase of 64 characters, Mixed Case and digits 12345!!", "bob") == []


async def test_admin_creates_staff_with_policy_checked(client: httpx.AsyncClient, community: Community) -> None:
    admin = await community.login(client, "admin")
    body = {"username": "newdoc", "display_name": "新医生", "role": "village_doctor",
            "facility_id": str(community.facilities["clinic_a1"]), "password": "weak"}  # fmt: skip
    weak = await client.post("/api/v1/staff", json=body, headers=admin)
    assert weak.status_code == 422
    assert weak.json()["errors"][0]["field"] == "password"
    created = await client.post("/api/v1/staff", json={**body, "password": "Strong-Passw0rd-1"}, headers=admin)
    assert created.status_code == 201
    assert (await _token(client, "newdoc", "Strong-Passw0rd-1")).status_code == 200
    doctor = await community.login(client, "vd_a1")
    assert (await client.post("/api/v1/staff", json=body, headers=doctor)).status_code == 403


async def test_admin_cannot_disable_themselves(client: httpx.AsyncClient, community: Community) -> None:
    admin = await community.login(client, "admin")
    response = await client.post(f"/api/v1/staff/{community.users['admin']}/disable", headers=admin)
    assert response.status_code == 409
    assert (await client.get("/api/v1/me", headers=admin)).status_code == 200
