"""Dashboard figures equal the slow, obvious computation from the event log and the leads (SQLite + PostgreSQL).

The dashboard reads the leads' milestone columns (a cache of the ``stage_change`` events kept by
``crm.leads`` and backfilled by migration 0009 and the simulator); these tests recompute every figure in
Python straight from the events on a tiny simulated company after extra stage changes made through the
services, for an admin, a supervisor and a salesperson, all time and from a date on.
"""

from __future__ import annotations

import importlib
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from leadpilot.crm import dashboard, leads, schemas
from leadpilot.crm.access import SYSTEM, Actor, actor_for
from leadpilot.crm.events import EventType, append_event
from leadpilot.crm.models import Event, Lead, Role, Stage, User
from leadpilot.crm.stages import TERMINAL_STAGES
from leadpilot.db.base import utcnow
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World

MILESTONES = {"first_qualified_at": "qualified", "first_assigned_at": "assigned", "first_contacted_at": "contacted"}
OPEN = {s.value for s in Stage if s not in TERMINAL_STAGES}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _user(session: Session, username: str) -> User:
    return session.execute(select(User).where(User.username == username)).scalar_one()


def _work_some_leads(engine: Engine) -> dict[str, int]:
    """Stage changes through the services on top of the simulated history: claims, assignments, moves to
    qualified and contacted, a release and a brand-new lead walked through the whole funnel."""
    done: Counter[str] = Counter()
    with Session(engine) as s:
        seller = _user(s, "sales_0001")
        sales = actor_for(s, seller)
        sup = actor_for(s, _user(s, "sup_01"))
        other = (
            s.execute(
                select(User).where(User.role == Role.SALES.value, User.team_id.in_(sup.team_ids), User.id != sales.id)
            )
            .scalars()
            .first()
        )
        assert other is not None
        early = s.execute(select(Lead.id, Lead.stage).where(Lead.stage.in_(["new", "screening"])).limit(8)).all()
        screening = [int(lead_id) for lead_id, _ in early]
        assert len(screening) == 8
        for lead_id, stage in early:  # (new ->) screening -> qualified, into the claim pool
            if stage == "new":
                leads.change_stage(s, actor=SYSTEM, lead_id=lead_id, stage=Stage.SCREENING)
            leads.change_stage(s, actor=SYSTEM, lead_id=lead_id, stage=Stage.QUALIFIED)
            done["qualified"] += 1
        for lead_id in screening[:3]:  # claimed, then contacted
            leads.claim_lead(s, actor=sales, lead_id=lead_id)
            leads.change_stage(s, actor=sales, lead_id=lead_id, stage=Stage.CONTACTED)
            done["claimed+contacted"] += 1
        leads.assign_lead(s, actor=sup, lead_id=screening[3], owner_id=other.id)  # assigned, never contacted
        leads.claim_lead(s, actor=sales, lead_id=screening[4])  # claimed, released (recycled), claimed again
        leads.release_lead(s, actor=sales, lead_id=screening[4])
        leads.claim_lead(s, actor=sales, lead_id=screening[4])
        leads.change_stage(s, actor=sales, lead_id=screening[4], stage=Stage.CONTACTED)
        # screening[5:]: qualified leads waiting in the pool for their first contact
        fresh = leads.create_lead(
            s, actor=SYSTEM, data=schemas.LeadCreate(title="walked through", product_line="jobs", budget=1234.5)
        )
        for stage in (Stage.SCREENING, Stage.QUALIFIED):
            leads.change_stage(s, actor=SYSTEM, lead_id=fresh.id, stage=stage)
        leads.assign_lead(s, actor=SYSTEM, lead_id=fresh.id, owner_id=seller.id)
        for stage in (Stage.CONTACTED, Stage.NEGOTIATING, Stage.WON):
            leads.change_stage(s, actor=sales, lead_id=fresh.id, stage=stage)
        append_event(  # an escalation about the fresh lead (today)
            s, EventType.NOTIFICATION, lead_id=fresh.id, payload={"rule": "r", "message": "look at this lead"}
        )
        s.commit()
    return dict(done)


@dataclass
class Store:
    """Everything the slow computation reads, loaded once: users, leads, stage changes and notifications."""

    users: dict[int, User]
    leads: list[Lead]
    stage_changes: list[Event]
    notifications: list[Event]

    @classmethod
    def load(cls, s: Session) -> Store:
        events = list(s.scalars(select(Event).where(Event.type.in_(["stage_change", "notification"]))))
        return cls(
            {u.id: u for u in s.scalars(select(User))},
            list(s.scalars(select(Lead))),
            [e for e in events if e.type == "stage_change"],
            [e for e in events if e.type == "notification"],
        )


