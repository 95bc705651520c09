"""Dashboard figures: funnel, conversion, leaderboard, speed-to-lead, breakdowns, escalations, assignments.

Every figure is an aggregate SQL query (GROUP BY in the database, no query per lead) over the leads the
actor's dashboard covers; only speed-to-lead's median and 90th percentile are taken by numpy, from the one
number per lead (hours) the database computes, since SQLite has no percentile function. The API
(``/api/v1/dashboard``) and the web workspace call these same functions, so both show the same numbers.

Scope: admins see every lead; supervisors the leads of their team subtree (a lead's team is in it or its
owner belongs to it; the unowned claim pool is not "their team's"); salespeople their own leads only;
screeners have no dashboard (403).

Definitions:

* **funnel**: leads by current stage (every stage listed, zero included).
* **conversion**: of the leads that ever reached ``qualified`` (a ``stage_change`` event to it), the
  share now ``won``; likewise from ``assigned`` (a claim or an assignment).
* **leaderboard**: per owner, leads owned now, open, won, lost, and **won value** = the sum of the
  budgets of their won leads (the lead's ``budget``; contract amounts posted as free-form event payloads
  are not trusted for money totals); sorted by won, then won value.
* **speed-to-lead**: hours from a lead's first move to ``qualified`` to its first move to ``contacted``
  (the salesperson's first contact); median and 90th percentile over the leads contacted, and how many
  open qualified leads are still waiting for it.

Conversion and speed-to-lead read the leads' milestone columns (``first_qualified_at``, ``first_assigned_at``,
``first_contacted_at``: the first ``stage_change`` event to that stage), a cache of the event log kept by
``crm.leads.record_milestone`` in the same transaction as the event and backfilled by migration 0009 and the
simulator (``backfill_milestones``). They equal the grouped pass over the ``stage_change`` events the figures are
defined by; with ``since``, a lead's stage changes are taken to happen after it was created. Funnel, leaderboard
and breakdowns add up one grouped query (``_groups``: stage, owner, product line, region), which ``summary``
runs once for all of them; the covering index ``ix_leads_dashboard`` serves it and ``flow`` without reading the
wide lead rows (benchmark 15 in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Table, and_, case, func, or_, select, true, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import Actor
from leadpilot.crm.errors import Forbidden, Invalid
from leadpilot.crm.events import EventType
from leadpilot.crm.models import Event, Lead, Role, Stage, User
from leadpilot.crm.stages import TERMINAL_STAGES
from leadpilot.db.base import utcnow
from leadpilot.distribution.tables import Recommendation

VIEWERS = frozenset({Role.ADMIN, Role.SUPERVISOR, Role.SALES})
MANAGERS = frozenset({Role.ADMIN, Role.SUPERVISOR})
BREAKDOWNS = ("product_line", "region")
OPEN_STAGES = tuple(s.value for s in Stage if s not in TERMINAL_STAGES)


def _require(actor: Actor, roles: frozenset[Role], what: str) -> None:
    if actor.role not in roles:
        raise Forbidden(f"{actor.role.value} may not see {what}")


def dashboard_scope(actor: Actor) -> ColumnElement[bool]:
    """The leads the actor's dashboard covers (see the module docstring); Forbidden for screeners."""
    _require(actor, VIEWERS, "dashboards")
    if actor.is_admin:
        return true()
    if actor.role is Role.SUPERVISOR and actor.team_ids:
        members = select(User.id).where(User.team_id.in_(actor.team_ids))
        return or_(Lead.team_id.in_(actor.team_ids), Lead.owner_id.in_(members))
    return Lead.owner_id == actor.id


def _lead_filter(actor: Actor, since: datetime | None) -> ColumnElement[bool]:
    clauses = [dashboard_scope(actor)]
    if since is not None:
        if since.tzinfo is None:
            raise Invalid("since needs a time zone (e.g. 2026-01-31T00:00:00Z)", field="since")
        clauses.append(Lead.created_at >= since)
    return and_(*clauses)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _groups(session: Session, actor: Actor, since: datetime | None) -> list[Any]:
    """The leads in scope counted by (stage, owner, product line, region), with the sum of the won leads' budgets:
    funnel, leaderboard and breakdowns all add these rows up, so the page reads the leads once (through the
    covering index ``ix_leads_dashboard``, not the wide table rows)."""
    won = Lead.stage == Stage.WON.value
    columns = (Lead.stage, Lead.owner_id, Lead.product_line, Lead.region)
    stmt = select(*columns, func.count(), func.sum(case((won, Lead.budget), else_=0.0)))
    return list(session.execute(stmt.where(_lead_filter(actor, since)).group_by(*columns)).all())


