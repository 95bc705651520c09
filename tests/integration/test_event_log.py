"""The event log: appended in the writer's transaction, delivered after commit, published to Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from leadpilot.crm import leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.events import EventRecord, append_event, bus, relay_outbox
from leadpilot.crm.models import Event, Lead, OutboxEntry, Stage
from tests.conftest import REDIS_URL, service_missing


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_state_change_and_event_commit_together(engine: Engine) -> None:
    with Session(engine) as s:
        lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="t"))
        s.commit()
        lead_id = lead.id
    with Session(engine) as s:
        leads.change_stage(s, actor=SYSTEM, lead_id=lead_id, stage=Stage.SCREENING)
        s.rollback()  # the caller gives up: neither the stage nor its event may remain
    with Session(engine) as s:
        assert s.get_one(Lead, lead_id).stage == Stage.NEW.value
        types = s.scalars(select(Event.type).where(Event.lead_id == lead_id)).all()
        assert types == ["lead_created"]


def test_subscribers_get_events_only_after_commit(engine: Engine) -> None:
    received: list[EventRecord] = []
    unsubscribe = bus.subscribe(received.extend)
    try:
        with Session(engine, expire_on_commit=False) as s:
            lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="t"))
            assert received == []  # not before commit
            s.commit()
        assert [r.type for r in received] == ["lead_created"]
        assert received[0].lead_id == lead.id
        with Session(engine) as s:
            append_event(s, "note", lead_id=lead.id, payload={"text": "x"})
            s.rollback()
        assert len(received) == 1  # a rolled-back event is never delivered
    finally:
        unsubscribe()


def test_savepoints_neither_deliver_nor_drop_the_outer_transactions_events(engine: Engine) -> None:
    received: list[EventRecord] = []
    unsubscribe = bus.subscribe(received.extend)
    try:
        with Session(engine) as session:
            append_event(session, "note", payload={"n": 1})
            savepoint = session.begin_nested()
            append_event(session, "note", payload={"n": 2})
            savepoint.commit()  # released, not committed: nothing is delivered yet
            assert received == []
            savepoint = session.begin_nested()
            append_event(session, "note", payload={"n": 3})
            savepoint.rollback()  # forgets its own event only
            with session.begin_nested():
                append_event(session, "note", payload={"n": 4})
            assert received == []
            session.commit()
        assert [r.payload["n"] for r in received] == [1, 2, 4]
        with Session(engine) as session:
            append_event(session, "note", payload={"n": 5})
            session.rollback()
            session.commit()
        assert [r.payload["n"] for r in received] == [1, 2, 4]
    finally:
        unsubscribe()


def test_a_failing_subscriber_does_not_break_the_writer(engine: Engine) -> None:
    def broken(_: list[EventRecord]) -> None:
        raise RuntimeError("boom")

    unsubscribe = bus.subscribe(broken)
    try:
        with Session(engine) as s:
            leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="t"))
            s.commit()
    finally:
        unsubscribe()
    assert _count(engine, Lead) == 1


def test_event_log_is_append_only_in_the_database(engine: Engine) -> None:
    with Session(engine) as s:
        leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="t"))
        s.commit()
    for statement in ("UPDATE events SET type = 'x'", "DELETE FROM events", "DELETE FROM audit_log"):
        with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement))
    assert _count(engine, Event) == 1


@pytest.fixture
def redis_stream() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing("Redis at LEADPILOT_TEST_REDIS_URL", exc)
    stream = f"leadpilot:test:{uuid.uuid4().hex}"
    yield client, stream
    client.delete(stream)


@pytest.mark.redis
def test_events_are_published_to_the_redis_stream(engine: Engine, redis_stream: tuple[redis.Redis, str]) -> None:
    client, stream = redis_stream
    bus.configure_redis(REDIS_URL, stream)
    with Session(engine) as s:
        lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="t"))
        leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.SCREENING)
        s.commit()
    entries = client.xrange(stream)
    assert [e[1][b"type"] for e in entries] == [b"lead_created", b"stage_change"]
    payload = json.loads(entries[1][1][b"payload"])
    assert payload["from"] == "new" and payload["to"] == "screening"
    assert _count(engine, OutboxEntry) == 0  # published, so nothing waits in the outbox


@pytest.mark.redis
def test_outbox_keeps_events_while_redis_is_down_and_relay_publishes_them(
    engine: Engine, redis_stream: tuple[redis.Redis, str]
) -> None:
    client, stream = redis_stream
    bus.configure_redis("redis://127.0.0.1:1/0", stream)  # nothing listens on port 1
    with Session(engine) as s:
        for i in range(3):
            leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title=f"t{i}"))
        s.commit()
    assert _count(engine, OutboxEntry) == 3
    assert client.xlen(stream) == 0
    bus.configure_redis(REDIS_URL, stream)
    assert relay_outbox(engine) == 3
    assert _count(engine, OutboxEntry) == 0
    ids = [int(e[1][b"id"]) for e in client.xrange(stream)]
    assert ids == sorted(ids) and len(ids) == 3  # in log order
