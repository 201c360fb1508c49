"""Domain events: outbox in the same transaction, delivery after a crash, live WebSocket notifications, and
fan-out across worker processes through Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from telemed.core.config import Settings
from telemed.core.events import OutboxRecord
from telemed.org.idcard import make_id_number
from tests.conftest import TEST_REDIS_URL, Community, ServerProcess, register, ws_connect


async def _outbox(app: FastAPI) -> list[OutboxRecord]:
    async with app.state.ctx.db.read_session() as session:
        return list((await session.scalars(select(OutboxRecord).order_by(OutboxRecord.seq))).all())


async def _wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_event_is_written_with_the_change_and_delivered_as_notification(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    headers = await community.login(client, "vd_a1")
    pid = (await register(client, headers, make_id_number("331121", dt.date(1955, 5, 5), 555))).json()["id"]
    records = await _outbox(app)
    assert [r.name for r in records] == ["patient.registered"]
    assert records[0].payload["patient_id"] == pid
    assert records[0].audience == {"users": [], "facilities": [str(community.facilities["clinic_a1"])]}

    async def delivered() -> bool:
        notes = (await client.get("/api/v1/notifications", headers=headers)).json()
        return any(n["payload"].get("patient_id") == pid for n in notes)

    async def marked_published() -> bool:
        return (await _outbox(app))[0].published_at is not None

    await _wait_for(delivered)
    await _wait_for(marked_published)  # the relay marks the row after the handlers ran
    # A colleague in another clinic is not notified.
    other = (await client.get("/api/v1/notifications", headers=await community.login(client, "vd_b1"))).json()
    assert other == []


async def test_failed_request_writes_no_event(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    headers = await community.login(client, "vd_a1")
    number = make_id_number("331121", dt.date(1955, 5, 5), 555)
    assert (await register(client, headers, number)).status_code == 201
    assert (await register(client, headers, number)).status_code == 409
    assert len(await _outbox(app)) == 1


def _server(settings: Settings, tmp_path: Path, name: str, **env: str) -> ServerProcess:
    extra = {"TELEMED_REDIS_URL": TEST_REDIS_URL} if TEST_REDIS_URL else {}
    return ServerProcess(settings, tmp_path / f"{name}.log", **extra, **env)


@pytest.mark.slow
async def test_websocket_receives_notifications_for_the_users_facility(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path,
    servers: list[ServerProcess],
) -> None:  # fmt: skip
    server = _server(settings, tmp_path, "ws").start()
    servers.append(server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        mine = await community.login(http, "vd_a1")
        theirs = await community.login(http, "vd_b1")
        my_socket = await ws_connect(server.url, mine["Authorization"].split()[1])
        their_socket = await ws_connect(server.url, theirs["Authorization"].split()[1])
        pid = (await register(http, mine, make_id_number("331121", dt.date(1966, 6, 6), 666))).json()["id"]
        message = json.loads(await asyncio.wait_for(my_socket.recv(), timeout=15))
        assert message["type"] == "event"
        assert message["event"]["name"] == "patient.registered"
        assert message["event"]["payload"]["patient_id"] == pid
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(their_socket.recv(), timeout=1.5)
        await my_socket.close()
        await their_socket.close()


async def test_websocket_refuses_a_bad_token(
    app: FastAPI, settings: Settings, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    import websockets

    server = _server(settings, tmp_path, "badws").start()
    servers.append(server)
    async with websockets.connect(server.url.replace("http", "ws") + "/api/v1/ws") as socket:
        await socket.send(json.dumps({"type": "auth", "token": "forged.token"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


async def test_a_websocket_ends_with_its_session(
    app: FastAPI, community: Community, settings: Settings, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    import websockets

    server = _server(settings, tmp_path, "signout").start()
    servers.append(server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        headers = await community.login(http, "vd_a1")
        socket = await ws_connect(server.url, headers["Authorization"].split()[1])
        await socket.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(socket.recv(), timeout=10)) == {"type": "pong"}

        assert (await http.post("/api/v1/auth/logout", headers=headers)).status_code in (200, 204)
        await socket.send(json.dumps({"type": "ping"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


@pytest.mark.slow
async def test_process_killed_between_commit_and_publish_loses_no_event(
    app: FastAPI, community: Community, settings: Settings, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    doomed = _server(settings, tmp_path, "doomed", TELEMED_CHAOS_KILL_AFTER_COMMIT="true").start()
    servers.append(doomed)
    async with httpx.AsyncClient(base_url=doomed.url) as http:
        headers = await community.login(http, "vd_a1")
        with pytest.raises(httpx.HTTPError):  # the process dies before it can answer
            await register(http, headers, make_id_number("331121", dt.date(1977, 7, 7), 777))
    assert doomed.wait() == -signal.SIGKILL
    records = await _outbox(app)
    assert [r.name for r in records] == ["patient.registered"]
    assert records[0].published_at is None  # committed, never published
    pid = records[0].payload["patient_id"]

    restarted = _server(settings, tmp_path, "restarted").start()
    servers.append(restarted)
    async with httpx.AsyncClient(base_url=restarted.url) as http:
        headers = await community.login(http, "vd_a1")

        async def delivered() -> bool:
            notes = (await http.get("/api/v1/notifications", headers=headers)).json()
            return [n["payload"]["patient_id"] for n in notes] == [pid]

        await _wait_for(delivered)

    async def marked_published() -> bool:
        return (await _outbox(app))[0].published_at is not None

    await _wait_for(marked_published)


@pytest.mark.redis
@pytest.mark.slow
async def test_event_on_one_worker_reaches_a_websocket_on_another(
    app: FastAPI, community: Community, settings: Settings, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    worker_a = _server(settings, tmp_path, "worker-a").start()
    worker_b = _server(settings, tmp_path, "worker-b").start()
    servers.extend([worker_a, worker_b])
    async with httpx.AsyncClient(base_url=worker_a.url) as http_a, httpx.AsyncClient(base_url=worker_b.url) as http_b:
        clinic_b = await community.login(http_b, "vd_a1")
        socket = await ws_connect(worker_b.url, clinic_b["Authorization"].split()[1])
        headers_a = await community.login(http_a, "vd_a1")
        pid = (await register(http_a, headers_a, make_id_number("331121", dt.date(1988, 8, 8), 888))).json()["id"]
        message = json.loads(await asyncio.wait_for(socket.recv(), timeout=15))
        assert message["event"]["payload"]["patient_id"] == pid
        await socket.close()

        # Stored once, although two workers read the stream (the handler group runs it once); the live
        # fan-out can arrive before the handler has stored it, so wait for the stored copy.
        async def stored() -> bool:
            return bool((await http_b.get("/api/v1/notifications", headers=clinic_b)).json())

        await _wait_for(stored)
        await asyncio.sleep(1)  # a second handler run, were there one, would have stored its copy by now
        notes = (await http_b.get("/api/v1/notifications", headers=clinic_b)).json()
        assert [n["payload"]["patient_id"] for n in notes] == [pid]


def test_event_ids_are_uuids() -> None:
    from telemed.core.events import DomainEvent

    assert isinstance(DomainEvent("x.happened").id, uuid.UUID)


@pytest.mark.redis
async def test_entries_a_dead_worker_never_acknowledged_are_handled_by_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from telemed.core import events as events_module
    from telemed.core.events import HANDLER_GROUP, STREAM_KEY, Dispatcher, RedisStreamBus

    assert TEST_REDIS_URL
    monkeypatch.setattr(events_module, "RECLAIM_IDLE_MS", 0)
    handled: list[str] = []
    dispatcher = Dispatcher()

    async def handler(envelope: dict[str, object]) -> None:
        handled.append(str(envelope["id"]))

    dispatcher.subscribe("test.orphaned", handler)
    bus = RedisStreamBus(dispatcher, TEST_REDIS_URL)
    await bus.start()  # creates the group
    await bus.stop()
    publisher = RedisStreamBus(Dispatcher(), TEST_REDIS_URL)
    event_id = str(uuid.uuid4())
    await publisher.publish({"id": event_id, "name": "test.orphaned", "payload": {}, "audience": {}})
    # A worker reads the entry for its handlers and dies before acknowledging it.
    await publisher.redis.xreadgroup(HANDLER_GROUP, "dead-worker", {STREAM_KEY: ">"}, count=1000)
    await publisher.redis.aclose()

    survivor = RedisStreamBus(dispatcher, TEST_REDIS_URL)
    await survivor.start()
    try:
        await _wait_for(lambda: _contains(handled, event_id))
    finally:
        await survivor.stop()


async def _contains(items: list[str], item: str) -> bool:
    return item in items
