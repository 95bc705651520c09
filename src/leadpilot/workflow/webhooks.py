"""Webhook deliveries: an outbox of HTTP POSTs retried with exponential backoff, every attempt recorded.

A firing's ``webhook`` action only inserts a delivery row (in the firing's transaction, so nothing is lost
and nothing is sent for a firing that rolled back). ``deliver_due`` claims due rows with a lease, POSTs
outside any transaction with the rule's timeout and an ``Idempotency-Key`` header, and records the
outcome: delivered (2xx), retry at ``now + backoff * 2**(attempt-1)``, or failed after ``max_attempts``
with the last error; delivered and failed each append an event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.events import EventType, append_event
from leadpilot.db.base import utcnow
from leadpilot.workflow.tables import DeliveryStatus, WebhookDelivery

USER_AGENT = "leadpilot-workflow/1"


def backoff_delay(attempt: int, base_seconds: float) -> timedelta:
    """Wait before retry number ``attempt`` (1-based): base, 2 base, 4 base, ... capped at one hour."""
    return timedelta(seconds=min(3600.0, base_seconds * 2 ** max(0, attempt - 1)))


def _claim(engine: Engine, now: datetime, batch: int) -> list[int]:
    d = WebhookDelivery
    due = (
        select(d.id)
        .where(
            or_(
                and_(d.status == DeliveryStatus.PENDING.value, d.next_attempt_at <= now),
                and_(d.status == DeliveryStatus.RUNNING.value, d.claimed_until < now),
            )
        )
        .order_by(d.next_attempt_at, d.id)
        .limit(batch)
    )
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(d)
        .where(d.id.in_(due.scalar_subquery()))
        .values(status=DeliveryStatus.RUNNING.value, claimed_until=now + timedelta(seconds=300))
        .returning(d.id)
        .execution_options(synchronize_session=False)
    )
    with engine.begin() as conn:
        return sorted(conn.execute(stmt).scalars().all())


def _post(client: httpx.Client, row: WebhookDelivery) -> tuple[int | None, str | None]:
    """(status code, error or None when delivered)."""
    try:
        response = client.post(
            row.url,
            json=row.payload,
            timeout=row.timeout_s,
            headers={"Idempotency-Key": f"leadpilot-webhook-{row.id}", "User-Agent": USER_AGENT},
        )
    except httpx.TimeoutException:
        return None, f"timed out after {row.timeout_s:g} s"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


def deliver_due(
    engine: Engine,
    *,
    now: datetime | None = None,
    batch: int = 50,
    backoff_seconds: float = 1.0,
    client: httpx.Client | None = None,
) -> dict[str, int]:
    """Send every due webhook once; returns counts of delivered, retrying and failed."""
    now = now or utcnow()
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    own = client is None
    http = client or httpx.Client(follow_redirects=False)
    try:
        while True:
            ids = _claim(engine, now, batch)
            if not ids:
                return counts
            for delivery_id in ids:
                with Session(engine, expire_on_commit=False) as s:
                    row = s.get_one(WebhookDelivery, delivery_id)
                code, error = _post(http, row)
                counts[_record(engine, delivery_id, code, error, now=now, backoff_seconds=backoff_seconds)] += 1
    finally:
        if own:
            http.close()


def _record(
    engine: Engine, delivery_id: int, code: int | None, error: str | None, *, now: datetime, backoff_seconds: float
) -> str:
    with Session(engine) as s:
        row = s.get_one(WebhookDelivery, delivery_id)
        row.attempts += 1
        row.last_status_code = code
        attempt: dict[str, Any] = {"attempt": row.attempts, "at": now.isoformat(), "status_code": code}
        if error is not None:
            attempt["error"] = error
        row.history = [*row.history, attempt]
        row.claimed_until = None
        base = {"delivery_id": row.id, "url": row.url, "attempts": row.attempts, "rule_id": row.rule_id}
        if error is None:
            row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED.value, now, None
            append_event(s, EventType.WEBHOOK_DELIVERED, lead_id=row.lead_id, payload={**base, "status_code": code})
            outcome = "delivered"
        elif row.attempts >= row.max_attempts:
            row.status = DeliveryStatus.FAILED.value
            row.last_error = f"gave up after {row.attempts} attempt(s); last: {error}"
            append_event(s, EventType.WEBHOOK_FAILED, lead_id=row.lead_id, payload={**base, "error": row.last_error})
            outcome = "failed"
        else:
            row.status = DeliveryStatus.PENDING.value
            row.last_error = error
            row.next_attempt_at = now + backoff_delay(row.attempts, backoff_seconds)
            outcome = "retrying"
        s.commit()
    return outcome


def retry_failed(session: Session, *, delivery_id: int, now: datetime | None = None) -> WebhookDelivery:
    """Give a failed delivery another round of attempts (after the receiver was fixed)."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        from leadpilot.crm.errors import NotFound

        raise NotFound(f"webhook delivery {delivery_id} not found")
    row.status = DeliveryStatus.PENDING.value
    row.max_attempts = row.attempts + max(1, row.max_attempts)
    row.next_attempt_at = now or utcnow()
    return row
