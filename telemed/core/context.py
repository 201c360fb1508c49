"""The running application's shared parts, built once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from telemed.core.config import Settings
from telemed.core.crypto import FieldCipher, derive_key
from telemed.core.db import Database
from telemed.core.events import Dispatcher, EventBus, InProcessBus, OutboxRelay, RedisStreamBus
from telemed.core.ports import FacilityScopeResolver
from telemed.core.security import TokenSigner
from telemed.core.storage import BlobStorage, storage_from_url


@dataclass
class AppContext:
    settings: Settings
    db: Database
    storage: BlobStorage
    cipher: FieldCipher
    signer: TokenSigner
    audit_key: bytes
    dispatcher: Dispatcher
    bus: EventBus
    relay: OutboxRelay
    scope_resolver: FacilityScopeResolver | None = None
    redis: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        dispatcher = Dispatcher()
        bus: EventBus
        redis = None
        if settings.redis_url:
            stream_bus = RedisStreamBus(dispatcher, settings.redis_url)
            bus, redis = stream_bus, stream_bus.redis
        else:
            bus = InProcessBus(dispatcher)
        secret = settings.secret_key.get_secret_value().encode()
        return cls(
            settings=settings,
            db=db,
            # S3 downloads (a frame of a large instance, a de-identified export) land on the data volume, not
            # in a /tmp that may live in memory; `telemed imaging repair` removes any a crash left behind.
            storage=storage_from_url(settings.resolved_storage_url, temp_dir=settings.data_dir / "spool" / "downloads"),
            cipher=FieldCipher.from_settings(settings),
            signer=TokenSigner(secret),
            audit_key=derive_key(secret, "telemed audit chain", 32),
            dispatcher=dispatcher,
            bus=bus,
            relay=OutboxRelay(db, bus),
            redis=redis,
        )
