"""Contracts and payments on SQLite and PostgreSQL: plan validation, e-signature with the local provider, the
lead moving to won, partial / idempotent / refused payments, reminders and overdue alerts sent once with a test
clock, role scoping, an event for every step, the API, the CLI job and the default workflow rules firing."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from leadpilot.cli.main import app as cli_app
from leadpilot.config import get_settings
from leadpilot.contracts import service
from leadpilot.contracts.signing import LocalSigningProvider, make_provider
from leadpilot.contracts.tables import Contract, Payment, PaymentInstallment, PaymentReminder
from leadpilot.crm import leads
from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.errors import Conflict, Forbidden, Invalid, NotFound
from leadpilot.crm.models import AuditEntry, Event, Lead, Stage
from leadpilot.db.engine import _cached_engine
from leadpilot.workflow import engine as wf_engine
from leadpilot.workflow.engine import EngineConfig
from leadpilot.workflow.tables import WorkflowNotification
from tests.conftest import Org, build_org

SECRET = "test-secret-key-" + "x" * 32
NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
TODAY = NOW.date()


def plan(*items: tuple[int, str]) -> list[dict[str, Any]]:
    """Installments from (days after TODAY, amount)."""
    return [{"due_date": (TODAY + timedelta(days=d)).isoformat(), "amount": a} for d, a in items]


def events_of(engine: Engine, *types: str) -> list[Event]:
    with Session(engine) as s:
        return list(s.scalars(select(Event).where(Event.type.in_(types)).order_by(Event.id)))


def to_negotiating(s: Session, actor: Actor, lead_id: int) -> None:
    leads.change_stage(s, actor=actor, lead_id=lead_id, stage=Stage.CONTACTED)
    leads.change_stage(s, actor=actor, lead_id=lead_id, stage=Stage.NEGOTIATING)


def signed_contract(org: Org, installments: list[dict[str, Any]], amount: str = "1000") -> int:
    """A contract on alice's lead, created, sent and signed; returns its id."""
    alice = org.actor("alice")
    provider = LocalSigningProvider(SECRET)
    with Session(org.engine) as s:
        c = service.create_contract(
            s, actor=alice, lead_id=org.leads["alice"], amount=amount, installments=installments, now=NOW
        )
        _, envelope = service.send_contract(s, actor=alice, contract_id=c.id, provider=provider, now=NOW)
        service.answer_signing(s, provider=provider, token=envelope.token, decision="sign", signer="Carol", now=NOW)
        s.commit()
        return c.id


# --- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"amount": "0"}, "amount", "amount: must be greater than 0"),
        ({"amount": "12.345"}, "amount", "more than two decimals"),
        ({"amount": "lots"}, "amount", "'lots' is not a number"),
        ({"currency": "yuan"}, "currency", "three-letter ISO 4217 code"),
        ({"installments": plan((10, "600"), (20, "300"))}, "installments", "add up to 900.00, not the contract"),
        ({"installments": plan((10, "600"), (10, "400"))}, "installments[1].due_date", "installment 2: due date"),
        ({"installments": plan((20, "600"), (10, "400"))}, "installments[1].due_date", "dates go up"),
        ({"installments": plan((-1, "1000"))}, "installments[0].due_date", "installment 1: due date 2027-02-28 is in"),
        ({"installments": plan((10, "1000"), (20, "-5"))}, "installments[1].amount", "installment 2: amount: must be"),
        (
            {"installments": [{"due_date": "31/01/2027", "amount": "1000"}]},
            "installments[0].due_date",
            "is not a date (YYYY-MM-DD)",
        ),
        ({"installments": [{"due_date": "2027-04-01", "amount": "1000", "x": 1}]}, "installments[0].x", "unknown"),
        ({"products": [{"name": ""}]}, "products[0].name", "product 1: name"),
        ({"products": [{"name": "ad", "quantity": 0}]}, "products[0].quantity", "product 1: quantity"),
        (
            {"products": [{"name": "ad", "quantity": 2, "unit_price": "400"}]},
            "products",
            "products add up to 800.00, not the contract amount 1,000.00",
        ),
    ],
)
def test_invalid_forms_name_the_field_and_write_nothing(
    engine: Engine, kwargs: dict[str, Any], field: str, words: str
) -> None:
    org = build_org(engine)
    with Session(engine) as s:
        args: dict[str, Any] = {"amount": "1000", **kwargs}
        with pytest.raises(Invalid) as err:
            service.create_contract(s, actor=org.actor("alice"), lead_id=org.leads["alice"], now=NOW, **args)
        s.rollback()
        assert err.value.field == field
        assert words in err.value.message
        assert s.scalar(select(func.count()).select_from(Contract)) == 0
    assert events_of(engine, "contract_created") == []


