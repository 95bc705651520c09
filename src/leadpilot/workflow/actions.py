"""What a firing rule does: assign, create_task, notify, change_stage, webhook, enqueue_call.

Actions that change a lead (assign, change_stage) go through the CRM's service functions as the system
actor, so the life cycle is enforced and the audit rows and events are those of a person doing it. Actions
that only add rows (create_task, enqueue_call, notify, webhook) write the same rows and events as the
services, buffered in ``Writes`` so a batch of firings inserts them together. Everything runs inside the
firing's transaction: all of a firing's actions commit together with its firing record, or none do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM, team_subtree
from leadpilot.crm.events import EventType, append_events_bulk
from leadpilot.crm.models import AuditEntry, Lead, Role, Stage, Task, TaskKind, TaskStatus, Team, User
from leadpilot.crm.stages import OWNED_STAGES
from leadpilot.db.base import utcnow
from leadpilot.workflow.rules import Action, Rule, parse_delay
from leadpilot.workflow.tables import WebhookDelivery, WorkflowFiring, WorkflowNotification, WorkflowTimer


class ActionError(Exception):
    """An action that cannot be carried out (no owner, no supervisor, unknown user); the firing fails with it."""


@dataclass
class Resolver:
    """Looks up people and teams for actions, caching across the firings of one batch."""

    session: Session
    users: dict[str, int | None] = field(default_factory=dict)
    teams: dict[str, int | None] = field(default_factory=dict)
    supervisors: dict[int | None, int | None] = field(default_factory=dict)
    owner_teams: dict[int, int | None] = field(default_factory=dict)
    parents: dict[int, int | None] | None = None

    def user_id(self, username: str) -> int:
        if username not in self.users:
            self.users[username] = self.session.scalar(
                select(User.id).where(User.username == username, User.is_active.is_(True))
            )
        found = self.users[username]
        if found is None:
            raise ActionError(f"no active user named {username!r}")
        return found

    def team_id(self, name: str) -> int:
        if name not in self.teams:
            self.teams[name] = self.session.scalar(select(Team.id).where(Team.name == name))
        found = self.teams[name]
        if found is None:
            raise ActionError(f"no team named {name!r}")
        return found

    def supervisor_of(self, lead: Lead) -> int:
        """The active supervisor of the owner's team (else the lead's team), walking up the hierarchy."""
        team_id = lead.team_id
        if lead.owner_id is not None:
            if lead.owner_id not in self.owner_teams:
                self.owner_teams[lead.owner_id] = self.session.scalar(
                    select(User.team_id).where(User.id == lead.owner_id)
                )
            owner_team = self.owner_teams[lead.owner_id]
            team_id = owner_team if owner_team is not None else team_id
        if team_id not in self.supervisors:
            self.supervisors[team_id] = self._find_supervisor(team_id)
        found = self.supervisors[team_id]
        if found is None:
            raise ActionError(f"lead {lead.id}: no active supervisor in team {team_id} or the teams above it")
        return found

    def _find_supervisor(self, team_id: int | None) -> int | None:
        if self.parents is None:
            self.parents = {tid: pid for tid, pid in self.session.execute(select(Team.id, Team.parent_id))}
        seen: set[int] = set()
        while team_id is not None and team_id not in seen:
            seen.add(team_id)
            found = self.session.scalar(
                select(User.id)
                .where(User.team_id == team_id, User.role == Role.SUPERVISOR.value, User.is_active.is_(True))
                .order_by(User.id)
                .limit(1)
            )
            if found is not None:
                return found
            team_id = self.parents.get(team_id)
        return None

    def person(self, who: str, lead: Lead | None) -> int:
        """``owner``, ``supervisor`` or a username, as a user id."""
        if who in ("owner", "supervisor"):
            if lead is None:
                raise ActionError(f"{who!r} needs a lead, and this trigger has none")
            if who == "owner":
                if lead.owner_id is None:
                    raise ActionError(f"lead {lead.id} has no owner")
                return lead.owner_id
            return self.supervisor_of(lead)
        return self.user_id(who)

    def least_loaded_member(self, team_name: str) -> int:
        """The active salesperson or supervisor of the team (or below it) with the fewest owned open leads."""
        members = select(User.id).where(
            User.team_id.in_(team_subtree(self.session, self.team_id(team_name))),
            User.is_active.is_(True),
            User.role.in_([Role.SALES.value, Role.SUPERVISOR.value]),
        )
        ids = list(self.session.scalars(members))
        if not ids:
            raise ActionError(f"team {team_name!r} has no active salespeople")
        load = dict(
            self.session.execute(
                select(Lead.owner_id, func.count())
                .where(Lead.owner_id.in_(ids), Lead.stage.in_([s.value for s in OWNED_STAGES]))
                .group_by(Lead.owner_id)
            ).all()
        )
        return min(ids, key=lambda uid: (load.get(uid, 0), uid))


@dataclass
class Writes:
    """Rows a batch of firings inserts together at the end (or per firing, when a batch must be careful)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    firings: list[dict[str, Any]] = field(default_factory=list)
    timers: list[dict[str, Any]] = field(default_factory=list)
    # Task rows, each with the dicts (event payloads, action results) that must learn its id.
    tasks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)

    def mark(self) -> tuple[int, int, int, int, int]:
        return len(self.events), len(self.notifications), len(self.firings), len(self.timers), len(self.tasks)

    def undo(self, mark: tuple[int, int, int, int, int]) -> None:
        del self.events[mark[0] :], self.notifications[mark[1] :], self.firings[mark[2] :], self.timers[mark[3] :]
        del self.tasks[mark[4] :]

    def flush(self, session: Session) -> None:
        """Insert the buffered rows; tasks first (their ids go into the events, results and audit rows that
        name them), then events, firing records (which get their event's id, ``_event`` index) and timers."""
        if self.tasks:
            ids = session.scalars(
                insert(Task).returning(Task.id, sort_by_parameter_order=True), [row for row, _ in self.tasks]
            ).all()
            for task_id, (_, patches) in zip(ids, self.tasks, strict=True):
                for target in patches:
                    target["task_id"] = task_id
            now = utcnow()
            audit_rows: list[dict[str, Any]] = [
                {"at": now, "actor_id": None, "action": "create", "entity": "task", "entity_id": i, "detail": {}}
                for i in ids
            ]
            session.execute(insert(AuditEntry), audit_rows)
        if self.notifications:
            session.execute(insert(WorkflowNotification), self.notifications)
        ids = append_events_bulk(session, self.events) if self.events else []
        if self.firings:
            for row in self.firings:
                index = row.pop("_event", None)
                row["event_id"] = ids[index] if index is not None else None
            session.execute(insert(WorkflowFiring), self.firings)
        if self.timers:
            session.execute(update(WorkflowTimer), self.timers)
        self.events, self.notifications, self.firings, self.timers, self.tasks = [], [], [], [], []


