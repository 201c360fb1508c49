"""The composition root: ``create_app()`` builds the backends and mounts the host and every registered domain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from telemed.core.config import Settings
from telemed.core.context import AppContext
from telemed.core.errors import install_error_handlers
from telemed.core.logging import configure_logging
from telemed.core.notify import NotificationHub, store_notifications
from telemed.core.notify import router as notify_router
from telemed.core.plugins import BackgroundService, DomainPlugin, discover_domains
from telemed.core.routes import router as core_router
from telemed.ops import Metrics, install_request_middleware
from telemed.ops import router as ops_router
from telemed.org.repository import facility_scope
from telemed.org.router import router as org_router
from telemed.web.pages import mount_web

log = logging.getLogger(__name__)


async def _run_service(service: BackgroundService, ctx: AppContext) -> None:
    await service(ctx)


def create_app(
    settings: Settings | None = None,
    *,
    domains: Sequence[DomainPlugin] | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.log_level, json_lines=settings.log_json)
    if domains is None:
        domains = discover_domains(disabled=settings.disabled_domains)
    ctx = AppContext.build(settings)
    ctx.scope_resolver = facility_scope
    hub = NotificationHub()
    metrics = Metrics()

    ctx.dispatcher.subscribe("*", partial(store_notifications, ctx), handler_name="telemed.notify.store")
    ctx.dispatcher.fanout.append(hub.deliver)
    for domain in domains:
        for event_name, handlers in domain.event_handlers.items():
            for handler in handlers:
                ctx.dispatcher.subscribe(
                    event_name, partial(handler, ctx), handler_name=f"{domain.name}.{handler.__qualname__}"
                )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.bus.start()
        tasks = [asyncio.create_task(ctx.relay.run(), name="outbox-relay")]
        tasks += [
            asyncio.create_task(_run_service(service, ctx), name=f"{domain.name}-service")
            for domain in domains
            for service in domain.background_services
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await ctx.bus.stop()
            await ctx.db.dispose()

    app = FastAPI(
        title="县域医共体远程医疗与转诊平台 · County telemedicine and referral platform",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from packaged assets: FastAPI's default loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.hub = hub
    app.state.metrics = metrics
    app.state.domains = list(domains)
    install_error_handlers(app)
    install_request_middleware(app, metrics)
    if settings.cors_origins:
        # Outermost, so that a preflight is answered before sign-in is asked for (an OHIF viewer on its own
        # origin browsing /dicomweb). Bearer tokens only: no cookies, so no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept", "Accept-Language"],
            expose_headers=["Content-Location", "Location", "Warning", "Content-Disposition", "Content-Length"],
            max_age=600,
        )
    for router in (ops_router, core_router, notify_router, org_router):
        app.include_router(router)
    for domain in domains:
        for router in domain.routers:
            app.include_router(router)
    # Before everything else, so that FastAPI neither scans its routes nor resolves dependencies for them.
    app.router.routes[0:0] = [route for domain in domains for route in domain.hot_routes]

    @app.get("/api/v1/domains", tags=["operations"])
    async def list_domains() -> list[dict[str, str]]:
        return [{"name": d.name, "title_zh": d.title_zh, "title_en": d.title_en} for d in domains]

    mount_api_docs(app)
    mount_web(app, domains)
    return app


def mount_api_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` with every asset served by the app (the county network may have no internet)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="API · 县域医共体平台",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )
