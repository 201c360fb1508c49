"""Shared fixtures: a migrated database per test (SQLite by default, PostgreSQL when ``TEST_DATABASE_URL`` is
set), the app under its lifespan, an HTTP client, and a small seeded community with an account for every role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from telemed.app import create_app
from telemed.core.auth import Role, UserAccount
from telemed.core.config import Environment, Settings
from telemed.core.db import Database
from telemed.core.schema import target_metadata, upgrade
from telemed.core.security import hash_password
from telemed.org.models import Department, Facility, Region

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or None
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
PASSWORD = "Test-Passw0rd!"
T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres" in item.keywords and not TEST_DATABASE_URL:
            item.add_marker(pytest.mark.skip(reason="needs TEST_DATABASE_URL (CI's second pass sets it)"))
        if "redis" in item.keywords and not TEST_REDIS_URL:
            item.add_marker(pytest.mark.skip(reason="needs TEST_REDIS_URL (CI's second pass sets it)"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrations run once; each test gets a copy of the migrated file."""
    path = tmp_path_factory.mktemp("template") / "telemed.db"

    async def build() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await upgrade(db.engine)
        await db.dispose()

    asyncio.run(build())
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str | None:
    if not TEST_DATABASE_URL:
        return None

    async def build() -> None:
        db = Database(TEST_DATABASE_URL)
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await upgrade(db.engine)
        await db.dispose()

    asyncio.run(build())
    return TEST_DATABASE_URL


async def _truncate_postgres(url: str) -> None:
    db = Database(url)
    tables = ", ".join(t.name for t in target_metadata().sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await db.dispose()


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path, postgres_migrated: str | None) -> Iterator[str]:
    if postgres_migrated:
        asyncio.run(_truncate_postgres(postgres_migrated))
        yield postgres_migrated
        return
    target = tmp_path / "data" / "telemed.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, target)
    yield f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        environment=Environment.test,
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=None,
        audit_checkpoint_every=5,
        dicom_port=0,  # no DICOM listener unless a test asks for one (imaging tests set a free port)
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings, configure_logs=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass
class Community:
    """A small county: one hospital, two townships with a centre and two village clinics each."""

    regions: dict[str, uuid.UUID] = field(default_factory=dict)
    facilities: dict[str, uuid.UUID] = field(default_factory=dict)
    users: dict[str, uuid.UUID] = field(default_factory=dict)

    async def login(self, client: httpx.AsyncClient, username: str) -> dict[str, str]:
        response = await client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


#: username -> (role, facility key)
ACCOUNTS: dict[str, tuple[Role, str | None]] = {
    "vd_a1": (Role.village_doctor, "clinic_a1"),
    "vd_a2": (Role.village_doctor, "clinic_a2"),
    "vd_b1": (Role.village_doctor, "clinic_b1"),
    "td_a": (Role.township_doctor, "centre_a"),
    "td_b": (Role.township_doctor, "centre_b"),
    "spec": (Role.specialist, "county_hospital"),
    "rad": (Role.radiologist, "county_hospital"),
    "analyst": (Role.bureau_analyst, None),
    "admin": (Role.admin, "county_hospital"),
}