def funnel(
    session: Session, *, actor: Actor, since: datetime | None = None, groups: list[Any] | None = None
) -> list[dict[str, Any]]:
    """Leads by current stage, in life-cycle order, every stage listed (``since``: leads created from then);
    ``groups``: ``_groups``' rows when the caller already has them."""
    counts: dict[str, int] = {}
    for stage, _owner, _product, _region, n, _value in _groups(session, actor, since) if groups is None else groups:
        counts[str(stage)] = counts.get(str(stage), 0) + int(n)
    return [{"stage": s.value, "leads": counts.get(s.value, 0)} for s in Stage]


MILESTONE_STAGES = {
    "first_qualified_at": Stage.QUALIFIED.value,
    "first_assigned_at": Stage.ASSIGNED.value,
    "first_contacted_at": Stage.CONTACTED.value,
}


def backfill_milestones(connection: Connection) -> int:
    """Set every lead's milestone columns from the event log (the earliest ``stage_change`` to each stage), for
    paths that write events in bulk without ``crm.leads`` (the simulator); one grouped UPDATE, idempotent, leaving
    ``updated_at`` as it was (a cache, not an edit). Returns the number of leads updated."""
    to = Event.payload["to"].as_string()
    firsts = (
        select(
            Event.lead_id.label("lead_id"),
            *(
                func.min(case((to == stage, Event.occurred_at))).label(column)
                for column, stage in MILESTONE_STAGES.items()
            ),
        )
        .where(Event.type == EventType.STAGE_CHANGE.value, to.in_(list(MILESTONE_STAGES.values())))
        .group_by(Event.lead_id)
        .subquery()
    )
    leads: Table = Lead.__table__  # type: ignore[assignment]
    result = connection.execute(
        update(leads)
        .where(leads.c.id == firsts.c.lead_id)
        .values({column: firsts.c[column] for column in MILESTONE_STAGES} | {"updated_at": leads.c.updated_at})
    )
    return int(result.rowcount)


def _hours(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    """``end - start`` in hours, computed by the database (no timestamps shipped to Python)."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 24.0
    return func.extract("epoch", end - start) / 3600.0


def flow(session: Session, *, actor: Actor, since: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Conversion and speed-to-lead from the leads' milestones: ``{"conversion": ..., "speed_to_lead": ...}``.

    The database returns one row per lead in scope that reached qualified or assigned (flags and the hours
    from qualified to contacted); numpy counts them and takes the percentiles.
    """
    qualified = Lead.first_qualified_at.is_not(None)
    assigned = Lead.first_assigned_at.is_not(None)
    rows = session.execute(
        select(
            case((qualified, 1), else_=0),
            case((assigned, 1), else_=0),
            case((Lead.stage == Stage.WON.value, 1), else_=0),
            case((Lead.stage.in_(OPEN_STAGES), 1), else_=0),
            _hours(session, Lead.first_qualified_at, Lead.first_contacted_at),
        ).where(_lead_filter(actor, since), or_(qualified, assigned))
    ).all()
    flags = np.array([r[:4] for r in rows], dtype=bool).reshape(-1, 4)
    found = np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64)
    q, a, won, is_open = flags.T
    q_leads, q_won = int(q.sum()), int((q & won).sum())
    a_leads, a_won = int(a.sum()), int((a & won).sum())
    hours = np.maximum(found[q & np.isfinite(found)], 0.0)
    return {
        "conversion": {
            "qualified_leads": q_leads,
            "qualified_won": q_won,
            "qualified_to_won": _rate(q_won, q_leads),
            "assigned_leads": a_leads,
            "assigned_won": a_won,
            "assigned_to_won": _rate(a_won, a_leads),
        },
        "speed_to_lead": {
            "contacted_leads": len(hours),
            "waiting_leads": int((q & ~np.isfinite(found) & is_open).sum()),
            "median_hours": round(float(np.median(hours)), 2) if len(hours) else None,
            "p90_hours": round(float(np.percentile(hours, 90)), 2) if len(hours) else None,
        },
    }


