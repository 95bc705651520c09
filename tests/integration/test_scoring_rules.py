"""Cold-start scoring rules: validation on save, versions, vectorised evaluation, the manual review queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.crm import leads, schemas
from leadpilot.crm.access import SYSTEM, actor_for
from leadpilot.crm.errors import Forbidden, Invalid
from leadpilot.crm.models import AuditEntry, Event, Lead
from leadpilot.features.dictionary import load_default
from leadpilot.features.store import FeatureStore
from leadpilot.models import rules
from leadpilot.models.rules import RuleCatalogue, RuleError, parse_rule
from leadpilot.models.tables import ScoringRule
from tests.conftest import build_org
from tests.integration.test_features import TODAY, seed_crm

CATALOGUE = RuleCatalogue.build(load_default())


def test_a_rule_reads_fields_features_and_aliases() -> None:
    parsed = parse_rule("budget > 500000 and page_views_30d > 3 -> priority: high, review", CATALOGUE)
    assert parsed.priority == "high" and parsed.review
    assert parsed.features == ("page_views__all__count__30d",)
    full = parse_rule("calls_connected__housing__count__30d >= 1 and region in ['north', 'east'] -> review", CATALOGUE)
    assert full.priority is None and full.features == ("calls_connected__housing__count__30d",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budgt > 5 -> priority: high", "unknown field 'budgt' in the condition; did you mean budget"),
        ("visits_30d > 3 -> priority: high", "unknown field 'visits_30d'"),
        ("budget > -> priority: high", "syntax error in the condition"),
        ("budget > 5", "a rule is 'condition -> action'"),
        ("budget > 5 -> priority: urgent", "priority must be one of low, medium, high, not 'urgent'"),
        ("budget > 5 -> call them", "unknown action 'call them'"),
        ("__import__('os') -> review", "unknown function"),
    ],
)
def test_bad_rules_are_refused_with_the_bad_part_named(text: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(text, CATALOGUE)
    assert message in caught.value.message


def _lead(session: Session, title: str, budget: float | None, stage_path: list[str]) -> int:
    lead = leads.create_lead(
        session, actor=SYSTEM, data=schemas.LeadCreate(title=title, product_line="housing", budget=budget)
    )
    for stage in stage_path:
        leads.change_stage(session, actor=SYSTEM, lead_id=lead.id, stage=stage)  # type: ignore[arg-type]
    return lead.id


def test_rules_set_priorities_queue_reviews_and_are_idempotent(engine: Engine) -> None:
    org = build_org(engine)
    with Session(engine) as s:
        big = _lead(s, "big", 900_000, ["screening"])
        small = _lead(s, "small", 1_000, [])
        closed = _lead(s, "closed", 2_000_000, ["screening", "lost"])
        supervisor = actor_for(s, org.users["sup_all"])
        rules.save_rule(
            s, actor=supervisor, name="big budget", text="budget > 500000 -> priority: high", catalogue=CATALOGUE
        )
        rules.save_rule(s, actor=supervisor, name="tiny", text="budget < 5000 -> priority: low", catalogue=CATALOGUE)
        rules.save_rule(
            s, actor=supervisor, name="check", text="budget >= 1000 -> review, priority: medium", catalogue=CATALOGUE
        )
        s.commit()
    run = rules.evaluate_rules(engine, store=None)
    assert run.matches == {"big budget": 1, "check": 2, "tiny": 1}
    with Session(engine) as s:
        priority = {lead_id: p for lead_id, p in s.execute(select(Lead.id, Lead.priority))}
        assert priority[big] == "high" and priority[small] == "low" and priority[closed] is None
        events = s.scalar(select(func.count()).select_from(Event).where(Event.type == "priority_changed"))
        assert events == run.priority_changed == 2
    again = rules.evaluate_rules(engine, store=None)
    assert again.priority_changed == 0 and again.review_added == 0
    # The review rule's medium priority waits for a reviewer: approve the small lead, reject the big one.
    with Session(engine) as s:
        screener = actor_for(s, org.users["screener"])
        admin = actor_for(s, org.users["admin"])
        page = rules.list_review(s, actor=admin)
        by_lead = {item.lead_id: item.id for item in page.items}
        assert set(by_lead) == {big, small}
        assert {i.lead_id for i in rules.list_review(s, actor=screener).items} == {big, small}  # new and screening
        with pytest.raises(Forbidden):
            rules.list_review(s, actor=actor_for(s, org.users["alice"]))
        rules.decide_review(s, actor=admin, item_id=by_lead[small], approve=True, note="verified")
        rules.decide_review(s, actor=screener, item_id=by_lead[big], approve=False)
        s.commit()
        with pytest.raises(Invalid, match="already approved"):
            rules.decide_review(s, actor=admin, item_id=by_lead[small], approve=False)
    rules.evaluate_rules(engine, store=None)
    with Session(engine) as s:
        priority = {lead_id: p for lead_id, p in s.execute(select(Lead.id, Lead.priority))}
        assert priority[small] == "medium"  # approved: medium beats the tiny rule's low
        assert priority[big] == "high"  # rejected review: only the unreviewed rule applies
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.entity == "scoring_rules")) == 3


def test_saving_adds_a_version_and_only_managers_may(engine: Engine) -> None:
    org = build_org(engine)
    with Session(engine) as s:
        admin = actor_for(s, org.users["admin"])
        rules.save_rule(s, actor=admin, name="big", text="budget > 10 -> priority: high", catalogue=CATALOGUE)
        rules.save_rule(s, actor=admin, name="big", text="budget > 20 -> priority: medium", catalogue=CATALOGUE)
        s.commit()
        current = rules.list_rules(s)
        assert [(r.name, r.version, r.priority) for r in current] == [("big", 2, "medium")]
        assert [r.version for r in rules.list_rules(s, history=True)] == [2, 1]
        with pytest.raises(Forbidden):
            rules.save_rule(
                s, actor=actor_for(s, org.users["alice"]), name="x", text="budget > 1 -> review", catalogue=CATALOGUE
            )
        with pytest.raises(RuleError):
            rules.save_rule(s, actor=admin, name="bad", text="budget >> 1 -> review", catalogue=CATALOGUE)
        s.rollback()
        assert s.scalar(select(func.count()).select_from(ScoringRule)) == 2
        rules.set_enabled(s, actor=admin, name="big", enabled=False)
        s.commit()
    assert rules.evaluate_rules(engine, store=None).matches == {}


def test_rules_over_features_read_the_newest_feature_day(sqlite_engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(sqlite_engine, n_events=900)
    store = FeatureStore(tmp_path / "features", load_default())
    store.compute(sqlite_engine, today=TODAY)
    with Session(sqlite_engine) as s:
        rules.save_rule(s, actor=SYSTEM, name="active", text="touches_365d >= 1 -> priority: high", catalogue=CATALOGUE)
        s.commit()
    run = rules.evaluate_rules(sqlite_engine, store=store)
    assert run.feature_day == store.runs()[-1].isoformat()
    assert 0 < run.matches["active"] <= len(ids["leads"])
    with pytest.raises(RuleError, match="none are computed yet"):
        rules.evaluate_rules(sqlite_engine, store=FeatureStore(tmp_path / "empty", load_default()))