def _slow_firsts(store: Store, since: datetime | None) -> dict[int, dict[str, datetime]]:
    """Per lead, the earliest stage_change event (from ``since``) to qualified / assigned / contacted."""
    firsts: dict[int, dict[str, datetime]] = defaultdict(dict)
    for event in store.stage_changes:
        at = _aware(event.occurred_at)
        if event.lead_id is None or (since is not None and at < since):
            continue
        for column, stage in MILESTONES.items():
            if event.payload.get("to") == stage:
                known = firsts[event.lead_id].get(column)
                firsts[event.lead_id][column] = at if known is None else min(known, at)
    return firsts


def _in_scope(actor: Actor, lead: Lead, teams: dict[int, int | None]) -> bool:
    if actor.role is Role.ADMIN:
        return True
    if actor.role is Role.SUPERVISOR:
        owner_team = teams.get(lead.owner_id) if lead.owner_id is not None else None
        return lead.team_id in actor.team_ids or owner_team in actor.team_ids
    return lead.owner_id == actor.id


def _slow_summary(store: Store, actor: Actor, since: datetime | None) -> dict[str, Any]:
    """Every figure of ``dashboard.summary`` computed the obvious way, lead by lead, event by event."""
    users = store.users
    teams = {uid: u.team_id for uid, u in users.items()}
    in_scope = [lead for lead in store.leads if _in_scope(actor, lead, teams)]
    scoped = [lead for lead in in_scope if since is None or _aware(lead.created_at) >= since]
    firsts = _slow_firsts(store, since)
    stages = Counter(lead.stage for lead in scoped)
    q = [lead for lead in scoped if "first_qualified_at" in firsts.get(lead.id, {})]
    a = [lead for lead in scoped if "first_assigned_at" in firsts.get(lead.id, {})]
    hours = []
    waiting = 0
    for lead in q:
        f = firsts[lead.id]
        if "first_contacted_at" in f:
            hours.append(max((f["first_contacted_at"] - f["first_qualified_at"]).total_seconds() / 3600, 0.0))
        elif lead.stage in OPEN:
            waiting += 1
    board: dict[int, dict[str, Any]] = {}
    for lead in scoped:
        if lead.owner_id is None:
            continue
        u = users[lead.owner_id]
        row = board.setdefault(
            u.id,
            {"user_id": u.id, "username": u.username, "full_name": u.full_name, "team_id": u.team_id, "leads": 0}
            | {"open": 0, "won": 0, "lost": 0, "won_value": 0.0},
        )
        row["leads"] += 1
        row["open"] += lead.stage in OPEN
        row["won"] += lead.stage == "won"
        row["lost"] += lead.stage == "lost"
        row["won_value"] += (lead.budget or 0.0) if lead.stage == "won" else 0.0
    ranked = sorted(board.values(), key=lambda r: (-r["won"], -r["won_value"], r["user_id"]))
    for rank, row in enumerate(ranked, start=1):
        row["won_value"] = round(row["won_value"], 2)
        row["win_rate"] = round(row["won"] / row["leads"], 4)
        row["rank"] = rank

    def by(field: str) -> list[dict[str, Any]]:
        counts: Counter[str] = Counter()
        won: Counter[str] = Counter()
        for lead in scoped:
            key = getattr(lead, field) or "(none)"
            counts[key] += 1
            won[key] += lead.stage == "won"
        return sorted(
            ({"key": k, "leads": n, "won": won[k]} for k, n in counts.items()), key=lambda r: (-r["leads"], r["key"])
        )

    week_ago = utcnow() - timedelta(days=7)
    all_scope = {lead.id for lead in in_scope}
    notes = [e for e in store.notifications if e.lead_id in all_scope and _aware(e.occurred_at) >= week_ago]

    def rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    q_won = sum(lead.stage == "won" for lead in q)
    a_won = sum(lead.stage == "won" for lead in a)
    return {
        "funnel": [{"stage": st.value, "leads": stages.get(st.value, 0)} for st in Stage],
        "conversion": {
            "qualified_leads": len(q),
            "qualified_won": q_won,
            "qualified_to_won": rate(q_won, len(q)),
            "assigned_leads": len(a),
            "assigned_won": a_won,
            "assigned_to_won": rate(a_won, len(a)),
        },
        "speed_to_lead": {
            "contacted_leads": len(hours),
            "waiting_leads": waiting,
            "median_hours": round(statistics.median(hours), 2) if hours else None,
            "p90_hours": round(float(np.percentile(hours, 90)), 2) if hours else None,
        },
        "leaderboard": ranked[:50],
        "by_product_line": by("product_line"),
        "by_region": by("region"),
        "escalations": len(notes),
    }