def conversion(session: Session, *, actor: Actor, since: datetime | None = None) -> dict[str, Any]:
    """Leads that reached qualified / assigned (from the event log), how many of them are won, and the rates."""
    return flow(session, actor=actor, since=since)["conversion"]


def speed_to_lead(session: Session, *, actor: Actor, since: datetime | None = None) -> dict[str, Any]:
    """Hours from qualified to first contact (the move to contacted): leads contacted, open leads still
    waiting, median and 90th percentile."""
    return flow(session, actor=actor, since=since)["speed_to_lead"]


def leaderboard(
    session: Session,
    *,
    actor: Actor,
    since: datetime | None = None,
    limit: int = 50,
    groups: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """Per owner of leads in scope: leads, open, won, lost, won value (sum of won leads' budgets), win rate."""
    if not 1 <= limit <= 500:
        raise Invalid("limit must be between 1 and 500", field="limit")
    per_owner: dict[int, list[Any]] = {}
    for stage, owner, _product, _region, n, value in _groups(session, actor, since) if groups is None else groups:
        if owner is None:
            continue
        tally = per_owner.setdefault(int(owner), [0, 0, 0, 0, 0.0])
        tally[0] += int(n)
        tally[1] += int(n) if stage in OPEN_STAGES else 0
        tally[2] += int(n) if stage == Stage.WON.value else 0
        tally[3] += int(n) if stage == Stage.LOST.value else 0
        tally[4] += float(value or 0.0) if stage == Stage.WON.value else 0.0
    users = (
        session.execute(
            select(User.id, User.username, User.full_name, User.team_id).where(User.id.in_(list(per_owner)))
        ).all()
        if per_owner
        else []
    )
    rows = []
    for uid, username, full_name, team_id in users:
        n, open_n, won_n, lost_n, value = per_owner[int(uid)]
        rows.append(
            {
                "user_id": int(uid),
                "username": username,
                "full_name": full_name,
                "team_id": team_id,
                "leads": n,
                "open": open_n,
                "won": won_n,
                "lost": lost_n,
                "won_value": round(value, 2),
                "win_rate": _rate(won_n, n),
            }
        )
    rows.sort(key=lambda r: (-r["won"], -r["won_value"], r["user_id"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows[:limit]


def _aware(value: Any) -> datetime:
    """Aggregates over UTCDateTime columns come back untyped on SQLite (text or naive): make them aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def breakdown(
    session: Session, *, actor: Actor, by: str, since: datetime | None = None, groups: list[Any] | None = None
) -> list[dict[str, Any]]:
    """Leads and won leads per product line or region (``by``), most leads first; no value is '(none)'."""
    if by not in BREAKDOWNS:
        raise Invalid(f"cannot break down by {by!r}; choose one of {', '.join(BREAKDOWNS)}", field="by")
    tallies: dict[str | None, list[int]] = {}
    for stage, _owner, product, region, n, _value in _groups(session, actor, since) if groups is None else groups:
        tally = tallies.setdefault(product if by == "product_line" else region, [0, 0])
        tally[0] += int(n)
        tally[1] += int(n) if stage == Stage.WON.value else 0
    ordered = sorted(tallies.items(), key=lambda kv: (-kv[1][0], str(kv[0] if kv[0] is not None else "(none)")))
    return [{"key": key if key is not None else "(none)", "leads": n, "won": w} for key, (n, w) in ordered]


def escalations(session: Session, *, actor: Actor, since: datetime | None = None, limit: int = 10) -> dict[str, Any]:
    """Workflow notifications (escalations) about leads the dashboard covers: count since ``since`` (default: the
    last 7 days) and the latest. The notification events are found first (type and time index), then their
    leads checked against the scope."""
    since = since or utcnow() - timedelta(days=7)
    where = [Event.type == EventType.NOTIFICATION.value, Event.occurred_at >= since, dashboard_scope(actor)]
    count = (
        session.scalar(select(func.count()).select_from(Event).join(Lead, Lead.id == Event.lead_id).where(*where)) or 0
    )
    recent = session.execute(
        select(Event.id, Event.lead_id, Event.occurred_at, Event.payload)
        .join(Lead, Lead.id == Event.lead_id)
        .where(*where)
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    ).all()
    return {
        "since": since.isoformat(),
        "count": int(count),
        "recent": [
            {
                "event_id": int(eid),
                "lead_id": lead_id,
                "at": _aware(at).isoformat(),
                "rule": (payload or {}).get("rule"),
                "message": str((payload or {}).get("message", ""))[:300],
            }
            for eid, lead_id, at, payload in recent
        ],
    }


def summary(session: Session, *, actor: Actor, since: datetime | None = None) -> dict[str, Any]:
    """Every dashboard figure at once (what ``GET /api/v1/dashboard`` returns and the dashboard page shows)."""
    groups = _groups(session, actor, since)
    return {
        "scope": actor.role.value,
        "since": since.isoformat() if since else None,
        "funnel": funnel(session, actor=actor, since=since, groups=groups),
        **flow(session, actor=actor, since=since),
        "leaderboard": leaderboard(session, actor=actor, since=since, groups=groups),
        "by_product_line": breakdown(session, actor=actor, by="product_line", since=since, groups=groups),
        "by_region": breakdown(session, actor=actor, by="region", since=since, groups=groups),
        "escalations": escalations(session, actor=actor),
    }


def assignment_overview(session: Session, *, actor: Actor, now: datetime | None = None) -> list[dict[str, Any]]:
    """Today's (UTC) claims and assignments per salesperson in scope, with capacity and pending recommendations."""
    _require(actor, MANAGERS, "the assignment overview")
    now = now or utcnow()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    users = select(User.id, User.username, User.full_name, User.team_id, User.daily_capacity).where(
        User.role.in_([Role.SALES.value, Role.SUPERVISOR.value]), User.is_active
    )
    if not actor.is_admin:
        users = users.where(User.team_id.in_(actor.team_ids or {-1}))
    people = session.execute(users.order_by(User.username)).all()
    ids = [int(p[0]) for p in people]
    if not ids:
        return []
    claims = dict(
        session.execute(
            select(Event.actor_id, func.count())
            .where(Event.type == EventType.CLAIM.value, Event.occurred_at >= start, Event.actor_id.in_(ids))
            .group_by(Event.actor_id)
        ).all()
    )
    # CASE first: only assign events carry an owner id in "to" (stage changes hold a stage name there), and
    # PostgreSQL may evaluate the cast before the type filter of the WHERE clause.
    to = case((Event.type == EventType.ASSIGN.value, Event.payload["to"].as_integer()))
    assigned: dict[Any, int] = dict(
        session.execute(
            select(to, func.count())
            .where(Event.type == EventType.ASSIGN.value, Event.occurred_at >= start, to.in_(ids))
            .group_by(to)
        ).all()
    )
    recommended = dict(
        session.execute(
            select(Recommendation.user_id, func.count())
            .join(Lead, Lead.id == Recommendation.lead_id)
            .where(Recommendation.user_id.in_(ids), Lead.owner_id.is_(None))
            .group_by(Recommendation.user_id)
        ).all()
    )
    out = []
    for uid, username, full_name, team_id, capacity in people:
        taken = int(claims.get(uid, 0)) + int(assigned.get(uid, 0))
        out.append(
            {
                "user_id": int(uid),
                "username": username,
                "full_name": full_name,
                "team_id": team_id,
                "daily_capacity": int(capacity),
                "claimed_today": int(claims.get(uid, 0)),
                "assigned_today": int(assigned.get(uid, 0)),
                "capacity_left": max(0, int(capacity) - taken),
                "recommendations": int(recommended.get(uid, 0)),
            }
        )
    return out


def stage_order() -> Sequence[str]:
    """Stages in life-cycle order (for charts)."""
    return [s.value for s in Stage]
