"""Cold-start scoring rules: ``condition -> action`` over lead fields and features, versioned, evaluated vectorised.

A rule reads like ``budget > 500000 and page_views_30d > 3 -> priority: high``. The condition is the
safe expression language of :mod:`leadpilot.expressions` (Python syntax, no ``eval``); names are the lead's
CRM attributes (:data:`leadframe.LEAD_ATTRIBUTES`, plus ``stage`` and ``has_owner``), any lead or account
derived feature of the dictionary by its full name (``page_views__all__count__30d``) or by a short alias
``<base>_<window>`` (the base's first function over all product lines). Actions: ``priority: high|medium|low``
and/or ``review`` (the lead goes to the manual review queue; a rule's priority then applies only once a
reviewer approves). Saving a rule validates it and adds a version; evaluation uses the current versions.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor, lead_scope
from leadpilot.crm.audit import audit, audit_many
from leadpilot.crm.errors import Forbidden, Invalid, NotFound
from leadpilot.crm.events import append_event, append_events_bulk
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import Lead, Role
from leadpilot.db.base import utcnow
from leadpilot.expressions import Expression, ExpressionError, parse, to_pandas
from leadpilot.features.dictionary import ALL_BUCKET, FeatureDictionary
from leadpilot.features.store import FeatureStore
from leadpilot.models.leadframe import (
    LEAD_ATTRIBUTES,
    RULE_ONLY_ATTRIBUTES,
    feature_columns,
    feature_frame,
    load_leads,
)
from leadpilot.models.tables import ReviewItem, ReviewStatus, ScoringRule

PRIORITIES = ("low", "medium", "high")
_RANK = {p: i for i, p in enumerate(PRIORITIES)}
_NAME = re.compile(r"^[A-Za-z0-9_.\- ]{1,120}$")
RULE_MANAGERS = frozenset({Role.ADMIN, Role.SUPERVISOR})
REVIEWERS = frozenset({Role.ADMIN, Role.SUPERVISOR, Role.SCREENER})
REVIEW_SORT = sort_keys(ReviewItem.id, ReviewItem.created_at)


class RuleError(Invalid):
    """A rule that does not parse or names something unknown; the message says which part."""


@dataclass(frozen=True)
class ParsedRule:
    """A validated rule: its condition and what it does."""

    text: str
    condition: Expression
    priority: str | None
    review: bool
    features: tuple[str, ...]  # full derived-feature names the condition reads


@dataclass
class RuleCatalogue:
    """Every name a rule may use, mapped to the column it reads."""

    columns: dict[str, str]
    feature_names: frozenset[str]

    @classmethod
    def build(cls, dictionary: FeatureDictionary | None) -> RuleCatalogue:
        columns = {name: name for name in (*LEAD_ATTRIBUTES, *RULE_ONLY_ATTRIBUTES)}
        features: set[str] = set()
        if dictionary is not None:
            derived = feature_columns(dictionary)
            for d in derived:
                columns.setdefault(d.name, d.name)
                features.add(d.name)
            for d in derived:  # aliases: the first function of a base over all product lines, per window
                if d.bucket.name == ALL_BUCKET and d.function == d.base.functions[0]:
                    columns.setdefault(f"{d.base.name}_{d.window}", d.name)
        return cls(columns, frozenset(features))


def parse_rule(text: str, catalogue: RuleCatalogue) -> ParsedRule:
    """Parse ``condition -> action[, action]``; errors name the unknown field or the bad part."""
    if not isinstance(text, str) or "->" not in text:
        raise RuleError("a rule is 'condition -> action', e.g. 'budget > 500000 -> priority: high'", field="text")
    condition_text, _, action_text = text.rpartition("->")
    priority: str | None = None
    review = False
    for part in (p.strip() for p in action_text.split(",")):
        if part == "review":
            review = True
        elif part.startswith("priority"):
            _, _, value = part.partition(":")
            value = value.strip().lower()
            if value not in _RANK:
                raise RuleError(f"priority must be one of {', '.join(PRIORITIES)}, not {value!r}", field="action")
            priority = value
        else:
            raise RuleError(f"unknown action {part!r}: use 'priority: high|medium|low' and/or 'review'", field="action")
    if priority is None and not review:
        raise RuleError("a rule needs an action: 'priority: high|medium|low' and/or 'review'", field="action")
    condition_text = condition_text.strip()
    try:
        tree = ast.parse(condition_text, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"syntax error in the condition at column {exc.offset}: {condition_text!r}") from None
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}  # function names are checked by parse
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in catalogue.columns and id(node) not in called:
            close = difflib.get_close_matches(node.id, list(catalogue.columns), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RuleError(f"unknown field {node.id!r} in the condition{hint}", field=node.id)
    try:
        condition = parse(condition_text, set(catalogue.columns), allow_payload=False)
    except ExpressionError as exc:
        raise RuleError(exc.reason + f" in the condition {condition_text!r}") from None
    used = tuple(sorted({catalogue.columns[n] for n in condition.names} & catalogue.feature_names))
    return ParsedRule(text.strip(), condition, priority, review, used)


def _require(actor: Actor, roles: frozenset[Role], what: str) -> None:
    if actor.role not in roles:
        raise Forbidden(f"{actor.role.value} may not {what}")


def save_rule(
    session: Session,
    *,
    actor: Actor,
    name: str,
    text: str,
    catalogue: RuleCatalogue,
    enabled: bool = True,
) -> ScoringRule:
    """Validate and store a rule as the next version of ``name`` (the previous version stops being current)."""
    _require(actor, RULE_MANAGERS, "edit scoring rules")
    if not _NAME.match(name or ""):
        raise RuleError("a rule name is 1-120 letters, digits, spaces, '.', '_' or '-'", field="name")
    parsed = parse_rule(text, catalogue)
    previous = session.scalars(select(ScoringRule).where(ScoringRule.name == name, ScoringRule.current)).all()
    for old in previous:
        old.current = False
    version = (session.scalar(select(func.max(ScoringRule.version)).where(ScoringRule.name == name)) or 0) + 1
    row = ScoringRule(
        name=name,
        version=version,
        text=parsed.text,
        condition=parsed.condition.text,
        priority=parsed.priority,
        review=parsed.review,
        enabled=enabled,
        current=True,
        created_by_id=actor.id,
    )
    session.add(row)
    session.flush()
    append_event(session, "rule_saved", actor_id=actor.id, payload={"rule": name, "version": version, "text": text})
    audit(session, actor, "create", "scoring_rule", row.id, {"name": name, "version": version, "text": text})
    return row


def set_enabled(session: Session, *, actor: Actor, name: str, enabled: bool) -> ScoringRule:
    """Turn the current version of a rule on or off."""
    _require(actor, RULE_MANAGERS, "edit scoring rules")
    row = session.scalar(select(ScoringRule).where(ScoringRule.name == name, ScoringRule.current))
    if row is None:
        raise NotFound(f"no scoring rule named {name!r}")
    row.enabled = enabled
    audit(session, actor, "update", "scoring_rule", row.id, {"enabled": enabled})
    return row


def list_rules(session: Session, *, history: bool = False) -> list[ScoringRule]:
    """Current rules (or every version with ``history``), by name."""
    stmt = select(ScoringRule).order_by(ScoringRule.name, ScoringRule.version.desc())
    if not history:
        stmt = stmt.where(ScoringRule.current)
    return list(session.scalars(stmt))


def rule_json(row: ScoringRule) -> dict[str, Any]:
    """A rule version as plain data."""
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "text": row.text,
        "condition": row.condition,
        "priority": row.priority,
        "review": row.review,
        "enabled": row.enabled,
        "current": row.current,
        "created_at": row.created_at.isoformat(),
    }


@dataclass
class RuleRun:
    """What one evaluation did."""

    leads: int = 0
    matches: dict[str, int] = field(default_factory=dict)
    priority_changed: int = 0
    review_added: int = 0
    feature_day: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def evaluate_frame(
    rules: Sequence[tuple[ScoringRule, ParsedRule]], frame: pd.DataFrame, catalogue: RuleCatalogue
) -> dict[int, np.ndarray]:
    """Which rows of ``frame`` each rule matches (vectorised; NULL compares as no match)."""
    out: dict[int, np.ndarray] = {}
    for row, parsed in rules:
        result = to_pandas(parsed.condition, frame, catalogue.columns)
        if isinstance(result, pd.Series):
            out[row.id] = result.astype("boolean").fillna(False).to_numpy(dtype=bool)
        else:
            out[row.id] = np.full(len(frame), bool(result))
    return out


def evaluate_rules(
    engine: Engine,
    *,
    store: FeatureStore | None,
    actor: Actor = SYSTEM,
    lead_ids: Sequence[int] | None = None,
    now: datetime | None = None,
    apply: bool = True,
) -> RuleRun:
    """Evaluate the current, enabled rules on open leads: set priorities, queue leads for review, write events."""
    started = datetime.now()
    now = now or utcnow()
    run = RuleRun()
    catalogue = RuleCatalogue.build(store.dictionary if store else None)
    with Session(engine) as session:
        rows = [r for r in list_rules(session) if r.enabled]
        parsed = [(r, parse_rule(r.text, catalogue)) for r in rows]
        leads = load_leads(session, lead_ids=lead_ids, open_only=True, now=now)
        run.leads = len(leads)
        if leads.empty or not parsed:
            if apply:
                _audit_run(session, actor, run)
            return run
        wanted = sorted({name for _, p in parsed for name in p.features})
        frame = leads
        if wanted:
            if store is None or not store.runs():
                raise RuleError(
                    "these rules read features, but none are computed yet: run `leadpilot features compute`"
                )
            day: date = store.runs()[-1]
            run.feature_day = day.isoformat()
            frame = leads.join(feature_frame(store, leads, day=day, names=wanted))
        matches = evaluate_frame(parsed, frame, catalogue)
        run.matches = {r.name: int(matches[r.id].sum()) for r, _ in parsed}
        ids = leads.index.to_numpy()
        decided = _review_decisions(session, [r.id for r in rows])
        best = np.full(len(ids), -1)
        review_rows: list[dict[str, Any]] = []
        for rule, p in parsed:
            hit = matches[rule.id]
            if p.review:
                for lead_id in ids[hit]:
                    if (int(lead_id), rule.id) not in decided:
                        review_rows.append({"lead_id": int(lead_id), "rule_id": rule.id})
            if p.priority is not None:
                applies = hit.copy()
                if p.review:  # a reviewed rule's priority waits for approval
                    approved = np.array([decided.get((int(i), rule.id)) == ReviewStatus.APPROVED.value for i in ids])
                    applies &= approved
                best = np.where(applies, np.maximum(best, _RANK[p.priority]), best)
        new_priority = [PRIORITIES[b] if b >= 0 else None for b in best]
        old_priority = [p if isinstance(p, str) else None for p in leads["priority"].tolist()]
        changed = [(int(i), o, n) for i, o, n in zip(ids, old_priority, new_priority, strict=True) if o != n]
        run.priority_changed = len(changed)
        run.review_added = len(review_rows)
        if apply:
            _apply(session, actor, changed, review_rows, now)
            _audit_run(session, actor, run)
    run.seconds = (datetime.now() - started).total_seconds()
    return run


def _audit_run(session: Session, actor: Actor, run: RuleRun) -> None:
    """Every applied run is an audited write, even one that changed nothing."""
    audit(session, actor, "run", "scoring_rules", None, {"leads": run.leads, "matches": run.matches})
    session.commit()


def _review_decisions(session: Session, rule_ids: list[int]) -> dict[tuple[int, int], str]:
    """(lead, rule) -> status of every review item of these rules."""
    if not rule_ids:
        return {}
    stmt = select(ReviewItem.lead_id, ReviewItem.rule_id, ReviewItem.status).where(ReviewItem.rule_id.in_(rule_ids))
    return {(lead, rule): status for lead, rule, status in session.execute(stmt)}


def _apply(
    session: Session,
    actor: Actor,
    changed: list[tuple[int, str | None, str | None]],
    review_rows: list[dict[str, Any]],
    now: datetime,
) -> None:
    if changed:
        # Core UPDATE for speed; the version bump keeps optimistic locking honest for concurrent editors.
        stmt = (
            update(Lead).where(Lead.id == bindparam("lid")).values(priority=bindparam("pr"), version=Lead.version + 1)
        )
        session.connection().execute(
            stmt.execution_options(synchronize_session=False),
            [{"lid": lead_id, "pr": new} for lead_id, _old, new in changed],
        )
        append_events_bulk(
            session,
            [
                {
                    "type": "priority_changed",
                    "lead_id": lead_id,
                    "actor_id": actor.id,
                    "occurred_at": now,
                    "payload": {"from": old, "to": new, "by": "rules"},
                }
                for lead_id, old, new in changed
            ],
        )
        audit_many(session, actor, "update", "lead", [c[0] for c in changed], field="priority", by="rules")
    if review_rows:
        session.execute(
            insert(ReviewItem),
            [r | {"status": ReviewStatus.PENDING.value, "created_at": now, "note": ""} for r in review_rows],
        )
        append_events_bulk(
            session,
            [
                {
                    "type": "review_requested",
                    "lead_id": r["lead_id"],
                    "actor_id": actor.id,
                    "occurred_at": now,
                    "payload": {"rule_id": r["rule_id"]},
                }
                for r in review_rows
            ],
        )


def list_review(
    session: Session,
    *,
    actor: Actor,
    status: str | None = ReviewStatus.PENDING.value,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[ReviewItem]:
    """Review items about leads the actor may see, oldest first."""
    _require(actor, REVIEWERS, "see the review queue")
    stmt = select(ReviewItem).join(Lead, Lead.id == ReviewItem.lead_id).where(lead_scope(actor))
    if status is not None:
        if status not in {s.value for s in ReviewStatus}:
            raise Invalid(f"status must be one of {', '.join(s.value for s in ReviewStatus)}", field="status")
        stmt = stmt.where(ReviewItem.status == status)
    return paginate(session, stmt, model=ReviewItem, sortable=REVIEW_SORT, sort="id", cursor=cursor, limit=limit)


def decide_review(session: Session, *, actor: Actor, item_id: int, approve: bool, note: str = "") -> ReviewItem:
    """Approve or reject a queued lead; the rule's priority applies from the next evaluation only if approved."""
    _require(actor, REVIEWERS, "decide review items")
    item = session.scalar(
        select(ReviewItem).join(Lead, Lead.id == ReviewItem.lead_id).where(ReviewItem.id == item_id, lead_scope(actor))
    )
    if item is None:
        raise NotFound(f"review item {item_id} not found")
    if item.status != ReviewStatus.PENDING.value:
        raise Invalid(f"review item {item_id} was already {item.status}", field="status")
    item.status = (ReviewStatus.APPROVED if approve else ReviewStatus.REJECTED).value
    item.decided_at = utcnow()
    item.decided_by_id = actor.id
    item.note = note
    append_event(
        session,
        "review_decided",
        lead_id=item.lead_id,
        actor_id=actor.id,
        payload={"rule_id": item.rule_id, "decision": item.status, "note": note},
    )
    audit(session, actor, "update", "review_item", item.id, {"status": item.status})
    return item


def review_json(item: ReviewItem) -> dict[str, Any]:
    """A review item as plain data."""
    return {
        "id": item.id,
        "lead_id": item.lead_id,
        "rule_id": item.rule_id,
        "status": item.status,
        "created_at": item.created_at.isoformat(),
        "decided_at": item.decided_at.isoformat() if item.decided_at else None,
        "decided_by_id": item.decided_by_id,
        "note": item.note,
    }