def test_every_problem_of_a_form_is_reported_at_once(engine: Engine) -> None:
    org = build_org(engine)
    with Session(engine) as s, pytest.raises(Invalid) as err:
        service.create_contract(
            s,
            actor=org.actor("alice"),
            lead_id=org.leads["alice"],
            amount="1000",
            currency="usd dollars",
            installments=[{"due_date": "2027-04-01", "amount": "0"}, {"due_date": "2027-03-15", "amount": "1000"}],
            now=NOW,
        )
    message = err.value.message
    assert "currency" in message and "installment 1: amount" in message and "installment 2: due date" in message
    assert err.value.field == "currency"


# --- signing --------------------------------------------------------------------------------------------------------


def test_local_signing_moves_a_negotiating_lead_to_won_and_writes_every_event(engine: Engine) -> None:
    org = build_org(engine)
    alice = org.actor("alice")
    provider = LocalSigningProvider(SECRET)
    lead_id = org.leads["alice"]
    with Session(engine) as s:
        to_negotiating(s, alice, lead_id)
        c = service.create_contract(
            s,
            actor=alice,
            lead_id=lead_id,
            amount="12000.50",
            products=[{"name": "Premium listing", "quantity": 2, "unit_price": "6000.25"}],
            installments=plan((30, "6000.25"), (60, "6000.25")),
            now=NOW,
        )
        assert c.status == "draft" and c.number == f"C2027-{c.id:06d}"
        contract, envelope = service.send_contract(s, actor=alice, contract_id=c.id, provider=provider, now=NOW)
        s.commit()
        assert contract.status == "sent" and envelope.url.endswith(envelope.token)
        assert contract.token_hash is not None and envelope.token not in json.dumps(service.contract_json(s, contract))
        view = service.signing_view(s, provider=provider, token=envelope.token, now=NOW)
        assert view["amount"] == 12000.5 and view["document_hash"] == contract.document_hash

        tampered = envelope.token[:-2] + ("AA" if not envelope.token.endswith("AA") else "BB")
        for bad in (tampered, "nonsense", envelope.token.replace("local-", "local-0", 1)):
            with pytest.raises(Forbidden):
                service.answer_signing(s, provider=provider, token=bad, decision="sign", signer="Carol", now=NOW)
        other_secret = LocalSigningProvider("another-secret-" + "y" * 32)
        with pytest.raises(Conflict, match="changed after it was sent"):  # the HMAC does not verify
            service.answer_signing(s, provider=other_secret, token=envelope.token, decision="sign", signer="C", now=NOW)
        with pytest.raises(Invalid, match="signer"):
            service.answer_signing(s, provider=provider, token=envelope.token, decision="sign", signer=" ", now=NOW)
        s.rollback()

        signed = service.answer_signing(
            s, provider=provider, token=envelope.token, decision="sign", signer="Carol Chen", now=NOW
        )
        s.commit()
        assert signed.status == "signed" and signed.signer_name == "Carol Chen" and signed.token_hash is None
        assert s.get_one(Lead, lead_id).stage == Stage.WON.value
        with pytest.raises(Conflict, match="already signed"):  # one-time
            service.answer_signing(s, provider=provider, token=envelope.token, decision="sign", signer="X", now=NOW)
    kinds = [e.type for e in events_of(engine, "contract_created", "contract_sent", "contract_signed", "stage_change")]
    assert kinds[-4:] == ["contract_created", "contract_sent", "stage_change", "contract_signed"]
    won = events_of(engine, "stage_change")[-1]
    assert won.payload["to"] == "won" and won.payload["from"] == "negotiating"
    signed_event = events_of(engine, "contract_signed")[-1]
    assert signed_event.payload["amount"] == 12000.5 and signed_event.lead_id == lead_id
    assert signed_event.payload["lead_won"] is True
    with Session(engine) as s:
        actions = set(s.scalars(select(AuditEntry.action).where(AuditEntry.entity == "contract")))
    assert {"create", "send", "sign"} <= actions


