"""Ports: capabilities the core needs and a domain supplies (the adapter registers when the app is built)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from telemed.core.auth import Principal


class FacilityScopeResolver(Protocol):
    """The facilities whose patients a principal may see (the facility scope of every patient-data query)."""

    async def __call__(self, session: AsyncSession, principal: Principal) -> frozenset[uuid.UUID]: ...
