"""Row-level access: which leads, contacts, users, tasks and events an actor may see, as SQL clauses.

Roles are enforced here, inside the queries, so no route can forget them:
admins see everything; supervisors the leads of their team subtree plus the claim pool; salespeople
their own leads plus the pool; screeners unowned leads being screened (new or screening).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, or_, select, true
from sqlalchemy.orm import Session

from leadpilot.crm.models import Account, Contact, Event, Lead, Role, Task, Team, User
from leadpilot.crm.stages import POOL_STAGES, SCREENING_STAGES


@dataclass(frozen=True)
class Actor:
    """Who is acting: the authenticated user, or the system (id None, all rights) for batch jobs."""

    id: int | None
    role: Role
    team_id: int | None = None
    username: str = "system"
    # Team ids in the actor's subtree (own team and all below); filled for supervisors.
    team_ids: frozenset[int] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


SYSTEM = Actor(id=None, role=Role.ADMIN)


def team_subtree(session: Session, root_id: int) -> frozenset[int]:
    """Ids of the team and every team below it."""
    parents: dict[int, int | None] = {tid: pid for tid, pid in session.execute(select(Team.id, Team.parent_id))}
    children: dict[int, list[int]] = {}
    for team_id, parent_id in parents.items():
        if parent_id is not None:
            children.setdefault(parent_id, []).append(team_id)
    found: set[int] = set()
    stack = [root_id]
    while stack:
        current = stack.pop()
        if current in found:
            continue  # a cycle should be impossible (services refuse it); never loop forever
        found.add(current)
        stack.extend(children.get(current, []))
    return frozenset(found)


def actor_for(session: Session, user: User) -> Actor:
    """The actor for a user, with the team subtree resolved for supervisors."""
    role = Role(user.role)
    team_ids: frozenset[int] = frozenset()
    if role is Role.SUPERVISOR and user.team_id is not None:
        team_ids = team_subtree(session, user.team_id)
    return Actor(id=user.id, role=role, team_id=user.team_id, username=user.username, team_ids=team_ids)


POOL_STAGE_VALUES = frozenset(s.value for s in POOL_STAGES)


def pool_clause() -> ColumnElement[bool]:
    """Leads in the claim pool: unowned and qualified or recycled."""
    return and_(Lead.owner_id.is_(None), Lead.stage.in_(sorted(POOL_STAGE_VALUES)))


def lead_scope(
    actor: Actor, *, stages: Collection[str] | None = None, in_pool: bool | None = None
) -> ColumnElement[bool]:
    """The leads an actor may see; optionally only those in ``stages`` and in (True) or outside (False) the pool.

    The stage and pool filters are folded in here, not ANDed on afterwards, so that a branch of the role
    scope no lead passing them can match is left out: a salesperson asking for stage ``assigned`` gets
    ``owner_id = me AND stage IN ('assigned')``, not ``(owner_id = me OR <pool>) AND ...``; asking for the
    pool gets the pool clause once. Same rows, but one index range for the database instead of an OR (and
    no repeated predicate for PostgreSQL to misestimate).
    """
    clauses: list[ColumnElement[bool]] = []
    if stages is not None:
        clauses.append(Lead.stage.in_(list(stages)))
    if in_pool is True:
        clauses.append(pool_clause())
    elif in_pool is False:
        clauses.append(~pool_clause())
    if actor.role is Role.SCREENER:
        clauses.append(Lead.stage.in_([s.value for s in SCREENING_STAGES]))
    elif actor.role in (Role.SALES, Role.SUPERVISOR):
        if in_pool is not True:  # the pool is inside every sales and supervisor scope: nothing to add for it
            own: list[ColumnElement[bool]]
            if actor.role is Role.SUPERVISOR and actor.team_ids:
                members = select(User.id).where(User.team_id.in_(actor.team_ids))
                own = [Lead.team_id.in_(actor.team_ids), Lead.owner_id.in_(members)]
            else:
                own = [Lead.owner_id == actor.id]
            pool_possible = in_pool is None and (stages is None or not POOL_STAGE_VALUES.isdisjoint(stages))
            clauses.append(or_(*own, pool_clause()) if pool_possible else or_(*own))
    elif actor.role is not Role.ADMIN:
        return false()
    return and_(*clauses) if clauses else true()


def visible_lead_ids(actor: Actor) -> Select[Any]:
    """A subquery of the ids of leads the actor may see."""
    return select(Lead.id).where(lead_scope(actor))


def contact_scope(actor: Actor) -> ColumnElement[bool]:
    """Contacts an actor may see: those of visible leads, and those they created themselves."""
    if actor.is_admin:
        return true()
    of_leads = Contact.id.in_(select(Lead.contact_id).where(lead_scope(actor), Lead.contact_id.is_not(None)))
    return or_(of_leads, Contact.created_by_id == actor.id) if actor.id is not None else of_leads


def account_scope(actor: Actor) -> ColumnElement[bool]:
    """Accounts an actor may see: those of visible leads, and those they created themselves."""
    if actor.is_admin:
        return true()
    of_leads = Account.id.in_(select(Lead.account_id).where(lead_scope(actor), Lead.account_id.is_not(None)))
    return or_(of_leads, Account.created_by_id == actor.id) if actor.id is not None else of_leads


def user_scope(actor: Actor) -> ColumnElement[bool]:
    """Users an actor may see: admins all, supervisors their subtree, others their own team."""
    if actor.is_admin:
        return true()
    if actor.role is Role.SUPERVISOR and actor.team_ids:
        return or_(User.id == actor.id, User.team_id.in_(actor.team_ids))
    if actor.team_id is not None:
        return or_(User.id == actor.id, User.team_id == actor.team_id)
    return User.id == actor.id


def task_scope(actor: Actor) -> ColumnElement[bool]:
    """Tasks an actor may see: assigned to them, about a lead they see, or (supervisors) their team's."""
    if actor.is_admin:
        return true()
    clauses = [Task.assignee_id == actor.id, Task.lead_id.in_(visible_lead_ids(actor))]
    if actor.role is Role.SUPERVISOR and actor.team_ids:
        clauses.append(Task.assignee_id.in_(select(User.id).where(User.team_id.in_(actor.team_ids))))
    return or_(*clauses)


def event_scope(actor: Actor) -> ColumnElement[bool]:
    """Events an actor may see: those about leads they see (system-wide events are admin-only)."""
    if actor.is_admin:
        return true()
    return Event.lead_id.in_(visible_lead_ids(actor))


def can_manage_user(actor: Actor, target_team_id: int | None) -> bool:
    """Whether the actor may change users of this team (admins any; supervisors within their subtree)."""
    if actor.is_admin:
        return True
    return actor.role is Role.SUPERVISOR and target_team_id is not None and target_team_id in actor.team_ids
