"""Lead search on SQLite FTS5 and PostgreSQL full text: Chinese and English, filters, roles, freshness."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from leadpilot.crm import customers, leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.errors import Invalid
from leadpilot.crm.models import Lead, Stage
from leadpilot.distribution.search import search, sync_index, tokens
from tests.conftest import build_org


def test_tokens_segment_chinese_and_split_english() -> None:
    found = tokens("北京链家房地产 Second-hand HOUSING")
    assert {"北京", "房地产", "second", "hand", "housing"} <= set(found)
    assert tokens(None) == [] and tokens("") == []


def test_search_finds_by_company_contact_title_and_notes_in_both_languages(engine: Engine) -> None:
    org = build_org(engine)
    with Session(engine) as s:
        account = customers.create_account(
            s, actor=SYSTEM, data=schemas.AccountCreate(name="北京链家房地产经纪有限公司")
        )
        contact = customers.create_contact(s, actor=SYSTEM, data=schemas.ContactCreate(name="王小明"))
        lianjia = leads.create_lead(
            s,
            actor=SYSTEM,
            data=schemas.LeadCreate(
                title="二手房 推广套餐",
                account_id=account.id,
                contact_id=contact.id,
                product_line="housing",
                budget=9e5,
            ),
        )
        acme = leads.create_lead(
            s, actor=SYSTEM, data=schemas.LeadCreate(title="Used cars ad package", notes="asked about pricing")
        )
        s.commit()
        admin = org.actor("admin")
        assert [h.lead.id for h in search(s, actor=admin, q="链家")] == [lianjia.id]
        assert [h.lead.id for h in search(s, actor=admin, q="王小明")] == [lianjia.id]
        assert [h.lead.id for h in search(s, actor=admin, q="二手房 套餐")] == [lianjia.id]
        assert [h.lead.id for h in search(s, actor=admin, q="PRICING cars")] == [acme.id]
        assert search(s, actor=admin, q="链家 pricing") == []  # every word must match
        assert [h.lead.id for h in search(s, actor=admin, q="链家", product_line="housing")] == [lianjia.id]
        assert search(s, actor=admin, q="链家", product_line="used_cars") == []
        with pytest.raises(Invalid, match="no words"):
            search(s, actor=admin, q="!!!")
        # An edit is found at once: the search indexes changed leads first.
        leads.update_lead(s, actor=SYSTEM, lead_id=acme.id, data=schemas.LeadUpdate(notes="wants a 宝马 dealer page"))
        s.commit()
        assert [h.lead.id for h in search(s, actor=admin, q="宝马")] == [acme.id]
        assert search(s, actor=admin, q="pricing") == []
        assert sync_index(s) == 0  # nothing left to index


def test_search_respects_roles_stage_filters_and_ranks_by_score(engine: Engine) -> None:
    org = build_org(engine)  # leads titled after their keys: new, screening, pool, pool2, alice, bob, wendy
    alice, admin = org.actor("alice"), org.actor("admin")  # before the session: a search holds a write lock
    with Session(engine) as s:
        leads.update_lead(s, actor=SYSTEM, lead_id=org.leads["pool"], data=schemas.LeadUpdate(notes="solar roof"))
        leads.update_lead(s, actor=SYSTEM, lead_id=org.leads["pool2"], data=schemas.LeadUpdate(notes="solar panels"))
        leads.update_lead(s, actor=SYSTEM, lead_id=org.leads["wendy"], data=schemas.LeadUpdate(notes="solar farm"))
        s.commit()
        s.execute(update(Lead).where(Lead.id == org.leads["pool2"]).values(score=0.9))
        s.execute(update(Lead).where(Lead.id == org.leads["pool"]).values(score=0.1))
        s.commit()
        alice_hits = [h.lead.id for h in search(s, actor=alice, q="solar")]
        assert alice_hits == [org.leads["pool2"], org.leads["pool"]]  # wendy's lead is not alice's; higher score first
        admin_hits = {h.lead.id for h in search(s, actor=admin, q="solar")}
        assert admin_hits == {org.leads["pool"], org.leads["pool2"], org.leads["wendy"]}
        assert {h.lead.id for h in search(s, actor=admin, q="solar", stage=[Stage.ASSIGNED.value])} == {
            org.leads["wendy"]
        }
        assert [h.lead.id for h in search(s, actor=admin, q="solar", score_min=0.5)] == [org.leads["pool2"]]
