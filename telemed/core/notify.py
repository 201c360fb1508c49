"""Notifications: every event with an audience is stored for its recipients and pushed live over WebSocket.

Storing runs as an event handler (once per event, idempotent); the live push is fan-out (in every worker, to the
sockets connected there), so with Redis an event raised on worker A reaches a browser connected to worker B.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, UniqueConstraint, Uuid, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.auth import Principal, resolve_principal
from telemed.core.context import AppContext
from telemed.core.db import Base, PortableJSON, UTCDateTime, utcnow
from telemed.core.deps import Ctx, CurrentPrincipal
from telemed.core.errors import ProblemError
from telemed.core.events import Envelope, first_delivery

log = logging.getLogger(__name__)
HANDLER_NAME = "telemed.notify.store"


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (UniqueConstraint("event_id", "recipient_user_id", "recipient_facility_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    name: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    recipient_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"), index=True)
    recipient_facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


def _addressed_to(envelope: Envelope, principal: Principal) -> bool:
    audience = envelope.get("audience") or {}
    if str(principal.user_id) in audience.get("users", ()):
        return True
    return principal.facility_id is not None and str(principal.facility_id) in audience.get("facilities", ())


async def store_notifications(ctx: AppContext, envelope: Envelope) -> None:
    audience = envelope.get("audience") or {}
    users, facilities = audience.get("users") or [], audience.get("facilities") or []
    if not users and not facilities:
        return
    async with ctx.db.session() as session, session.begin():
        if not await first_delivery(session, HANDLER_NAME, envelope["id"]):
            return
        event_id, created = uuid.UUID(envelope["id"]), utcnow()
        for user in users:
            session.add(Notification(event_id=event_id, name=envelope["name"], payload=envelope["payload"],
                                     recipient_user_id=uuid.UUID(user), created_at=created))  # fmt: skip
        for facility in facilities:
            session.add(Notification(event_id=event_id, name=envelope["name"], payload=envelope["payload"],
                                     recipient_facility_id=uuid.UUID(facility), created_at=created))  # fmt: skip


class NotificationHub:
    """The WebSocket clients connected to this worker."""

    def __init__(self) -> None:
        self._clients: dict[WebSocket, Principal] = {}

    def add(self, socket: WebSocket, principal: Principal) -> None:
        self._clients[socket] = principal

    def remove(self, socket: WebSocket) -> None:
        self._clients.pop(socket, None)

    @property
    def connected(self) -> int:
        return len(self._clients)

    async def deliver(self, envelope: Envelope) -> None:
        message = {
            "type": "event",
            "event": {k: envelope[k] for k in ("id", "name", "payload", "occurred_at")},
        }
        for socket, principal in list(self._clients.items()):
            if _addressed_to(envelope, principal):
                try:
                    await socket.send_json(message)
                except Exception:
                    self.remove(socket)


class NotificationRead(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    name: str
    payload: dict[str, Any]
    created_at: dt.datetime


router = APIRouter(tags=["notifications"])


@router.get("/api/v1/notifications", response_model=list[NotificationRead])
async def list_notifications(ctx: Ctx, principal: CurrentPrincipal, limit: int = 50) -> list[NotificationRead]:
    limit = max(1, min(limit, 200))
    conditions = [Notification.recipient_user_id == principal.user_id]
    if principal.facility_id is not None:
        conditions.append(Notification.recipient_facility_id == principal.facility_id)
    async with ctx.db.read_session() as session:
        rows = await session.scalars(
            select(Notification).where(or_(*conditions)).order_by(Notification.created_at.desc()).limit(limit)
        )
        return [
            NotificationRead(id=n.id, event_id=n.event_id, name=n.name, payload=n.payload, created_at=n.created_at)
            for n in rows
        ]


@router.websocket("/api/v1/ws")
async def notifications_socket(socket: WebSocket) -> None:
    """Live notifications. The first message authenticates: ``{"type": "auth", "token": "<access token>"}``
    (a token never goes into the URL, where access logs would keep it)."""
    ctx: AppContext = socket.app.state.ctx
    hub: NotificationHub = socket.app.state.hub
    await socket.accept()
    try:
        first = await asyncio.wait_for(socket.receive_json(), timeout=10)
        token = str(first.get("token", "")) if isinstance(first, dict) else ""
        principal = await resolve_principal(ctx.db.read_session, ctx.signer, ctx.settings, token)
    except (TimeoutError, ProblemError, ValueError, WebSocketDisconnect):
        with contextlib.suppress(Exception):
            await socket.close(code=4401)
        return
    hub.add(socket, principal)
    try:
        await socket.send_json({"type": "ready", "user_id": str(principal.user_id)})
        while True:
            message = await socket.receive_json()
            if isinstance(message, dict) and message.get("type") == "ping":
                # The socket lives no longer than its session and token: each ping (every 25 s from the page)
                # checks them again, so a sign-out, a disabled account or an expired token on any worker ends
                # the stream here too. 4401 tells the page to renew its token or go to sign-in.
                try:
                    await resolve_principal(ctx.db.read_session, ctx.signer, ctx.settings, token)
                except ProblemError:
                    hub.remove(socket)
                    await socket.close(code=4401)
                    return
                await socket.send_json({"type": "pong"})
    except (WebSocketDisconnect, ValueError, RuntimeError):
        pass
    finally:
        hub.remove(socket)
