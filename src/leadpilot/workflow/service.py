"""Service functions for workflow rules (what the CLI calls now and the web UI will call later)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm.access import Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Forbidden, NotFound
from leadpilot.crm.models import Role, Team, User
from leadpilot.db.base import utcnow
from leadpilot.workflow.engine import ensure_cursor
from leadpilot.workflow.rules import Rule, WorkflowError, describe_cycle, dump_yaml, find_cycle, load_yaml, parse_rule
from leadpilot.workflow.tables import WorkflowRule, WorkflowRuleVersion

RULE_MANAGERS = frozenset({Role.ADMIN, Role.SUPERVISOR})


def _require_manager(actor: Actor) -> None:
    if actor.role not in RULE_MANAGERS:
        raise Forbidden(f"{actor.role.value} may not edit workflow rules")


def default_rules_yaml() -> str:
    """The shipped example rules (disabled)."""
    return resources.files("leadpilot.demo").joinpath("workflow_rules.yaml").read_text(encoding="utf-8")


def stored_rules(session: Session) -> list[Rule]:
    """Every stored rule, parsed (enabled or not)."""
    return [parse_rule(row.definition) for row in session.scalars(select(WorkflowRule).order_by(WorkflowRule.name))]


def check_rules(session: Session, rules: list[Rule], *, check_cycles: bool = True) -> None:
    """Check rules against the database: no cycle with the stored rules, from_rules exist, and (for enabled
    rules) the users and teams their actions name exist."""
    problems: list[str] = []
    stored = {r.name: r for r in stored_rules(session)}
    merged = {**stored, **{r.name: r for r in rules}}
    users = set(session.scalars(select(User.username).where(User.is_active.is_(True))))
    teams = set(session.scalars(select(Team.name)))
    for rule in rules:
        for follows in rule.from_rules:
            if follows not in merged:
                problems.append(f"rule {rule.name!r}: trigger: from_rules names unknown rule {follows!r}")
        for i, action in enumerate(rule.actions if rule.enabled else ()):
            part = f"rule {rule.name!r}: actions[{i}] {action.kind}"
            people = [action.params.get("user"), action.params.get("assignee"), *action.params.get("to", [])]
            for who in people:
                if who and who not in ("owner", "supervisor") and who not in users:
                    problems.append(f"{part}: no active user named {who!r}")
            team = action.params.get("team")
            if team and team not in teams:
                problems.append(f"{part}: no team named {team!r}")
    if check_cycles and not problems:
        cycle = find_cycle(merged.values())
        if cycle:
            problems.append(describe_cycle(merged.values(), cycle) + "; change a trigger or an action to break it")
    if problems:
        raise WorkflowError(problems)


def save_rules(session: Session, *, actor: Actor, rules: list[Rule], check_cycles: bool = True) -> dict[str, list[str]]:
    """Store rules (new, or a new version when the definition changed); everything is checked first.

    ``check_cycles=False`` skips the static cycle check (the run-time chain guard still stops a cycle).
    Returns the names created, updated and unchanged.
    """
    _require_manager(actor)
    check_rules(session, rules, check_cycles=check_cycles)
    out: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    now = utcnow()
    for rule in rules:
        definition = rule.to_dict()
        row = session.scalar(select(WorkflowRule).where(WorkflowRule.name == rule.name))
        if row is not None and row.definition == definition and row.enabled == rule.enabled:
            out["unchanged"].append(rule.name)
            continue
        if row is None:
            row = WorkflowRule(name=rule.name, version=1, enabled=rule.enabled, definition=definition, created_at=now)
            session.add(row)
            out["created"].append(rule.name)
        else:
            row.version += 1
            row.definition = definition
            row.enabled = rule.enabled
            out["updated"].append(rule.name)
        row.updated_at = now
        session.flush()
        session.add(
            WorkflowRuleVersion(
                rule_id=row.id, version=row.version, definition=definition, created_at=now, created_by_id=actor.id
            )
        )
        audit(session, actor, "save", "workflow_rule", row.id, {"name": rule.name, "version": row.version})
    ensure_cursor(session)  # rules apply to events from now on
    return out


def import_yaml(session: Session, *, actor: Actor, text: str, check_cycles: bool = True) -> dict[str, list[str]]:
    """Validate a YAML rule file and store its rules (all or nothing)."""
    return save_rules(session, actor=actor, rules=load_yaml(text), check_cycles=check_cycles)


def validate_yaml(session: Session | None, *, text: str) -> list[Rule]:
    """Validate a YAML rule file (and, with a session, against the stored rules, users and teams)."""
    rules = load_yaml(text)
    if session is not None:
        check_rules(session, rules)
    return rules


def export_yaml(session: Session, *, names: list[str] | None = None) -> str:
    """The stored rules (or the named ones) as a YAML rule file, with their enabled flags."""
    rows = list(session.scalars(select(WorkflowRule).order_by(WorkflowRule.name)))
    if names:
        missing = sorted(set(names) - {r.name for r in rows})
        if missing:
            raise NotFound(f"no workflow rule named {missing[0]!r}")
        rows = [r for r in rows if r.name in names]
    rules = []
    for row in rows:
        data = dict(row.definition)
        data["enabled"] = row.enabled
        rules.append(parse_rule(data))
    return dump_yaml(rules)


def list_rules(session: Session) -> list[dict[str, Any]]:
    """Stored rules as plain data: name, version, enabled, triggers, delay and actions."""
    out = []
    for row in session.scalars(select(WorkflowRule).order_by(WorkflowRule.name)):
        rule = parse_rule(row.definition)
        out.append(
            {
                "id": row.id,
                "name": row.name,
                "version": row.version,
                "enabled": row.enabled,
                "description": rule.description,
                "trigger": list(rule.triggers),
                "after": row.definition.get("after"),
                "actions": [a.kind for a in rule.actions],
                "updated_at": row.updated_at,
            }
        )
    return out


def set_enabled(session: Session, *, actor: Actor, name: str, enabled: bool) -> WorkflowRule:
    """Switch a rule on or off (timers of a disabled rule are skipped when due)."""
    _require_manager(actor)
    row = session.scalar(select(WorkflowRule).where(WorkflowRule.name == name))
    if row is None:
        raise NotFound(f"no workflow rule named {name!r}")
    if row.enabled != enabled:
        if enabled:
            check_rules(session, [parse_rule({**row.definition, "enabled": True})])
        row.enabled = enabled
        row.definition = {**row.definition, "enabled": enabled}
        row.updated_at = utcnow()
        audit(session, actor, "update", "workflow_rule", row.id, {"enabled": enabled})
    ensure_cursor(session)
    return row


def install_defaults(session: Session, *, actor: Actor, enable: bool = False) -> dict[str, list[str]]:
    """Store the shipped example rules that are not there yet (disabled unless ``enable``)."""
    existing = set(session.scalars(select(WorkflowRule.name)))
    rules = [r for r in load_yaml(default_rules_yaml()) if r.name not in existing]
    if enable:
        rules = [parse_rule({**r.to_dict(), "enabled": True}) for r in rules]
    return save_rules(session, actor=actor, rules=rules, check_cycles=True)
