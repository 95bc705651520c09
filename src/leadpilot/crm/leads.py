"""Service functions for leads: CRUD, stage changes, claim pool (claim/release) and assignment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from leadpilot.crm import schemas
from leadpilot.crm.access import Actor, account_scope, contact_scope, lead_scope, pool_clause
from leadpilot.crm.audit import audit
from leadpilot.crm.common import apply_changes, get_visible, require_exists, require_visible
from leadpilot.crm.errors import Conflict, Forbidden, Invalid, NotFound
from leadpilot.crm.events import EventType, append_event
from leadpilot.crm.listing import Page, paginate_rows, sort_keys
from leadpilot.crm.models import Account, Contact, Event, Lead, Role, Stage, Team, User
from leadpilot.crm.stages import OWNED_STAGES, POOL_STAGES, SCREENING_STAGES, transition_error
from leadpilot.db.base import utcnow

LEAD_SORT = sort_keys(
    Lead.id,
    Lead.created_at,
    Lead.updated_at,
    Lead.stage_changed_at,
    score=(Lead.score, -1.0),
    budget=(Lead.budget, -1.0),
)
CLAIMER_ROLES = frozenset({Role.SALES, Role.SUPERVISOR})
OWNER_ROLES = frozenset({Role.SALES, Role.SUPERVISOR})
# Stage moves a screener may make: the screening half of the funnel only.
SCREENER_TARGETS = frozenset({Stage.SCREENING, Stage.QUALIFIED, Stage.LOST})


@dataclass
class LeadFilters:
    """Filters for listing leads; every one is optional and they combine with AND."""

    stage: list[str] | None = None
    product_line: str | None = None
    region: str | None = None
    source: str | None = None
    owner_id: int | None = None
    team_id: int | None = None
    account_id: int | None = None
    in_pool: bool | None = None
    min_budget: float | None = None
    max_budget: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None

    def check(self) -> None:
        """Refuse values no lead can have (so a typo is an error, not an empty page)."""
        if self.stage:
            unknown = [s for s in self.stage if s not in Stage.__members__.values()]
            if unknown:
                raise Invalid(f"unknown stage {unknown[0]!r}", field="stage")

    def scope(self, actor: Actor) -> ColumnElement[bool]:
        """The actor's role scope combined with the stage and pool filters (see ``access.lead_scope``)."""
        self.check()
        return lead_scope(actor, stages=self.stage or None, in_pool=self.in_pool)

    def other_clauses(self) -> list[ColumnElement[bool]]:
        """Every filter except stage and pool, which ``scope`` folds into the role scope."""
        clauses: list[ColumnElement[bool]] = []
        for name in ("product_line", "region", "source", "owner_id", "team_id", "account_id"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(getattr(Lead, name) == value)
        if self.min_budget is not None:
            clauses.append(Lead.budget >= self.min_budget)
        if self.max_budget is not None:
            clauses.append(Lead.budget <= self.max_budget)
        if self.min_score is not None:
            clauses.append(Lead.score >= self.min_score)
        if self.max_score is not None:
            clauses.append(Lead.score <= self.max_score)
        if self.created_after is not None:
            clauses.append(Lead.created_at >= self.created_after)
        if self.created_before is not None:
            clauses.append(Lead.created_at < self.created_before)
        if self.q:
            clauses.append(Lead.title.contains(self.q, autoescape=True))
        return clauses


# The columns a list page returns: every column of the table, as plain rows named like the columns.
LEAD_LIST_COLUMNS = tuple(Lead.__table__.c)


def list_leads(
    session: Session,
    *,
    actor: Actor,
    filters: LeadFilters | None = None,
    sort: str = "-created_at",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Row[Any]]:
    """Leads the actor may see, filtered and sorted, one page at a time, as rows (``row.id``, ``row.stage``...).

    Rows rather than ORM objects: a list is read-only, and building and tracking 50 objects per page
    cost more than the query itself.
    """
    filters = filters or LeadFilters()
    stmt = select(*LEAD_LIST_COLUMNS).where(filters.scope(actor), *filters.other_clauses())
    return paginate_rows(session, stmt, pk=Lead.id, sortable=LEAD_SORT, sort=sort, cursor=cursor, limit=limit)


def get_lead(session: Session, *, actor: Actor, lead_id: int) -> Lead:
    """One lead the actor may see."""
    return get_visible(session, Lead, lead_id, lead_scope(actor))


def _check_can_work(actor: Actor, lead: Lead) -> None:
    """Visible is not enough to change a lead: sales only their own, screeners only leads being screened."""
    if actor.role is Role.SALES and lead.owner_id != actor.id:
        raise Forbidden("salespeople may only change their own leads; claim it first")
    if actor.role is Role.SCREENER and lead.stage not in SCREENING_STAGES:
        raise Forbidden("screeners may only change leads that are new or in screening")


def _check_refs(session: Session, actor: Actor, fields: dict[str, Any]) -> None:
    # Linking a lead to a contact would reveal the contact's phone: only rows the actor may see.
    require_visible(session, Account, fields.get("account_id"), account_scope(actor), "account_id")
    require_visible(session, Contact, fields.get("contact_id"), contact_scope(actor), "contact_id")
    require_exists(session, Team, fields.get("team_id"), "team_id")


def create_lead(session: Session, *, actor: Actor, data: schemas.LeadCreate) -> Lead:
    """Create a lead in stage ``new``; a salesperson's own lead is owned by them from the start."""
    fields = data.model_dump()
    _check_refs(session, actor, fields)
    owner_id = actor.id if actor.role in (Role.SALES,) else None
    lead = Lead(**fields, owner_id=owner_id, stage=Stage.NEW.value, stage_changed_at=utcnow())
    session.add(lead)
    session.flush()
    append_event(
        session,
        EventType.LEAD_CREATED,
        lead_id=lead.id,
        actor_id=actor.id,
        payload={"source": lead.source, "product_line": lead.product_line, "via": "api"},
    )
    audit(session, actor, "create", "lead", lead.id)
    return lead


def update_lead(session: Session, *, actor: Actor, lead_id: int, data: schemas.LeadUpdate) -> Lead:
    """Change a lead's fields (not its stage or owner: those are explicit actions)."""
    lead = get_lead(session, actor=actor, lead_id=lead_id)
    _check_can_work(actor, lead)
    changes = data.model_dump(exclude_unset=True)
    expected = changes.pop("expected_version", None)
    if expected is not None and expected != lead.version:
        raise Conflict(f"lead {lead_id} changed since version {expected} (now {lead.version}); reload it")
    _check_refs(session, actor, changes)
    diff = apply_changes(lead, changes)
    if diff:
        append_event(
            session,
            EventType.LEAD_UPDATED,
            lead_id=lead.id,
            actor_id=actor.id,
            payload={"changes": {k: v for k, v in diff.items() if k != "notes"}},
        )
        audit(session, actor, "update", "lead", lead.id, {"fields": sorted(diff)})
        _flush_versioned(session, lead_id)
    return lead


def delete_lead(session: Session, *, actor: Actor, lead_id: int) -> None:
    """Delete a lead (admins); its events stay in the log."""
    lead = get_lead(session, actor=actor, lead_id=lead_id)  # 404 before 403: never reveal rows
    if not actor.is_admin:
        raise Forbidden("only an admin may delete leads")
    session.delete(lead)
    audit(session, actor, "delete", "lead", lead_id)


def record_milestone(session: Session, event: Event) -> None:
    """Keep the lead's milestone columns (first move to qualified / assigned / contacted) in step with a
    ``stage_change`` event, in the same transaction; the dashboard reads them instead of the log."""
    column = {
        Stage.QUALIFIED.value: Lead.first_qualified_at,
        Stage.ASSIGNED.value: Lead.first_assigned_at,
        Stage.CONTACTED.value: Lead.first_contacted_at,
    }.get(str((event.payload or {}).get("to")))
    if column is None or event.lead_id is None:
        return
    session.execute(
        update(Lead)
        .where(Lead.id == event.lead_id, column.is_(None) | (column > event.occurred_at))
        .values({column.key: event.occurred_at, "updated_at": Lead.updated_at})  # a cache: not an edit
        .execution_options(synchronize_session=False)
    )


def _flush_versioned(session: Session, lead_id: int) -> None:
    try:
        session.flush()
    except StaleDataError as exc:
        raise Conflict(f"lead {lead_id} was changed by someone else at the same moment; retry") from exc


def change_stage(session: Session, *, actor: Actor, lead_id: int, stage: Stage, reason: str | None = None) -> Lead:
    """Move a lead to another stage, enforcing the life cycle; an illegal move is a Conflict with the reason."""
    lead = get_lead(session, actor=actor, lead_id=lead_id)
    _check_can_work(actor, lead)
    target = Stage(stage)
    problem = transition_error(lead.stage, target.value)
    if problem:
        raise Conflict(f"lead {lead_id}: {problem}")
    if actor.role is Role.SCREENER and target not in SCREENER_TARGETS:
        raise Forbidden(f"screeners may not move leads to {target.value!r}")
    if target is Stage.ASSIGNED:
        raise Conflict(f"lead {lead_id}: a lead becomes 'assigned' by a claim or an assignment, which names the owner")
    if target in OWNED_STAGES and lead.owner_id is None:
        raise Conflict(f"lead {lead_id} has no owner; it must be claimed or assigned before {target.value!r}")
    previous, previous_owner = lead.stage, lead.owner_id
    lead.stage = target.value
    lead.stage_changed_at = utcnow()
    if target is Stage.LOST:
        lead.lost_reason = reason
    if target is Stage.RECYCLED:
        lead.owner_id = None  # back to the claim pool
    _flush_versioned(session, lead_id)
    moved = append_event(
        session,
        EventType.STAGE_CHANGE,
        lead_id=lead.id,
        actor_id=actor.id,
        payload={"from": previous, "to": target.value, "reason": reason, "owner_id": previous_owner},
    )
    record_milestone(session, moved)
    audit(session, actor, "stage_change", "lead", lead.id, {"from": previous, "to": target.value})
    return lead


def _pool_miss_reason(session: Session, actor: Actor, lead_id: int) -> Exception:
    """Why a claim missed: 404 if there is no such lead, else 409 (a lost race must read as a conflict)."""
    lead = session.scalar(select(Lead).where(Lead.id == lead_id).execution_options(populate_existing=True))
    if lead is None:
        return NotFound(f"lead {lead_id} not found")
    if lead.owner_id == actor.id:
        return Conflict(f"lead {lead_id} is already yours")
    if lead.owner_id is not None:
        return Conflict(f"lead {lead_id} was already claimed by someone else")
    # Stage details only for leads the actor may see; ids are not secret, contents are.
    visible = session.scalar(select(Lead.id).where(Lead.id == lead_id, lead_scope(actor))) is not None
    detail = f" (stage {lead.stage!r})" if visible else ""
    return Conflict(f"lead {lead_id} is not in the claim pool{detail}")


@dataclass(frozen=True)
class ClaimPolicy:
    """Claim pool limits: claims per salesperson per (UTC) day, and how long a previous owner waits to reclaim."""

    daily_limit: int | None = None
    cooldown_hours: float = 0.0


def _check_cooldown(session: Session, actor: Actor, lead_id: int, hours: float, now: datetime) -> None:
    """A previous owner may not take back a lead they gave up (or that was recycled from them) too soon."""
    since = now - timedelta(hours=hours)
    releases = session.execute(
        select(Event.occurred_at, Event.payload).where(
            Event.lead_id == lead_id, Event.type == EventType.RELEASE, Event.occurred_at >= since
        )
    )
    for at, payload in releases:
        if (payload or {}).get("previous_owner_id") == actor.id:
            until = at + timedelta(hours=hours)
            raise Conflict(
                f"lead {lead_id} left you at {at:%Y-%m-%d %H:%M} UTC; you may claim it again after "
                f"{until:%Y-%m-%d %H:%M} UTC (cool-down {hours:g} h)"
            )


def _check_daily_limit(session: Session, actor: Actor, limit: int, now: datetime) -> None:
    """Count today's claims (this one included, so run after the claim's write): over the limit rolls back."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    claimed = session.scalar(
        select(func.count())
        .select_from(Event)
        .where(Event.type == EventType.CLAIM, Event.actor_id == actor.id, Event.occurred_at >= start)
    )
    if (claimed or 0) > limit:
        raise Conflict(f"daily claim limit reached: {limit} leads per day (the count restarts at 00:00 UTC)")


def claim_lead(
    session: Session, *, actor: Actor, lead_id: int, policy: ClaimPolicy | None = None, now: datetime | None = None
) -> Lead:
    """Take a lead from the pool; one atomic conditional UPDATE, so of two racing claims exactly one wins.

    With a ``policy``: a previous owner within the cool-down gets 409, and so does a claim beyond the daily
    limit. The limit is counted after the claim's own write in the same transaction (PostgreSQL: with the
    claimer's user row locked first), so two simultaneous claims by one person cannot both slip under it.
    """
    if actor.role not in CLAIMER_ROLES or actor.id is None:
        raise Forbidden("only salespeople and supervisors may claim leads")
    policy = policy or ClaimPolicy()
    now = now or utcnow()
    if policy.daily_limit is not None:
        session.execute(select(User.id).where(User.id == actor.id).with_for_update())  # no-op on SQLite
    if policy.cooldown_hours > 0:
        _check_cooldown(session, actor, lead_id, policy.cooldown_hours, now)
    result = session.execute(
        update(Lead)
        .where(Lead.id == lead_id, pool_clause())
        .values(
            owner_id=actor.id,
            stage=Stage.ASSIGNED.value,
            stage_changed_at=now,
            updated_at=now,
            version=Lead.version + 1,
        )
        .returning(Lead.stage)
        .execution_options(synchronize_session=False)
    )
    if result.first() is None:
        raise _pool_miss_reason(session, actor, lead_id)
    lead = session.get_one(Lead, lead_id, populate_existing=True)
    append_event(session, EventType.CLAIM, lead_id=lead_id, actor_id=actor.id, payload={"owner_id": actor.id})
    moved = append_event(
        session,
        EventType.STAGE_CHANGE,
        lead_id=lead_id,
        actor_id=actor.id,
        payload={"from": "pool", "to": Stage.ASSIGNED.value, "reason": "claim", "owner_id": None},
    )
    record_milestone(session, moved)
    if policy.daily_limit is not None:
        _check_daily_limit(session, actor, policy.daily_limit, now)
    audit(session, actor, "claim", "lead", lead_id)
    return lead


def release_lead(session: Session, *, actor: Actor, lead_id: int, reason: str | None = None) -> Lead:
    """Give a lead back to the pool (stage ``recycled``): its owner, or a supervisor or admin who sees it."""
    lead = get_lead(session, actor=actor, lead_id=lead_id)
    if lead.owner_id is None:
        raise Conflict(f"lead {lead_id} has no owner; it is already in the pool or not yet qualified")
    if actor.role in (Role.SALES, Role.SCREENER) and lead.owner_id != actor.id:
        raise Forbidden("only the owner, a supervisor or an admin may release a lead")
    problem = transition_error(lead.stage, Stage.RECYCLED.value)
    if problem:
        raise Conflict(f"lead {lead_id}: {problem}")
    if not _release(session, actor, lead_id, lead.owner_id, lead.stage, reason):
        raise Conflict(f"lead {lead_id} changed while releasing it; reload and retry")
    lead = session.get_one(Lead, lead_id, populate_existing=True)
    audit(session, actor, "release", "lead", lead_id)
    return lead


def _release(
    session: Session, actor: Actor, lead_id: int, previous_owner: int, previous_stage: str, reason: str | None
) -> bool:
    """Move a lead back to the pool if it is still with ``previous_owner`` in ``previous_stage``; the events.

    False when the lead changed meanwhile (the conditional UPDATE matched nothing).
    """
    now = utcnow()
    result = session.execute(
        update(Lead)
        .where(Lead.id == lead_id, Lead.owner_id == previous_owner, Lead.stage == previous_stage)
        .values(
            owner_id=None, stage=Stage.RECYCLED.value, stage_changed_at=now, updated_at=now, version=Lead.version + 1
        )
        .returning(Lead.id)
        .execution_options(synchronize_session=False)
    )
    if result.first() is None:
        return False
    append_event(
        session,
        EventType.RELEASE,
        lead_id=lead_id,
        actor_id=actor.id,
        payload={"previous_owner_id": previous_owner, "reason": reason},
    )
    append_event(
        session,
        EventType.STAGE_CHANGE,
        lead_id=lead_id,
        actor_id=actor.id,
        payload={
            "from": previous_stage,
            "to": Stage.RECYCLED.value,
            "reason": reason or "release",
            "owner_id": previous_owner,
        },
    )
    return True


def recycle_unworked(session: Session, *, actor: Actor, days: float, now: datetime | None = None) -> list[int]:
    """Send owned leads their owner has not worked for ``days`` back to the pool (stage ``recycled``).

    "Worked" is any event by the owner on the lead; a lead is unworked when both its last such event (if any)
    and its move into its stage are older than ``days``. Each recycle is a ``release`` event with the reason.
    """
    now = now or utcnow()
    cutoff = now - timedelta(days=days)
    touched = (
        select(Event.lead_id, Event.actor_id, func.max(Event.occurred_at).label("at"))
        .where(Event.lead_id.is_not(None), Event.actor_id.is_not(None))
        .group_by(Event.lead_id, Event.actor_id)
        .subquery()
    )
    stale = session.execute(
        select(Lead.id, Lead.owner_id, Lead.stage)
        .outerjoin(touched, (touched.c.lead_id == Lead.id) & (touched.c.actor_id == Lead.owner_id))
        .where(
            Lead.owner_id.is_not(None),
            Lead.stage.in_([s.value for s in OWNED_STAGES]),
            Lead.stage_changed_at < cutoff,
            (touched.c.at.is_(None)) | (touched.c.at < cutoff),
        )
        .order_by(Lead.id)
    ).all()
    reason = f"unworked for {days:g} days"
    recycled = [
        lead_id
        for lead_id, owner, stage in stale
        if owner is not None and _release(session, actor, lead_id, owner, stage, reason)
    ]
    if recycled:
        audit(session, actor, "recycle", "lead", None, {"leads": len(recycled), "reason": reason})
    return recycled


def assign_lead(session: Session, *, actor: Actor, lead_id: int, owner_id: int, reason: str | None = None) -> Lead:
    """Give a lead to a salesperson (supervisors within their subtree, admins anyone)."""
    lead = get_lead(session, actor=actor, lead_id=lead_id)  # 404 before 403: never reveal rows
    if actor.role not in (Role.ADMIN, Role.SUPERVISOR):
        raise Forbidden("only supervisors and admins may assign leads")
    owner = session.get(User, owner_id)
    if owner is None:
        raise Invalid(f"user {owner_id} does not exist", field="owner_id")
    if not owner.is_active:
        raise Conflict(f"user {owner.username!r} is inactive", field="owner_id")
    if Role(owner.role) not in OWNER_ROLES:
        raise Invalid(f"user {owner.username!r} is a {owner.role}; leads go to sales or supervisors", field="owner_id")
    if actor.role is Role.SUPERVISOR and owner.team_id not in actor.team_ids:
        raise Forbidden(f"user {owner.username!r} is not in your team subtree")
    previous_owner, previous_stage = lead.owner_id, lead.stage
    if Stage(lead.stage) in POOL_STAGES:
        lead.stage = Stage.ASSIGNED.value
        lead.stage_changed_at = utcnow()
    elif Stage(lead.stage) not in OWNED_STAGES:
        raise Conflict(f"lead {lead_id} is {lead.stage!r}; only qualified, recycled or worked leads can be assigned")
    lead.owner_id = owner_id
    if owner.team_id is not None:
        lead.team_id = owner.team_id
    _flush_versioned(session, lead_id)
    append_event(
        session,
        EventType.ASSIGN,
        lead_id=lead_id,
        actor_id=actor.id,
        payload={"from": previous_owner, "to": owner_id, "reason": reason},
    )
    if previous_stage != lead.stage:
        moved = append_event(
            session,
            EventType.STAGE_CHANGE,
            lead_id=lead_id,
            actor_id=actor.id,
            payload={"from": previous_stage, "to": lead.stage, "reason": "assign", "owner_id": previous_owner},
        )
        record_milestone(session, moved)
    audit(session, actor, "assign", "lead", lead_id, {"from": previous_owner, "to": owner_id})
    return lead
