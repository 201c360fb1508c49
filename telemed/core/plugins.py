"""The contract between the host and a domain package.

A domain (``referral``, ``imaging``, ``scheduling``) exposes a :class:`DomainPlugin` under the entry-point group
``telemed.domains``; :func:`telemed.app.create_app` mounts what it hands over. The host never imports a domain.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncSession

ENTRY_POINT_GROUP: Final = "telemed.domains"

log = logging.getLogger(__name__)

#: A background service: started with the app, cancelled at shutdown; receives the running app's context.
BackgroundService = Callable[[Any], Awaitable[None]]
#: A demo seeder: given a session and a deterministic seed, fills the domain's demo data (idempotently).
DemoSeeder = Callable[["AsyncSession", int], Awaitable[None]]
#: An event handler: receives the app context and the event envelope (name, id, payload); must be idempotent.
EventHandler = Callable[[Any, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class NavLink:
    """A link a domain adds to the web shell's home page for the given roles."""

    href: str
    label_zh: str
    label_en: str
    roles: frozenset[str]


class HotRoute(Route):
    """A plain Starlette route that the app matches before all of its routers: for the few requests a domain must
    serve at the highest rate (image ingest). For STOW-RS, leaving out FastAPI's route matching and dependency
    resolution took the event loop's share from about 4,600 Python calls per request to about 3,100, and its
    CPU time per request down by about 0.7 ms here.

    Its endpoint takes the ``Request`` and does itself what dependencies would (``telemed.core.deps``:
    ``current_principal``, ``request_unit_of_work``). Errors are answered as everywhere (problem+json). It is not
    in the OpenAPI document: keep the same path and method on one of the domain's routers too, calling the same
    function, to document it (that route is then never reached, or serves when the hot route is left out).
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # as FastAPI sets it for its own routes: request metrics are labelled by it
        await super().handle(scope, receive, send)


@dataclass(frozen=True)
class DomainPlugin:
    name: str
    title_zh: str
    title_en: str
    routers: Sequence[APIRouter] = ()
    #: Routes matched before every router of the app (see :class:`HotRoute`).
    hot_routes: Sequence[HotRoute] = ()
    event_handlers: dict[str, Sequence[EventHandler]] = field(default_factory=dict)
    background_services: Sequence[BackgroundService] = ()
    cli_commands: Sequence[click.Command] = ()
    demo_seeders: Sequence[DemoSeeder] = ()
    nav_links: Sequence[NavLink] = ()
    metadata: MetaData | None = None
    #: What the home page's notification list says for each event the domain addresses to people:
    #: event name -> (zh-CN, en). An event without a label shows as "新消息：<name>".
    event_labels: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def discover_domains(enabled: Iterable[str] | None = None, disabled: Iterable[str] = ()) -> list[DomainPlugin]:
    """Load the installed domains, in name order; ``enabled`` (when given) and ``disabled`` filter by name."""
    wanted = set(enabled) if enabled is not None else None
    unwanted = set(disabled)
    plugins: list[DomainPlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in unwanted or (wanted is not None and ep.name not in wanted):
            log.info("domain left out", extra={"domain": ep.name})
            continue
        plugin = ep.load()
        if not isinstance(plugin, DomainPlugin):
            raise TypeError(f"entry point {ep.name!r} does not name a DomainPlugin")
        plugins.append(plugin)
    return plugins