def test_a_tampered_document_is_refused_and_a_resend_replaces_the_link(engine: Engine) -> None:
    org = build_org(engine)
    alice = org.actor("alice")
    provider = make_provider("local", secret_key=SECRET)
    with Session(engine) as s:
        c = service.create_contract(
            s, actor=alice, lead_id=org.leads["alice"], amount="1000", installments=plan((30, "1000")), now=NOW
        )
        _, first = service.send_contract(s, actor=alice, contract_id=c.id, provider=provider, now=NOW)
        s.commit()
        # Someone edits the terms behind the signer's back (straight in the database).
        s.execute(
            update(PaymentInstallment).where(PaymentInstallment.contract_id == c.id).values(due_date=date(2028, 1, 1))
        )
        s.commit()
        with pytest.raises(Conflict, match="document hash differs"):
            service.answer_signing(s, provider=provider, token=first.token, decision="sign", signer="Carol", now=NOW)
        s.rollback()
        _, second = service.send_contract(s, actor=alice, contract_id=c.id, provider=provider, now=NOW)
        s.commit()
        with pytest.raises(Forbidden, match=r"replaced by a newer one|no contract"):
            service.answer_signing(s, provider=provider, token=first.token, decision="sign", signer="Carol", now=NOW)
        s.rollback()
        declined = service.answer_signing(
            s, provider=provider, token=second.token, decision="decline", reason="price", now=NOW
        )
        s.commit()
        assert declined.status == "declined"
        assert s.get_one(Lead, org.leads["alice"]).stage == "assigned"  # a lead not negotiating keeps its stage
        with pytest.raises(Conflict):
            service.send_contract(s, actor=alice, contract_id=c.id, provider=provider, now=NOW)
    assert events_of(engine, "contract_declined")[0].payload["reason"] == "price"


def test_links_expire_and_the_job_marks_them(engine: Engine) -> None:
    org = build_org(engine)
    provider = LocalSigningProvider(SECRET)
    with Session(engine) as s:
        c = service.create_contract(s, actor=org.actor("alice"), lead_id=org.leads["alice"], amount="10", now=NOW)
        _, env = service.send_contract(s, actor=SYSTEM, contract_id=c.id, provider=provider, link_days=1, now=NOW)
        s.commit()
        later = NOW + timedelta(days=2)
        with pytest.raises(Conflict, match="expired"):
            service.answer_signing(s, provider=provider, token=env.token, decision="sign", signer="C", now=later)
        s.rollback()
        assert service.remind(s, now=later)["expired"] == 1
        s.commit()
        assert service.remind(s, now=later)["expired"] == 0
        assert s.get_one(Contract, c.id).status == "expired"
    assert len(events_of(engine, "contract_expired")) == 1


# --- payments ---------------------------------------------------------------------------------------------------------


def test_payments_partial_idempotent_and_overpayment_refused(engine: Engine) -> None:
    org = build_org(engine)
    alice = org.actor("alice")
    with Session(engine) as s:
        draft = service.create_contract(s, actor=alice, lead_id=org.leads["alice"], amount="50", now=NOW)
        s.commit()
        with pytest.raises(Conflict, match="signed contracts"):
            service.record_payment(s, actor=alice, contract_id=draft.id, amount="10", reference="R-0", now=NOW)
    cid = signed_contract(org, plan((10, "500"), (40, "500")))
    with Session(engine) as s:
        pay = service.record_payment
        p1, created = pay(s, actor=alice, contract_id=cid, amount="300", reference="BANK-1", now=NOW)
        s.commit()
        assert created and p1.amount_cents == 30000
        with pytest.raises(Invalid, match=r"more than the 200\.00 still due on installment 1") as err:
            pay(s, actor=alice, contract_id=cid, amount="200.01", reference="BANK-2", now=NOW)
        assert err.value.field == "amount"
        s.rollback()
        again, created = pay(s, actor=alice, contract_id=cid, amount="300", reference="BANK-1", now=NOW)
        assert not created and again.id == p1.id
        with pytest.raises(Conflict, match="already used"):
            pay(s, actor=alice, contract_id=cid, amount="100", reference="BANK-1", now=NOW)
        s.rollback()
        with pytest.raises(Invalid, match="installments 1 to 2, not 3"):
            pay(s, actor=alice, contract_id=cid, amount="1", reference="BANK-3", installment=3, now=NOW)
        s.rollback()
        pay(s, actor=alice, contract_id=cid, amount="200", reference="BANK-4", now=NOW)
        pay(s, actor=alice, contract_id=cid, amount="500", reference="BANK-5", now=NOW)  # goes to installment 2
        s.commit()
        data = service.contract_json(s, s.get_one(Contract, cid))
        assert [i["status"] for i in data["installments"]] == ["paid", "paid"]
        assert data["paid"] == 1000.0 and data["outstanding"] == 0.0
        assert [p["installment"] for p in data["payments"]] == [1, 1, 2]
        with pytest.raises(Conflict, match="paid in full"):
            pay(s, actor=alice, contract_id=cid, amount="1", reference="BANK-6", now=NOW)
        assert s.scalar(select(func.count()).select_from(Payment)) == 3
    payments = events_of(engine, "payment")
    assert [e.payload["amount"] for e in payments] == [300.0, 200.0, 500.0]
    assert payments[-1].payload["paid_in_full"] is True


