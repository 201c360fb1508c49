"""Cross-origin access for a viewer served from another origin (OHIF browsing /dicomweb): off by default."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from telemed.app import create_app
from telemed.core.config import Environment, InsecureSettings, Settings
from tests.conftest import Community

VIEWER = "http://viewer.county.test:3000"
PREFLIGHT = {
    "Origin": VIEWER,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization,accept",
}


@pytest.fixture
async def cors_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"cors_origins": [VIEWER]}), configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_no_cross_origin_access_unless_configured(client: httpx.AsyncClient) -> None:
    response = await client.options("/dicomweb/studies", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers
    response = await client.get("/healthz", headers={"Origin": VIEWER})
    assert "access-control-allow-origin" not in response.headers


async def test_a_configured_viewer_origin_may_query_with_its_token(
    cors_client: httpx.AsyncClient, community: Community
) -> None:
    preflight = await cors_client.options("/dicomweb/studies", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers

    headers = await community.login(cors_client, "rad")
    response = await cors_client.get("/dicomweb/studies", headers={**headers, "Origin": VIEWER})
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == VIEWER

    # Errors carry the header too, so the viewer can show the problem instead of a bare network error.
    denied = await cors_client.get("/dicomweb/studies", headers={"Origin": VIEWER})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == VIEWER


async def test_other_origins_are_not_allowed(cors_client: httpx.AsyncClient) -> None:
    other = {**PREFLIGHT, "Origin": "http://elsewhere.test"}
    preflight = await cors_client.options("/dicomweb/studies", headers=other)
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_origins_are_checked(settings: Settings) -> None:
    with pytest.raises(ValidationError):
        Settings(**{**settings.model_dump(), "cors_origins": ["viewer.county.test/path"]})
    production = {
        **settings.model_dump(),
        "environment": Environment.production,
        "secret_key": "x" * 40,
        "field_keys": "1:" + "A" * 44,
        "cors_origins": ["*"],
    }
    with pytest.raises((InsecureSettings, ValidationError)):
        Settings(**production)
