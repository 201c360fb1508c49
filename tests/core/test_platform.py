"""The host and its domains, operations endpoints, migrations and the architecture rules."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from telemed.app import create_app
from telemed.core.audit import AuditRecord
from telemed.core.config import DEFAULT_SECRET_KEY, InsecureSettings, Settings
from telemed.core.plugins import discover_domains
from telemed.core.schema import check
from telemed.org.idcard import make_id_number
from tests.conftest import Community, register, seed_community

REPO = Path(__file__).resolve().parents[2]


async def test_health_ready_and_metrics(client: httpx.AsyncClient, community: Community) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    await client.get("/api/v1/patients")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'telemed_http_requests_total{method="GET",route="/api/v1/patients",status="401"}' in metrics.text


async def test_every_response_carries_its_request_id_and_the_safety_headers(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-from-the-proxy"})
    assert given.headers["X-Request-ID"] == "trace-from-the-proxy"
    made = await client.get("/api/v1/patients")  # refused (401) responses too
    assert made.status_code == 401
    assert len(made.headers["X-Request-ID"]) == 32
    for response in (given, made):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"

    # The id reaches the audit trail of what the request did.
    headers = {**(await community.login(client, "vd_a1")), "X-Request-ID": "req-audited-1"}
    assert (await client.get("/api/v1/patients", headers=headers)).status_code == 200
    async with app.state.ctx.db.read_session() as session:
        ids = (await session.scalars(select(AuditRecord.request_id))).all()
    assert "req-audited-1" in ids


async def test_readyz_reports_an_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(environment="test", data_dir=tmp_path, database_url="postgresql+asyncpg://nobody@127.0.0.1:1/x")
    app = create_app(settings, configure_logs=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unreachable"
    await app.state.ctx.db.dispose()


def test_all_domains_are_discovered() -> None:
    assert [d.name for d in discover_domains()] == ["imaging", "referral", "scheduling"]


async def test_app_runs_with_a_domain_left_out(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"disabled_domains": ["imaging"]}), configure_logs=False)
    async with app.router.lifespan_context(app):
        community = await seed_community(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            domains = [d["name"] for d in (await http.get("/api/v1/domains")).json()]
            assert domains == ["referral", "scheduling"]
            headers = await community.login(http, "vd_a1")
            created = await register(http, headers, make_id_number("331121", dt.date(1990, 1, 1), 11))
            assert created.status_code == 201
            assert (await http.get("/healthz")).status_code == 200


async def test_migrations_match_the_models(app: FastAPI) -> None:
    await check(app.state.ctx.db.engine)  # raises when a model change has no migration


def test_production_refuses_the_development_secret(tmp_path: Path) -> None:
    with pytest.raises(InsecureSettings):
        Settings(environment="production", data_dir=tmp_path)
    with pytest.raises(InsecureSettings):
        Settings(environment="production", secret_key=DEFAULT_SECRET_KEY, field_keys="1:" + "A" * 24)
    ok = Settings(environment="production", secret_key="x" * 40, field_keys="1:AAAAAAAAAAAAAAAAAAAAAA==")
    assert ok.environment == "production"


def _copy_packages(target: Path) -> None:
    for name in ("telemed", "referral", "imaging", "scheduling"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", target / "pyproject.toml")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The console script sits beside the interpreter running the tests (the venv's bin), whatever PATH says.
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is part of the dev dependencies"
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run([lint, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("domain", ["referral", "imaging", "scheduling"])
def test_import_linter_fails_when_the_host_imports_a_domain(tmp_path: Path, domain: str) -> None:
    _copy_packages(tmp_path)
    assert _lint_imports(tmp_path).returncode == 0
    (tmp_path / "telemed" / "org" / "sneaky.py").write_text(f"import {domain}.plugin\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


async def test_api_docs_need_no_internet(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "https://" not in page.text
    assert "http://" not in page.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert (await client.get(asset)).status_code == 200
    assert (await client.get("/openapi.json")).json()["info"]["title"].startswith("县域医共体")


@pytest.mark.redis
async def test_readyz_checks_redis_when_it_is_configured(settings: Settings) -> None:
    from tests.conftest import TEST_REDIS_URL

    app = create_app(settings.model_copy(update={"redis_url": TEST_REDIS_URL}), configure_logs=False)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