# --- reminders ------------------------------------------------------------------------------------------------------


def test_reminders_and_overdue_alerts_fire_once_with_a_test_clock(engine: Engine) -> None:
    org = build_org(engine)
    cid = signed_contract(org, plan((2, "300"), (10, "300"), (40, "400")))
    with Session(engine) as s:
        assert service.remind(s, now=NOW) == {"reminders": 1, "overdue": 0, "expired": 0}  # due in 2 days
        s.commit()
        assert service.remind(s, now=NOW) == {"reminders": 0, "overdue": 0, "expired": 0}
        s.commit()
        service.record_payment(s, actor=SYSTEM, contract_id=cid, amount="100", reference="P1", now=NOW)
        s.commit()
        in_4_days = NOW + timedelta(days=4)  # installment 1 is 2 days late, installment 2 not yet within 3 days
        assert service.remind(s, now=in_4_days) == {"reminders": 0, "overdue": 1, "expired": 0}
        s.commit()
        assert service.remind(s, now=in_4_days + timedelta(hours=5)) == {"reminders": 0, "overdue": 0, "expired": 0}
        s.commit()
        first = s.scalars(select(PaymentInstallment).where(PaymentInstallment.contract_id == cid)).all()
        assert [i.status for i in sorted(first, key=lambda i: i.seq)] == ["overdue", "due", "due"]
        assert service.remind(s, now=NOW + timedelta(days=8))["reminders"] == 1  # installment 2 due in 2 days
        s.commit()
        # A partial payment keeps it overdue; paying the rest closes it.
        service.record_payment(s, actor=SYSTEM, contract_id=cid, amount="100", reference="P2", installment=1, now=NOW)
        s.commit()
        first_status = select(PaymentInstallment.status).where(
            PaymentInstallment.contract_id == cid, PaymentInstallment.seq == 1
        )
        assert s.scalar(first_status) == "overdue"
        service.record_payment(s, actor=SYSTEM, contract_id=cid, amount="100", reference="P3", installment=1, now=NOW)
        s.commit()
        assert s.scalar(first_status) == "paid"
        assert s.scalar(select(func.count()).select_from(PaymentReminder)) == 3
    reminders = events_of(engine, "payment_reminder")
    overdue = events_of(engine, "payment_overdue")
    assert [e.payload["installment"] for e in reminders] == [1, 2]
    assert reminders[0].payload["days_left"] == 2 and reminders[0].occurred_at == NOW
    assert len(overdue) == 1 and overdue[0].payload["days_overdue"] == 2
    assert overdue[0].payload["outstanding"] == 200.0 and overdue[0].lead_id == org.leads["alice"]
    with pytest.raises(Forbidden), Session(engine) as s:
        service.remind(s, actor=org.actor("sup_all"), now=NOW)


def test_two_reminder_jobs_at_once_send_each_alert_once(engine: Engine) -> None:
    org = build_org(engine)
    signed_contract(org, plan((1, "500"), (20, "500")))
    later = NOW + timedelta(days=2)  # installment 1 overdue
    results: list[dict[str, int]] = []
    with Session(engine) as first:
        assert service.remind(first, now=later)["overdue"] == 1  # holds its locks until commit

        def second_job() -> None:
            with Session(engine) as s:
                results.append(service.remind(s, now=later))
                s.commit()

        thread = threading.Thread(target=second_job)
        thread.start()
        time.sleep(0.5)  # the second job is now waiting for the first one's locks
        first.commit()
    thread.join(timeout=60)
    assert results == [{"reminders": 0, "overdue": 0, "expired": 0}]
    assert len(events_of(engine, "payment_overdue")) == 1


