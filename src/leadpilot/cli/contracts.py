"""``leadpilot contracts``: create, list, show, send, sign, pay, remind (the scheduled job) and default rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, fail, require_migrated, settings
from leadpilot.contracts import service
from leadpilot.contracts.signing import make_provider
from leadpilot.crm.access import SYSTEM

app = typer.Typer(help="Contracts and payments: payment plans, e-signature, payments, reminders.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


def _engine() -> Engine:
    """The CRM database, refusing an unmigrated one."""
    eng = engine()
    require_migrated(eng)
    return eng


def _line(c: dict[str, Any]) -> str:
    return (
        f"{c['number']} [{c['status']}] lead {c['lead_id']}: {c['amount']:,.2f} {c['currency']}, "
        f"paid {c['paid']:,.2f}, outstanding {c['outstanding']:,.2f}"
    )


def _installment(text: str, index: int) -> dict[str, str]:
    date_part, sep, amount = text.partition(":")
    if not sep:
        fail(f"--installment {index + 1}: {text!r} is not DATE:AMOUNT (e.g. 2027-01-31:5000)")
    return {"due_date": date_part.strip(), "amount": amount.strip()}


def _product(text: str) -> dict[str, Any]:
    parts = text.split(":")
    item: dict[str, Any] = {"name": parts[0]}
    if len(parts) > 1 and parts[1].strip():
        item["quantity"] = int(parts[1]) if parts[1].strip().isdigit() else parts[1]
    if len(parts) > 2 and parts[2].strip():
        item["unit_price"] = parts[2].strip()
    return item


@app.command("create")
def create(
    lead_id: int = typer.Argument(..., help="The lead the contract is for."),
    amount: str = typer.Option(..., "--amount", help="Total amount, e.g. 12000 or 12000.50."),
    currency: str = typer.Option(service.DEFAULT_CURRENCY, "--currency", help="ISO 4217 code."),
    installment: list[str] = typer.Option(
        [],
        "--installment",
        help="DATE:AMOUNT, repeated, dates ascending, summing to the amount (default: one in 30 days).",
    ),
    product: list[str] = typer.Option([], "--product", help="NAME[:QUANTITY[:UNIT_PRICE]], repeated."),
    title: str = typer.Option("", "--title", help="Title (default: the lead's)."),
    number: str | None = typer.Option(None, "--number", help="Contract number (default: C<year>-<id>)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Create a draft contract with its payment plan; every invalid value is named."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        contract = service.create_contract(
            session,
            actor=SYSTEM,
            lead_id=lead_id,
            amount=amount,
            currency=currency,
            installments=[_installment(t, i) for i, t in enumerate(installment)],
            products=[_product(p) for p in product],
            title=title,
            number=number,
        )
        session.commit()
        data = service.contract_json(session, contract)
    emit_json(data) if json_out else console.print(f"created {_line(data)}")


@app.command("list")
def list_(
    lead: int | None = typer.Option(None, "--lead", help="Only this lead's contracts."),
    status: str | None = typer.Option(None, "--status", help="draft, sent, signed, declined, expired or cancelled."),
    limit: int = typer.Option(100, "--limit", min=1, max=500, help="At most this many."),
    json_out: bool = JSON_OPTION,
) -> None:
    """List contracts, newest first."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        page = service.list_contracts(session, actor=SYSTEM, lead_id=lead, status=status, limit=limit)
        rows = [service.contract_json(session, c, detail=False) for c in page.items]
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        console.print(_line(row))
    console.print(f"{len(rows):,} contracts")


