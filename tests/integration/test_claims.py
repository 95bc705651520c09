"""Concurrent claims through a real HTTP server: of simultaneous claims on one lead exactly one wins."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.config import Settings
from leadpilot.crm import leads, people, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Event, Lead, Role, Stage
from tests.conftest import PASSWORD, Org, serve_in_thread

CLAIMERS = ["alice", "bob", "sup_east", "c1", "c2", "c3"]
LEADS = 8


@pytest.fixture
def server_url(engine: Engine, settings: Settings) -> Iterator[str]:
    """A real uvicorn server on a free port, serving the app over the test database."""
    with serve_in_thread(create_app(settings, engine=engine)) as url:
        yield url


def _pool_leads(org: Org, n: int) -> list[int]:
    ids = []
    with Session(org.engine) as s:
        for i in range(n):
            lead = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title=f"race {i}"))
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.SCREENING)
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=Stage.QUALIFIED)
            ids.append(lead.id)
        east = org.teams["east"]
        for name in ("c1", "c2", "c3"):
            people.create_user(
                s,
                actor=SYSTEM,
                data=schemas.UserCreate(username=name, password=PASSWORD, role=Role.SALES, team_id=east),
            )
        s.commit()
    return ids


def test_simultaneous_claims_have_exactly_one_winner(org: Org, server_url: str) -> None:
    lead_ids = _pool_leads(org, LEADS)
    tokens = {}
    with httpx.Client(base_url=server_url, timeout=30) as http:
        for name in CLAIMERS:
            r = http.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[name] = r.json()["access_token"]

    results: dict[int, list[tuple[str, int]]] = {lead_id: [] for lead_id in lead_ids}
    barrier = threading.Barrier(len(CLAIMERS))
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        with httpx.Client(base_url=server_url, timeout=60, headers=headers) as http:
            for lead_id in lead_ids:
                barrier.wait()  # every claimer fires at the same lead at the same moment
                status = http.post(f"/api/v1/leads/{lead_id}/claim").status_code
                with lock:
                    results[lead_id].append((name, status))

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in CLAIMERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    with Session(org.engine) as s:
        for lead_id, outcome in results.items():
            statuses = Counter(status for _, status in outcome)
            assert statuses == {200: 1, 409: len(CLAIMERS) - 1}, (lead_id, outcome)
            winner = next(name for name, status in outcome if status == 200)
            lead = s.get_one(Lead, lead_id)
            assert lead.owner_id == org.users[winner].id if winner in org.users else lead.owner_id is not None
            assert lead.stage == Stage.ASSIGNED.value
            claims = s.scalar(
                select(func.count()).select_from(Event).where(Event.lead_id == lead_id, Event.type == "claim")
            )
            assert claims == 1