def test_default_workflow_rules_fire_on_the_overdue_alert(engine: Engine) -> None:
    org = build_org(engine)
    cid = signed_contract(org, plan((1, "1000")))
    with Session(engine) as s:
        stored = service.install_workflow_rules(s, actor=SYSTEM, enable=True)
        s.commit()
        assert len(stored["created"]) == 3
        assert service.install_workflow_rules(s, actor=SYSTEM)["created"] == []  # already there
        assert service.remind(s, now=NOW + timedelta(days=3))["overdue"] == 1
        s.commit()
    result = wf_engine.run_once(engine, now=NOW + timedelta(days=3), config=EngineConfig(settle_seconds=0))
    assert result["fired"] == 1
    with Session(engine) as s:
        messages = list(s.scalars(select(WorkflowNotification.message)))
        tasks = [e.payload for e in s.scalars(select(Event).where(Event.type == "task_created"))]
    assert messages and all("overdue" in m for m in messages)
    assert len(tasks) == 1 and cid > 0


# --- roles ----------------------------------------------------------------------------------------------------------


def test_roles_scope_contracts_like_leads(engine: Engine) -> None:
    org = build_org(engine)
    actors = {name: org.actor(name) for name in org.users}
    org.actor = actors.__getitem__  # type: ignore[method-assign,assignment]  # no second connection while writing (SQLite)
    with Session(engine) as s:
        mine = service.create_contract(s, actor=org.actor("alice"), lead_id=org.leads["alice"], amount="10", now=NOW)
        wendys = service.create_contract(
            s, actor=org.actor("sup_all"), lead_id=org.leads["wendy"], amount="20", now=NOW
        )
        s.commit()
        with pytest.raises(NotFound):  # bob's lead is not alice's to see
            service.create_contract(s, actor=org.actor("alice"), lead_id=org.leads["bob"], amount="10", now=NOW)
        with pytest.raises(Forbidden):  # a pool lead is visible but not hers
            service.create_contract(s, actor=org.actor("alice"), lead_id=org.leads["pool"], amount="10", now=NOW)
        with pytest.raises(Conflict, match="without an owner"):
            service.create_contract(s, actor=SYSTEM, lead_id=org.leads["pool"], amount="10", now=NOW)
        with pytest.raises(NotFound):
            service.create_contract(s, actor=org.actor("screener"), lead_id=org.leads["alice"], amount="1", now=NOW)
        with pytest.raises(Forbidden):
            service.create_contract(s, actor=org.actor("screener"), lead_id=org.leads["new"], amount="1", now=NOW)
        s.rollback()
        seen = {
            name: sorted(c.id for c in service.list_contracts(s, actor=org.actor(name)).items)
            for name in ("screener", "alice", "bob", "wendy", "sup_east", "sup_all", "admin")
        }
        assert seen == {
            "screener": [],
            "alice": [mine.id],
            "bob": [],
            "wendy": [wendys.id],
            "sup_east": [mine.id],
            "sup_all": sorted([mine.id, wendys.id]),
            "admin": sorted([mine.id, wendys.id]),
        }
        for name in ("bob", "sup_east", "screener"):
            with pytest.raises(NotFound):
                service.record_payment(
                    s, actor=org.actor(name), contract_id=wendys.id, amount="1", reference="x", now=NOW
                )
            with pytest.raises(NotFound):
                service.cancel_contract(s, actor=org.actor(name), contract_id=wendys.id)
        cancelled = service.cancel_contract(s, actor=org.actor("sup_all"), contract_id=wendys.id, reason="dup")
        s.commit()
        assert cancelled.status == "cancelled"
        assert {i.status for i in service.installments_of(s, wendys.id)} == {"cancelled"}


# --- API and CLI ------------------------------------------------------------------------------------------------