@dataclass
class Firing:
    """Everything an action needs: the session, the rule, the lead, the trigger and the clock."""

    session: Session
    rule: Rule
    rule_id: int
    lead: Lead | None
    trigger_type: str | None
    trigger_payload: dict[str, Any]
    trigger_key: str
    now: datetime
    resolver: Resolver
    writes: Writes
    chain_tag: dict[str, Any]

    def event(self, type_: str, lead_id: int | None, payload: dict[str, Any]) -> None:
        """Append an event with the batch's bulk insert (stamped with the chain of rules behind it)."""
        payload["workflow"] = self.chain_tag  # in place: a task id may be filled in before the insert
        self.writes.events.append({"type": type_, "lead_id": lead_id, "payload": payload, "occurred_at": self.now})

    def render(self, template: str) -> str:
        lead = self.lead
        values = {
            "lead_id": lead.id if lead else "",
            "title": lead.title if lead else "",
            "stage": lead.stage if lead else "",
            "owner_id": lead.owner_id if lead and lead.owner_id is not None else "",
            "score": lead.score if lead and lead.score is not None else "",
            "rule": self.rule.name,
            "event_type": self.trigger_type or "",
        }
        return template.format_map(values)

    def lead_id(self) -> int:
        if self.lead is None:
            raise ActionError("this action needs a lead, and the trigger has none")
        return self.lead.id


