"""The lead life cycle through the service layer: stages, claim pool, assignment, events and audit."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm import leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.errors import Conflict, Forbidden, NotFound
from leadpilot.crm.models import AuditEntry, Event, Lead, Stage
from tests.conftest import Org


def _events(s: Session, lead_id: int) -> list[tuple[str, dict]]:
    return [(e.type, e.payload) for e in s.scalars(select(Event).where(Event.lead_id == lead_id).order_by(Event.id))]


def test_full_funnel_to_won_records_every_step(org: Org) -> None:
    screener, alice = org.actor("screener"), org.actor("alice")
    with Session(org.engine) as s:
        lead = leads.create_lead(s, actor=screener, data=schemas.LeadCreate(title="funnel", budget=1000))
        leads.change_stage(s, actor=screener, lead_id=lead.id, stage=Stage.SCREENING)
        leads.change_stage(s, actor=screener, lead_id=lead.id, stage=Stage.QUALIFIED)
        leads.claim_lead(s, actor=alice, lead_id=lead.id)
        for stage in (Stage.CONTACTED, Stage.NEGOTIATING, Stage.WON):
            leads.change_stage(s, actor=alice, lead_id=lead.id, stage=stage)
        s.commit()
        final = s.get_one(Lead, lead.id)
        assert (final.stage, final.owner_id) == ("won", org.users["alice"].id)
        moves = [(p["from"], p["to"]) for t, p in _events(s, lead.id) if t == "stage_change"]
        assert moves == [
            ("new", "screening"),
            ("screening", "qualified"),
            ("pool", "assigned"),
            ("assigned", "contacted"),
            ("contacted", "negotiating"),
            ("negotiating", "won"),
        ]
        assert [t for t, _ in _events(s, lead.id)].count("claim") == 1
        audited = s.scalars(
            select(AuditEntry.action).where(AuditEntry.entity == "lead", AuditEntry.entity_id == lead.id)
        ).all()
        assert audited.count("stage_change") == 5 and "claim" in audited and "create" in audited


@pytest.mark.parametrize(
    ("start", "target"), [("new", Stage.WON), ("new", Stage.QUALIFIED), ("pool", Stage.NEW), ("alice", Stage.SCREENING)]
)
def test_illegal_moves_are_conflicts_with_the_reason(org: Org, start: str, target: Stage) -> None:
    with Session(org.engine) as s, pytest.raises(Conflict, match="allowed next stages"):
        leads.change_stage(s, actor=SYSTEM, lead_id=org.leads[start], stage=target)


def test_final_stages_cannot_move(org: Org) -> None:
    with Session(org.engine) as s:
        leads.change_stage(s, actor=SYSTEM, lead_id=org.leads["alice"], stage=Stage.LOST, reason="no budget")
        s.commit()
        assert s.get_one(Lead, org.leads["alice"]).lost_reason == "no budget"
        with pytest.raises(Conflict, match="final stage"):
            leads.change_stage(s, actor=SYSTEM, lead_id=org.leads["alice"], stage=Stage.CONTACTED)


def test_assigned_needs_a_claim_or_an_assignment(org: Org) -> None:
    with Session(org.engine) as s, pytest.raises(Conflict, match="claim or an assignment"):
        leads.change_stage(s, actor=SYSTEM, lead_id=org.leads["pool"], stage=Stage.ASSIGNED)


def test_release_recycles_to_the_pool_and_others_can_claim(org: Org) -> None:
    alice, wendy = org.actor("alice"), org.actor("wendy")
    lead_id = org.leads["alice"]
    with Session(org.engine) as s:
        with pytest.raises(NotFound):
            leads.release_lead(s, actor=wendy, lead_id=lead_id)  # not hers: she cannot even see it
        leads.release_lead(s, actor=alice, lead_id=lead_id, reason="wrong region")
        s.commit()
        lead = s.get_one(Lead, lead_id)
        assert (lead.stage, lead.owner_id) == ("recycled", None)
        leads.claim_lead(s, actor=wendy, lead_id=lead_id)
        s.commit()
        assert s.get_one(Lead, lead_id).owner_id == org.users["wendy"].id
        types = [t for t, _ in _events(s, lead_id)]
        assert types[-4:] == ["release", "stage_change", "claim", "stage_change"]


def test_screener_limits(org: Org) -> None:
    screener = org.actor("screener")
    with Session(org.engine) as s:
        with pytest.raises(Forbidden, match="claim"):
            leads.claim_lead(s, actor=screener, lead_id=org.leads["pool"])
        leads.change_stage(s, actor=screener, lead_id=org.leads["new"], stage=Stage.SCREENING)
        leads.change_stage(s, actor=screener, lead_id=org.leads["new"], stage=Stage.QUALIFIED)
        s.commit()
        with pytest.raises(NotFound):  # once qualified, a lead leaves the screener's view
            leads.update_lead(s, actor=screener, lead_id=org.leads["new"], data=schemas.LeadUpdate(notes="x"))
        with pytest.raises(NotFound):
            leads.get_lead(s, actor=screener, lead_id=org.leads["alice"])


def test_supervisor_assigns_only_within_subtree(org: Org) -> None:
    sup_east, alice = org.actor("sup_east"), org.actor("alice")
    with Session(org.engine) as s:
        with pytest.raises(Forbidden, match="team subtree"):
            leads.assign_lead(s, actor=sup_east, lead_id=org.leads["pool"], owner_id=org.users["wendy"].id)
        lead = leads.assign_lead(s, actor=sup_east, lead_id=org.leads["pool"], owner_id=org.users["bob"].id)
        s.commit()
        assert (lead.stage, lead.owner_id, lead.team_id) == ("assigned", org.users["bob"].id, org.teams["east"])
        with pytest.raises(Forbidden):
            leads.assign_lead(s, actor=alice, lead_id=org.leads["pool2"], owner_id=org.users["alice"].id)


def test_concurrent_edit_is_detected_by_version(org: Org) -> None:
    lead_id = org.leads["alice"]
    with Session(org.engine) as s:
        version = s.get_one(Lead, lead_id).version
        leads.update_lead(s, actor=SYSTEM, lead_id=lead_id, data=schemas.LeadUpdate(notes="first"))
        s.commit()
        with pytest.raises(Conflict, match="changed since version"):
            leads.update_lead(
                s, actor=SYSTEM, lead_id=lead_id, data=schemas.LeadUpdate(notes="second", expected_version=version)
            )
