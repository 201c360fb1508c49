"""The policy versions a county uploaded, compiled once each and cached by id.

A version row holds the YAML exactly as uploaded. Compiling (parse, validate, build closures and ICD-10
intervals) happens once per version and process: at upload, or the first time a worker meets a version another
worker stored. Each call only reads the small index of versions (id, community, dates) to know which is in
force; it never re-parses a document. The shipped default (``referral/policies/default.yaml``) is the fallback
when no stored version is in force.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.models import PolicyVersion
from referral.policy import CompiledPolicy, load_default_policy, load_policy

DEFAULT_ID: Final = "default"
EXTRAS_KEY: Final = "referral.policy_store"


@dataclass(frozen=True, slots=True)
class VersionIndex:
    """A stored version without its text: what choosing the policy in force needs."""

    id: uuid.UUID
    community: str
    version: str
    effective_from: dt.date
    effective_until: dt.date | None
    uploaded_at: dt.datetime
    uploaded_by: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    #: None for the shipped default.
    id: uuid.UUID | None
    policy: CompiledPolicy

    @property
    def ref(self) -> str:
        return DEFAULT_ID if self.id is None else str(self.id)


def document_name(version_id: uuid.UUID) -> str:
    return f"version:{version_id}"


class PolicyStore:
    """Compiled versions keyed by id; safe to share between the requests of one process."""

    def __init__(self) -> None:
        self._compiled: dict[uuid.UUID, CompiledPolicy] = {}
        self._lock = threading.Lock()
        #: How many documents this store compiled (tests check that nothing is compiled twice).
        self.compilations = 0

    def remember(self, version_id: uuid.UUID, policy: CompiledPolicy) -> None:
        with self._lock:
            self._compiled.setdefault(version_id, policy)

    def cached(self, version_id: uuid.UUID) -> CompiledPolicy | None:
        return self._compiled.get(version_id)

    async def index(self, session: AsyncSession) -> list[VersionIndex]:
        rows = await session.execute(
            select(
                PolicyVersion.id,
                PolicyVersion.community,
                PolicyVersion.version,
                PolicyVersion.effective_from,
                PolicyVersion.effective_until,
                PolicyVersion.uploaded_at,
                PolicyVersion.uploaded_by,
            ).order_by(PolicyVersion.effective_from, PolicyVersion.uploaded_at)
        )
        return [VersionIndex(*row) for row in rows.all()]

    async def compiled(self, session: AsyncSession, version_id: uuid.UUID) -> CompiledPolicy | None:
        """The compiled version, compiling its stored text the first time this process needs it."""
        policy = self._compiled.get(version_id)
        if policy is not None:
            return policy
        text = await session.scalar(select(PolicyVersion.yaml_text).where(PolicyVersion.id == version_id))
        if text is None:
            return None
        # A stored version was valid when uploaded and the engine's grammar only grows, so this loads.
        policy = load_policy(text, document=document_name(version_id))
        with self._lock:
            self.compilations += 1
            return self._compiled.setdefault(version_id, policy)

    async def resolve(self, session: AsyncSession, ref: str) -> ActivePolicy | None:
        """A version by its API id: ``default`` or a stored version's UUID."""
        if ref == DEFAULT_ID:
            return ActivePolicy(None, load_default_policy())
        try:
            version_id = uuid.UUID(ref)
        except ValueError:
            return None
        policy = await self.compiled(session, version_id)
        return None if policy is None else ActivePolicy(version_id, policy)

    async def active(self, session: AsyncSession, today: dt.date) -> ActivePolicy:
        """The policy in force on ``today``: the latest stored version that has started and not ended.

        One deployment serves one county medical community; should versions of several communities be stored,
        the one that took effect most recently wins (ties: the later upload).
        """
        chosen = in_force(await self.index(session), today)
        if chosen is None:
            return ActivePolicy(None, load_default_policy())
        policy = await self.compiled(session, chosen.id)
        if policy is None:  # deleted between the two reads
            return ActivePolicy(None, load_default_policy())
        return ActivePolicy(chosen.id, policy)


def in_force(index: list[VersionIndex], today: dt.date) -> VersionIndex | None:
    best: VersionIndex | None = None
    for entry in index:
        if entry.effective_from > today or (entry.effective_until is not None and today >= entry.effective_until):
            continue
        if best is None or (entry.effective_from, entry.uploaded_at) > (best.effective_from, best.uploaded_at):
            best = entry
    return best


def store_of(extras: dict[str, object]) -> PolicyStore:
    """The store of one running app (kept in ``AppContext.extras``)."""
    store = extras.get(EXTRAS_KEY)
    if isinstance(store, PolicyStore):
        return store
    created = PolicyStore()
    extras[EXTRAS_KEY] = created
    return created