def run_action(f: Firing, action: Action) -> dict[str, Any]:
    """Carry out one action; returns what it did (kept in the firing record and its event)."""
    p = action.params
    reason = f"workflow rule {f.rule.name}"
    if action.kind == "assign":
        owner = f.resolver.user_id(p["user"]) if "user" in p else f.resolver.least_loaded_member(p["team"])
        lead_service.assign_lead(
            f.session, actor=SYSTEM, lead_id=f.lead_id(), owner_id=owner, reason=p.get("reason", reason)
        )
        return {"action": "assign", "owner_id": owner, **({"team": p["team"]} if "team" in p else {})}
    if action.kind in ("create_task", "enqueue_call"):
        # The same checks and writes as crm.tasks.create_task (an active assignee, a task_created event, an
        # audit row), buffered so a batch inserts its tasks with one statement.
        assignee = f.resolver.person(p["assignee"], f.lead)
        due = f.now + parse_delay(p["due_in"]) if p.get("due_in") else None
        default_kind = TaskKind.CALL if action.kind == "enqueue_call" else TaskKind.FOLLOW_UP
        kind = TaskKind(p.get("kind", default_kind.value))
        title = f.render(p["title"]).strip()[:300]
        if not title:
            raise ActionError("the task title came out empty")
        lead_id = f.lead.id if f.lead else None
        result: dict[str, Any] = {"action": action.kind, "task_id": None, "assignee_id": assignee}
        created = {
            "task_id": None,
            "kind": kind.value,
            "assignee_id": assignee,
            "due_at": due.isoformat() if due else None,
        }
        patches = [result, created]
        row = {
            "title": title,
            "lead_id": lead_id,
            "assignee_id": assignee,
            "created_by_id": None,
            "kind": kind.value,
            "status": TaskStatus.OPEN.value,
            "due_at": due,
            "created_at": f.now,
            "updated_at": f.now,
        }
        f.writes.tasks.append((row, patches))
        f.event(EventType.TASK_CREATED, lead_id, created)
        if action.kind == "enqueue_call":
            enqueued = {"task_id": None, "assignee_id": assignee, "priority": p["priority"], "rule": f.rule.name}
            patches.append(enqueued)
            f.event(EventType.CALL_ENQUEUED, lead_id, enqueued)
            result["priority"] = p["priority"]
        return result
    if action.kind == "notify":
        message = f.render(p["message"])
        users = sorted({f.resolver.person(who, f.lead) for who in p["to"]})
        lead_id = f.lead.id if f.lead else None
        f.writes.notifications.extend(
            {"user_id": u, "lead_id": lead_id, "rule_id": f.rule_id, "message": message, "created_at": f.now}
            for u in users
        )
        f.event(EventType.NOTIFICATION, lead_id, {"user_ids": users, "message": message, "rule": f.rule.name})
        return {"action": "notify", "user_ids": users}
    if action.kind == "change_stage":
        moved = lead_service.change_stage(
            f.session, actor=SYSTEM, lead_id=f.lead_id(), stage=Stage(p["stage"]), reason=p.get("reason", reason)
        )
        return {"action": "change_stage", "stage": moved.stage}
    if action.kind == "webhook":
        lead = f.lead
        body = {
            "rule": f.rule.name,
            "trigger_key": f.trigger_key,
            "event": {"type": f.trigger_type, "payload": f.trigger_payload},
            "lead": None
            if lead is None
            else {
                "id": lead.id,
                "title": lead.title,
                "stage": lead.stage,
                "owner_id": lead.owner_id,
                "score": lead.score,
            },
        }
        delivery = WebhookDelivery(
            rule_id=f.rule_id,
            lead_id=lead.id if lead else None,
            url=p["url"],
            payload=body,
            max_attempts=p["max_attempts"],
            timeout_s=p["timeout"],
            next_attempt_at=f.now,
            created_at=f.now,
            history=[],
        )
        f.session.add(delivery)
        f.session.flush()
        return {"action": "webhook", "delivery_id": delivery.id, "url": p["url"]}
    raise ActionError(f"unknown action {action.kind!r}")  # pragma: no cover (validation refuses it)
