"""Claim pool rules: a daily claim limit that holds under concurrency, a previous owner's cool-down,
and recycling of unworked leads back to the pool."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from leadpilot.crm import leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.errors import Conflict
from leadpilot.crm.events import append_event
from leadpilot.crm.leads import ClaimPolicy, recycle_unworked
from leadpilot.crm.models import Event, Lead, Stage
from leadpilot.db.base import utcnow
from tests.conftest import Org


def _pool_leads(org: Org, n: int) -> list[int]:
    with Session(org.engine) as s:
        ids = []
        for i in range(n):
            lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title=f"pool {i}"))
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.SCREENING)
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.QUALIFIED)
            ids.append(lead.id)
        s.commit()
    return ids


def test_the_daily_claim_limit_stops_the_next_claim_and_keeps_it_in_the_pool(org: Org) -> None:
    ids = _pool_leads(org, 3)
    alice, bob = org.actor("alice"), org.actor("bob")
    policy = ClaimPolicy(daily_limit=2)
    with Session(org.engine) as s:
        leads.claim_lead(s, actor=alice, lead_id=ids[0], policy=policy)
        s.commit()
        leads.claim_lead(s, actor=alice, lead_id=ids[1], policy=policy)
        s.commit()
        with pytest.raises(Conflict, match="daily claim limit reached: 2 leads per day"):
            leads.claim_lead(s, actor=alice, lead_id=ids[2], policy=policy)
        s.rollback()
        lead = s.get_one(Lead, ids[2], populate_existing=True)
        assert lead.owner_id is None and lead.stage == Stage.QUALIFIED.value  # nothing half-done
        leads.claim_lead(s, actor=bob, lead_id=ids[2], policy=policy)  # the limit is per person
        s.commit()


def test_a_previous_owner_waits_out_the_cool_down(org: Org) -> None:
    (lead_id,) = _pool_leads(org, 1)
    alice, bob = org.actor("alice"), org.actor("bob")
    policy = ClaimPolicy(cooldown_hours=72)
    with Session(org.engine) as s:
        leads.claim_lead(s, actor=alice, lead_id=lead_id, policy=policy)
        leads.release_lead(s, actor=alice, lead_id=lead_id, reason="not my region")
        s.commit()
        with pytest.raises(Conflict, match=r"you may claim it again after .* \(cool-down 72 h\)"):
            leads.claim_lead(s, actor=alice, lead_id=lead_id, policy=policy)
        s.rollback()
        # Three days later the release is outside the window.
        leads.claim_lead(s, actor=alice, lead_id=lead_id, policy=policy, now=utcnow() + timedelta(hours=73))
        s.commit()
        leads.release_lead(s, actor=alice, lead_id=lead_id)
        s.commit()
        leads.claim_lead(s, actor=bob, lead_id=lead_id, policy=policy)  # others are not cooled down
        s.commit()


def test_unworked_leads_go_back_to_the_pool(org: Org) -> None:
    worked, idle, fresh = _pool_leads(org, 3)
    alice = org.actor("alice")
    later = utcnow() + timedelta(days=10)  # the events are append-only: move the clock instead
    with Session(org.engine) as s:
        for lead_id in (worked, idle, fresh):
            leads.claim_lead(s, actor=alice, lead_id=lead_id)
        s.commit()
        # Ten days on: alice called `worked` yesterday; `fresh` changed stage (was reassigned) two days ago.
        append_event(s, "call_attempt", lead_id=worked, actor_id=alice.id, occurred_at=later - timedelta(days=1))
        s.execute(update(Lead).where(Lead.id == fresh).values(stage_changed_at=later - timedelta(days=2)))
        s.commit()
        recycled = recycle_unworked(s, actor=SYSTEM, days=7, now=later)
        s.commit()
        untouched_owned = {org.leads[k] for k in ("alice", "bob", "wendy")}  # the org's owned leads, never worked
        assert set(recycled) == {idle} | untouched_owned
        lead = s.get_one(Lead, idle)
        assert lead.owner_id is None and lead.stage == Stage.RECYCLED.value
        release = s.scalars(select(Event).where(Event.lead_id == idle, Event.type == "release")).one()
        assert release.payload == {"previous_owner_id": alice.id, "reason": "unworked for 7 days"}
        assert recycle_unworked(s, actor=SYSTEM, days=7, now=later) == []  # idempotent
        assert s.scalar(select(func.count()).select_from(Lead).where(Lead.stage == Stage.RECYCLED.value)) == 4