async def seed_community(app: FastAPI) -> Community:
    ctx = app.state.ctx
    community = Community()
    tree: list[tuple[str, str, str, str | None]] = [
        ("33", "浙江省", "province", None),
        ("3311", "丽水市", "city", "33"),
        ("331121", "青田县", "county", "3311"),
        ("331121101", "温溪镇", "township", "331121"),
        ("331121102", "东源镇", "township", "331121"),
        ("331121101201", "东岙村", "village", "331121101"),
        ("331121101202", "小坦村", "village", "331121101"),
        ("331121102201", "项村", "village", "331121102"),
    ]
    facilities: list[tuple[str, str, str, str, str | None, list[str]]] = [
        ("county_hospital", "青田县人民医院", "county", "331121", None, ["pci_capable"]),
        ("centre_a", "温溪镇卫生院", "township", "331121101", "county_hospital", []),
        ("centre_b", "东源镇卫生院", "township", "331121102", "county_hospital", []),
        ("clinic_a1", "东岙村卫生室", "village", "331121101201", "centre_a", []),
        ("clinic_a2", "小坦村卫生室", "village", "331121101202", "centre_a", []),
        ("clinic_b1", "项村卫生室", "village", "331121102201", "centre_b", []),
    ]
    password_hash = hash_password(PASSWORD)
    async with ctx.db.session() as session, session.begin():
        paths: dict[str, str] = {}
        for code, name, level, parent in tree:
            rid = community.regions[code] = uuid.uuid4()
            paths[code] = (paths[parent] if parent else "") + code + "/"
            session.add(Region(id=rid, code=code, name=name, level=level,
                               parent_id=community.regions[parent] if parent else None, path=paths[code]))  # fmt: skip
            await session.flush()
        for key, name, tier, region, parent, flags in facilities:
            fid = community.facilities[key] = uuid.uuid4()
            session.add(
                Facility(id=fid, code=key.upper(), name=name, tier=tier, kind="test",
                         region_id=community.regions[region],
                         parent_id=community.facilities[parent] if parent else None,
                         latitude=28.1, longitude=120.3, modalities=[], flags=flags, icd10_ranges=[])
            )  # fmt: skip
            await session.flush()
        session.add(Department(id=uuid.uuid4(), facility_id=community.facilities["county_hospital"],
                               code="cardiology", name_zh="心血管内科", name_en="Cardiology"))  # fmt: skip
        for username, (role, facility) in ACCOUNTS.items():
            uid = community.users[username] = uuid.uuid4()
            session.add(UserAccount(id=uid, username=username, password_hash=password_hash,
                                    display_name=f"测试{username}", role=role.value,
                                    facility_id=community.facilities[facility] if facility else None,
                                    disabled=False, failed_attempts=0))  # fmt: skip
    return community


@pytest.fixture
async def community(app: FastAPI) -> Community:
    return await seed_community(app)


async def register(
    client: httpx.AsyncClient, headers: dict[str, str], id_number: str, name: str = "王小明", **extra: Any
) -> httpx.Response:
    return await client.post("/api/v1/patients", json={"name": name, "id_number": id_number, **extra}, headers=headers)


class ServerProcess:
    """A real ``telemed serve`` in a subprocess on 127.0.0.1, its output kept in a file for inspection."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "TELEMED_ENVIRONMENT": "test",
            "TELEMED_DATABASE_URL": settings.resolved_database_url,
            "TELEMED_DATA_DIR": str(settings.data_dir),
            "TELEMED_AUDIT_CHECKPOINT_EVERY": str(settings.audit_checkpoint_every),
            "TELEMED_DICOM_PORT": str(settings.dicom_port),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "telemed", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy in 60 s")

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


async def ws_connect(url: str, token: str) -> Any:
    import websockets

    socket = await websockets.connect(url.replace("http://", "ws://") + "/api/v1/ws")
    await socket.send(json.dumps({"type": "auth", "token": token}))
    ready = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    assert ready["type"] == "ready", ready
    return socket


# ------------------------------------------------------------------------------------------------ browser tests

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium as root, headless, with nothing that phones home (the machine has no internet).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium` "
            "(the browser tests never download one)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


class PageProblems:
    """Script errors and CSP refusals a page reports; a browser test ends by asserting there were none."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def console(self, message: Any) -> None:
        # A refused request (401 for a wrong password) is logged by the browser itself; that is expected.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.messages.append(message.text)

    def page_error(self, error: Exception) -> None:
        self.messages.append(str(error))


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, prepare: Callable[[FastAPI], Awaitable[T]], *, name: str = "live-server"
) -> Iterator[tuple[str, T]]:
    """``app`` under uvicorn on 127.0.0.1 in a thread with its own event loop, on a database migrated and then
    ``prepare``d inside that loop; yields the base URL and what ``prepare`` returned."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    prepared: list[T] = []
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            app.state.ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
            await upgrade(app.state.ctx.db.engine)
            prepared.append(await prepare(app))
        except BaseException as exc:
            failure.append(exc)
            raise
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(run(),), name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if failure:
            raise RuntimeError("the live server could not start") from failure[0]
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the live server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", prepared[0]
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# ------------------------------------------------------------------------------------------------ object storage

#: moto's S3 server in a child process on 127.0.0.1 (a real HTTP endpoint; its copies of uploaded bytes do not count
#: in this process's memory), printing its port and stopping when its stdin closes.
_MOTO_SERVER = """
import logging
import sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of one moto S3 server for the whole run; each test makes a bucket of its own."""
    child = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in the environment (boto3's chain, and any ``telemed`` subprocess, read them there)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client on the moto server, to look at or tamper with the bucket behind the storage."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )


def new_s3_bucket(endpoint: str) -> str:
    name = f"telemed-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_url(endpoint: str, bucket: str, prefix: str = "county/images") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region=us-east-1"