def test_api_create_send_sign_pay(client: TestClient, org: Org, auth: dict[str, dict[str, str]]) -> None:
    alice = auth["alice"]
    lead_id = org.leads["alice"]
    with Session(org.engine) as s:
        to_negotiating(s, org.actor("alice"), lead_id)
        s.commit()
    due = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    bad = client.post(
        "/api/v1/contracts",
        json={"lead_id": lead_id, "amount": "100", "installments": [{"due_date": due, "amount": "90"}]},
        headers=alice,
    )
    assert bad.status_code == 422 and bad.json()["field"] == "installments"
    assert "add up to 90.00" in bad.json()["detail"]
    r = client.post(
        "/api/v1/contracts",
        json={"lead_id": lead_id, "amount": 100, "currency": "usd", "installments": [{"due_date": due, "amount": 100}]},
        headers=alice,
    )
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["currency"] == "USD" and r.json()["installments"][0]["amount"] == 100.0
    assert client.get(f"/api/v1/contracts/{cid}", headers=auth["bob"]).status_code == 404
    assert client.get(f"/api/v1/contracts/{cid}", headers=auth["sup_east"]).status_code == 200
    sent = client.post(f"/api/v1/contracts/{cid}/send", json={"link_days": 3}, headers=alice)
    assert sent.status_code == 200, sent.text
    url = sent.json()["signing"]["url"]
    assert url.startswith("/api/v1/signing/")
    assert client.get(url).json()["amount"] == 100.0  # no bearer token: the link is the credential
    altered = url[:-1] + ("B" if url.endswith("A") else "A")
    assert client.post(altered, json={"decision": "sign", "signer": "Carol"}).status_code == 403
    signed = client.post(url, json={"decision": "sign", "signer": "Carol"})
    assert signed.status_code == 200 and signed.json()["status"] == "signed"
    assert client.post(url, json={"decision": "sign", "signer": "Carol"}).status_code == 409
    assert client.get(f"/api/v1/leads/{lead_id}", headers=alice).json()["stage"] == "won"
    pay = {"amount": "40", "reference": "WIRE-1"}
    first = client.post(f"/api/v1/contracts/{cid}/payments", json=pay, headers=alice)
    assert first.status_code == 201 and first.json()["installments"][0]["status"] == "partial"
    replay = client.post(f"/api/v1/contracts/{cid}/payments", json=pay, headers=alice)
    assert replay.status_code == 200 and replay.json()["payment"]["created"] is False
    over = client.post(f"/api/v1/contracts/{cid}/payments", json={"amount": "61", "reference": "W2"}, headers=alice)
    assert over.status_code == 422 and over.json()["field"] == "amount"
    plan_rows = client.get(f"/api/v1/contracts/{cid}/installments", headers=alice).json()
    assert plan_rows[0]["paid"] == 40.0 and plan_rows[0]["outstanding"] == 60.0
    listed = client.get("/api/v1/contracts", params={"status": "signed"}, headers=auth["sup_all"]).json()
    assert [c["id"] for c in listed["items"]] == [cid]


def test_cli_flow_and_idempotent_remind_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("LEADPILOT_SECRET_KEY", SECRET)
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli_app, list(args))
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else result.output

    try:
        run("init")
        eng = _cached_engine(get_settings().resolved_database_url(), get_settings().sqlite_busy_timeout_ms)
        org = build_org(eng)
        soon = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
        later = (datetime.now(UTC).date() + timedelta(days=60)).isoformat()
        bad = runner.invoke(
            cli_app, ["contracts", "create", str(org.leads["alice"]), "--amount", "100", "--installment", f"{soon}:50"]
        )
        assert bad.exit_code == 1 and "add up to 50.00" in bad.output
        made = run(
            "contracts", "create", str(org.leads["alice"]), "--amount", "100", "--installment", f"{soon}:60",
            "--installment", f"{later}:40", "--product", "Listing:1:100", "--json",
        )  # fmt: skip
        cid = str(made["id"])
        token = run("contracts", "send", cid, "--json")["signing"]["token"]
        assert run("contracts", "sign", token, "--signer", "Carol", "--json")["status"] == "signed"
        assert run("contracts", "pay", cid, "--amount", "10", "--reference", "R1", "--json")["paid"] == 10.0
        assert (
            run("contracts", "pay", cid, "--amount", "10", "--reference", "R1", "--json")["payment"]["created"] is False
        )
        assert run("contracts", "remind", "--json") == {"reminders": 1, "overdue": 0, "expired": 0}
        assert run("contracts", "remind", "--json") == {"reminders": 0, "overdue": 0, "expired": 0}
        assert run("contracts", "list", "--json")[0]["outstanding"] == 90.0
        assert "payment R1" in run("contracts", "show", cid)
        assert len(run("contracts", "rules", "--json")["created"]) == 3
    finally:
        get_settings.cache_clear()
        _cached_engine.cache_clear()