def _milestones(engine: Engine) -> dict[int, tuple[Any, ...]]:
    columns = [getattr(Lead, c) for c in MILESTONES]
    with Session(engine) as s:
        return {
            int(r[0]): tuple(None if v is None else _aware(v) for v in r[1:])
            for r in s.execute(select(Lead.id, *columns))
        }


def test_figures_and_milestones_equal_the_slow_computation_from_the_event_log(engine: Engine, tmp_path: Path) -> None:
    generate(engine, World("tiny", seed=3), data_dir=tmp_path / "sim")  # milestones by the simulator's backfill
    assert _work_some_leads(engine) == {"claimed+contacted": 3, "qualified": 8}  # ... and by the services
    with Session(engine) as s:
        store = Store.load(s)
        actors = [actor_for(s, _user(s, name)) for name in ("admin", "sup_01", "sales_0001")]
        created = sorted(_aware(lead.created_at) for lead in store.leads)
        windows = [None, created[len(created) // 2]]  # all time, and the newer half of the leads
        for actor in actors:
            for since in windows:
                fast = dashboard.summary(s, actor=actor, since=since)
                slow = _slow_summary(store, actor, since)
                for key in ("funnel", "conversion", "leaderboard", "by_product_line", "by_region"):
                    assert fast[key] == slow[key], (actor.username, since, key)
                fast_speed, slow_speed = fast["speed_to_lead"], slow["speed_to_lead"]
                for key in ("contacted_leads", "waiting_leads"):
                    assert fast_speed[key] == slow_speed[key], (actor.username, since, key)
                for key in ("median_hours", "p90_hours"):  # the database's julianday vs Python's timedelta
                    assert fast_speed[key] == pytest.approx(slow_speed[key], abs=0.011), (actor.username, since, key)
                assert fast["escalations"]["count"] == slow["escalations"], actor.username
        admin_all = dashboard.summary(s, actor=actors[0])
        assert admin_all["conversion"]["qualified_leads"] > 100  # the comparison covered real volumes
        assert admin_all["speed_to_lead"]["contacted_leads"] > 50
        assert admin_all["escalations"]["count"] >= 1

    # The milestone columns themselves: the earliest stage change to each stage, lead by lead ...
    kept = _milestones(engine)
    firsts = _slow_firsts(store, None)
    assert kept == {lead_id: tuple(firsts.get(lead_id, {}).get(c) for c in MILESTONES) for lead_id in kept}
    assert sum(1 for v in kept.values() if v[0] is not None) > 100
    blank: dict[str, Any] = {c: None for c in MILESTONES} | {"updated_at": Lead.updated_at}
    with Session(engine) as s:
        updated = {int(i): at for i, at in s.execute(select(Lead.id, Lead.updated_at))}
    with engine.begin() as conn:  # ... rebuilt identically by the simulator's backfill (SQLAlchemy) ...
        conn.execute(update(Lead).values(blank))
        assert dashboard.backfill_milestones(conn) > 100
    assert _milestones(engine) == kept
    with Session(engine) as s:  # a cache, not an edit: updated_at stays
        assert {int(i): at for i, at in s.execute(select(Lead.id, Lead.updated_at))} == updated
    migration = importlib.import_module("leadpilot.db.migrations.versions.0009_lead_milestones")
    with engine.begin() as conn:  # ... and by migration 0009's SQL on this dialect
        conn.execute(update(Lead).values(blank))
        conn.execute(text(migration.backfill_sql(conn.dialect.name)))
    assert _milestones(engine) == kept


def test_a_stage_change_sets_a_milestone_once_in_its_transaction(engine: Engine) -> None:
    with Session(engine) as s:
        lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="once"))
        for stage in (Stage.SCREENING, Stage.QUALIFIED):
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=stage)
        s.rollback()  # nothing was committed: neither events nor milestones
        assert s.scalar(select(Lead.id).where(Lead.title == "once")) is None

        lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title="twice"))
        leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.SCREENING)
        leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.QUALIFIED)
        s.commit()
        first = s.scalar(select(Lead.first_qualified_at).where(Lead.id == lead.id))
        event_at = s.scalar(
            select(Event.occurred_at).where(Event.lead_id == lead.id, Event.payload["to"].as_string() == "qualified")
        )
        assert first is not None and event_at is not None and _aware(first) == _aware(event_at)
        assert s.scalar(select(Lead.first_contacted_at).where(Lead.id == lead.id)) is None
