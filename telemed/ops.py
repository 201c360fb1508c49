"""Operations: liveness, readiness, Prometheus metrics and the access log."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemed.core.context import AppContext

log = logging.getLogger("telemed.access")

router = APIRouter(tags=["operations"])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "telemed_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "telemed_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
        )  # fmt: skip


#: Headers every response carries (a handler that sets its own keeps it).
_SAFETY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


class RequestObserver:
    """Request id, metrics, safety headers and the access log of every HTTP request, as plain ASGI middleware.

    Not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the app in a task of its own and
    passes the request body and the response through memory streams, which cost about a millisecond per
    request here and every chunk of a 2 GB upload twice. This one only watches ``send``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:64]
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                for name, value in _SAFETY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - started
            # The matched route's template (``/api/v1/patients/{patient_id}``): raw paths could carry identifiers.
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info(
                "request",
                extra={"method": method, "route": route, "status": status, "ms": round(elapsed * 1000, 1),
                       "request_id": request_id},
            )  # fmt: skip


def install_request_middleware(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(RequestObserver, metrics=metrics)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ctx: AppContext = request.app.state.ctx
    checks: dict[str, str] = {}
    try:
        async with ctx.db.read_session() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    if ctx.redis is not None:
        try:
            await ctx.redis.ping()
            checks["redis"] = "ok"
        except Exception:
            checks["redis"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)  # fmt: skip


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