@app.command("show")
def show(contract_id: int = typer.Argument(..., help="The contract's id."), json_out: bool = JSON_OPTION) -> None:
    """Show one contract: terms, signing state, installments and payments."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        data = service.contract_json(session, service.get_contract(session, actor=SYSTEM, contract_id=contract_id))
    if json_out:
        emit_json(data)
        return
    console.print(_line(data))
    for i in data["installments"]:
        console.print(f"  {i['seq']}. due {i['due_date']}: {i['amount']:,.2f}, paid {i['paid']:,.2f} [{i['status']}]")
    for p in data["payments"]:
        console.print(f"  payment {p['reference']}: {p['amount']:,.2f} on installment {p['installment']}")


@app.command("send")
def send(
    contract_id: int = typer.Argument(..., help="The contract's id."),
    days: int | None = typer.Option(
        None, "--days", min=1, max=365, help="Link lifetime (LEADPILOT_SIGNING_LINK_DAYS)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Send a contract for e-signature and print its one-time signing link (shown once)."""
    eng = _engine()
    cfg = settings()
    with domain_errors(), Session(eng) as session:
        provider = make_provider(cfg.signing_provider, secret_key=cfg.resolved_secret_key(), session=session)
        contract, envelope = service.send_contract(
            session, actor=SYSTEM, contract_id=contract_id, provider=provider, link_days=days or cfg.signing_link_days
        )
        session.commit()
        data = service.contract_json(session, contract)
    data["signing"] = {"reference": envelope.reference, "url": envelope.url, "token": envelope.token}
    if json_out:
        emit_json(data)
        return
    console.print(f"sent {_line(data)}; link valid until {data['expires_at']}")
    print(envelope.token)


@app.command("sign")
def sign(
    token: str = typer.Argument(..., help="The one-time signing token from `leadpilot contracts send`."),
    signer: str = typer.Option("", "--signer", help="Name of the person signing (required to sign)."),
    decline: bool = typer.Option(False, "--decline", help="Decline instead of signing."),
    reason: str | None = typer.Option(None, "--reason", help="Why it was declined."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Sign (or decline) through a signing token, as the customer would through the link."""
    eng = _engine()
    cfg = settings()
    with domain_errors(), Session(eng) as session:
        provider = make_provider(cfg.signing_provider, secret_key=cfg.resolved_secret_key(), session=session)
        contract = service.answer_signing(
            session,
            provider=provider,
            token=token,
            decision="decline" if decline else "sign",
            signer=signer,
            reason=reason,
        )
        session.commit()
        data = service.contract_json(session, contract)
    emit_json(data) if json_out else console.print(f"{data['status']} {_line(data)}")


@app.command("pay")
def pay(
    contract_id: int = typer.Argument(..., help="The contract's id."),
    amount: str = typer.Option(..., "--amount", help="Amount received."),
    reference: str = typer.Option(..., "--reference", help="Bank or gateway reference (a repeat is a no-op)."),
    installment: int | None = typer.Option(
        None, "--installment", min=1, help="Installment number (default: the earliest open)."
    ),
    paid_at: datetime | None = typer.Option(None, "--paid-at", help="When it was paid (ISO 8601, UTC; default now)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Record a payment (partial allowed, overpayment refused, idempotent by reference)."""
    from datetime import UTC

    eng = _engine()
    with domain_errors(), Session(eng) as session:
        payment, created = service.record_payment(
            session,
            actor=SYSTEM,
            contract_id=contract_id,
            amount=amount,
            reference=reference,
            installment=installment,
            paid_at=paid_at.replace(tzinfo=UTC) if paid_at is not None and paid_at.tzinfo is None else paid_at,
        )
        session.commit()
        data = service.contract_json(session, service.get_contract(session, actor=SYSTEM, contract_id=contract_id))
    data["payment"] = {"id": payment.id, "amount": service.money(payment.amount_cents), "created": created}
    if json_out:
        emit_json(data)
        return
    what = "recorded" if created else "already recorded (same reference), nothing written:"
    console.print(f"{what} {service.money(payment.amount_cents):,.2f} on {_line(data)}")


@app.command("remind")
def remind(
    days_before: int = typer.Option(3, "--days-before", min=0, max=90, help="Remind this many days before a due date."),
    json_out: bool = JSON_OPTION,
) -> None:
    """The scheduled job: payment reminders, overdue alerts and expired links as events, each sent once."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        counts = service.remind(session, actor=SYSTEM, days_before=days_before)
        session.commit()
    if json_out:
        emit_json(counts)
        return
    console.print(
        f"{counts['reminders']:,} payment reminders, {counts['overdue']:,} overdue alerts, "
        f"{counts['expired']:,} signing links expired"
    )


@app.command("rules")
def rules(
    enable: bool = typer.Option(False, "--enable", help="Store them switched on."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Store the default workflow rules for reminders, overdue alerts and unsigned contracts (disabled)."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        result = service.install_workflow_rules(session, actor=SYSTEM, enable=enable)
        session.commit()
    if json_out:
        emit_json(result)
        return
    console.print(f"stored {len(result['created'])} rules ({'enabled' if enable else 'disabled'}): {result['created']}")
