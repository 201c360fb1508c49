"""``Prepared``: Core statements run straight on the driver, for the hot write path.

What it stores and returns must be exactly what ``Connection.execute`` stores and returns, on SQLite and on
PostgreSQL alike: the column types' processing (UUIDs, aware UTC times, JSON with Chinese text), Python-side
defaults, values written into the statement, RETURNING, and database errors as SQLAlchemy's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from sqlalchemy import Table, Text, bindparam, insert, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from telemed.core.db import Database, Prepared
from telemed.core.events import OutboxRecord
from telemed.org.models import Region

OUTBOX = cast(Table, OutboxRecord.__table__)


def cast_text(column: Any) -> Any:
    return sql_cast(column, Text)


REGION = cast(Table, Region.__table__)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def _event(name: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "name": name,
        "payload": {"patient_name": "张三^李四", "values": [1, 2.5, None], "nested": {"ok": True}},
        "audience": {"facilities": []},
        "occurred_at": dt.datetime(2026, 11, 29, 8, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "published_at": None,
        "claimed_at": None,
    }


async def test_a_prepared_insert_stores_and_returns_what_execute_does(db: Database) -> None:
    statement = insert(OUTBOX).returning(OUTBOX.c.event_id, OUTBOX.c.payload, OUTBOX.c.occurred_at)
    prepared = Prepared.of(statement)
    fast, slow = _event("test.fast"), _event("test.slow")

    def work(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return prepared.rows(session, fast), [tuple(row) for row in session.connection().execute(statement, slow)]

    fast_rows, slow_rows = await db.write(work)

    assert fast_rows == [(fast["event_id"], fast["payload"], fast["occurred_at"])]
    assert slow_rows == [(slow["event_id"], slow["payload"], slow["occurred_at"])]
    assert isinstance(fast_rows[0][0], uuid.UUID)
    assert fast_rows[0][2].utcoffset() == dt.timedelta(0)  # an aware UTC time, as UTCDateTime gives back
    async with db.read_session() as session:
        stored = {r.name: r for r in (await session.scalars(select(OutboxRecord))).all()}
        # Stored alike, down to the text of the time and of the JSON (SQLite keeps both as text).
        stored_text = {
            name: (when, payload)
            for name, when, payload in (
                await session.execute(
                    select(OUTBOX.c.name, cast_text(OUTBOX.c.occurred_at), cast_text(OUTBOX.c.payload))
                )
            ).all()
        }
    assert stored_text["test.fast"] == stored_text["test.slow"]
    for name, values in (("test.fast", fast), ("test.slow", slow)):
        record = stored[name]
        assert record.event_id == values["event_id"]
        assert record.payload == values["payload"]
        assert record.audience == values["audience"]
        assert record.occurred_at == values["occurred_at"]
        assert record.published_at is None


async def test_several_parameter_sets_go_as_one_batch_with_the_same_results(db: Database) -> None:
    statement = insert(OUTBOX).returning(OUTBOX.c.event_id, OUTBOX.c.payload, OUTBOX.c.occurred_at)
    prepared = Prepared.of(statement)
    one, two, three = _event("test.one"), _event("test.two"), _event("test.three")

    def work(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        alone = [tuple(row) for row in prepared.many(session, [one])]
        batch = sorted((tuple(row) for row in prepared.many(session, [two, three])), key=lambda row: str(row[0]))
        return alone, batch

    alone, batch = await db.write(work)

    assert alone == [(one["event_id"], one["payload"], one["occurred_at"])]
    expected = sorted(
        ((event["event_id"], event["payload"], event["occurred_at"]) for event in (two, three)),
        key=lambda row: str(row[0]),
    )
    assert batch == expected
    async with db.read_session() as session:
        names = sorted((await session.scalars(select(OutboxRecord.name))).all())
    assert names == ["test.one", "test.three", "test.two"]


async def test_defaults_values_in_the_statement_and_errors_are_sqlalchemys(db: Database) -> None:
    add_region = Prepared.of(insert(REGION).returning(REGION.c.id, REGION.c.parent_id))
    rename = Prepared.of(
        update(REGION).where(REGION.c.code == bindparam("region_code")).values(name=bindparam("new_name"), level="town")
    )

    def work(session: Session) -> list[tuple[Any, ...]]:
        [(county, parent)] = add_region.rows(session, {"code": "T1", "name": "县", "level": "county", "path": "T1"})
        assert parent is None
        child = {"code": "T2", "name": "乡", "level": "x", "path": "T1/T2", "parent_id": county}
        rows = add_region.rows(session, child)
        assert rename.rows(session, {"region_code": "T2", "new_name": "镇"}) == []
        return rows

    [(child_id, parent_id)] = await db.write(work)

    async with db.read_session() as session:
        regions = {r.code: r for r in (await session.scalars(select(Region))).all()}
    assert isinstance(child_id, uuid.UUID)  # made by the column's Python-side default, uuid4
    assert regions["T2"].id == child_id
    assert regions["T2"].parent_id == parent_id == regions["T1"].id
    assert (regions["T2"].name, regions["T2"].level) == ("镇", "town")

    def again(session: Session) -> None:
        add_region.rows(session, {"code": "T1", "name": "again", "level": "county", "path": "T1"})

    with pytest.raises(IntegrityError):
        await db.write(again)
    async with db.read_session() as session:
        assert len((await session.scalars(select(Region))).all()) == 2


def test_statements_it_cannot_run_are_refused_when_compiled() -> None:
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    REGION.metadata.create_all(engine, tables=[REGION])
    expanding = Prepared.of(select(REGION.c.id).where(REGION.c.code.in_(bindparam("codes", expanding=True))))
    with Session(engine) as session, pytest.raises(ValueError, match="expanding"):
        expanding.rows(session, {"codes": ["a"]})
