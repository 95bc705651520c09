"""Service functions for contracts and payments (what the API, the CLI and the web workspace call).

Every change appends its event in the caller's transaction (``contract_created``, ``contract_sent``,
``contract_signed`` with ``{"amount"}``, ``contract_declined``, ``contract_expired``, ``contract_cancelled``,
``payment`` with ``{"amount"}``, ``payment_reminder``, ``payment_overdue``) and writes an audit row. Who may
see and act on a contract follows its lead: salespeople their own, supervisors their team subtree's,
admins all; screeners none. Amounts are given as decimal numbers and kept in minor units (cents).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadpilot.contracts.signing import SigningDocument, SigningEnvelope, SigningError, SigningProvider, token_digest
from leadpilot.contracts.tables import (
    Contract,
    ContractStatus,
    InstallmentStatus,
    Payment,
    PaymentInstallment,
    PaymentReminder,
    ReminderKind,
)
from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.common import get_visible
from leadpilot.crm.errors import Conflict, Forbidden, Invalid
from leadpilot.crm.events import EventType, append_event
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import Lead, Role, Stage, User
from leadpilot.db.base import utcnow

MAX_AMOUNT = Decimal("1000000000000")  # one trillion: far beyond any deal, well inside exact float range
MAX_INSTALLMENTS = 120
MAX_PRODUCTS = 200
DEFAULT_CURRENCY = "CNY"
DEFAULT_DUE_DAYS = 30
# Stages of a lead a contract may be made for: being worked by its owner, or already won (an add-on deal).
CONTRACT_STAGES = frozenset({Stage.ASSIGNED, Stage.CONTACTED, Stage.NEGOTIATING, Stage.WON})
OPEN_INSTALLMENT = (InstallmentStatus.DUE.value, InstallmentStatus.PARTIAL.value, InstallmentStatus.OVERDUE.value)
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./\-]{0,39}$")
CONTRACT_SORT = sort_keys(Contract.id, Contract.created_at, Contract.amount_cents)


# --- money and validation -------------------------------------------------------------------------------------


def to_cents(value: Any, field: str, label: str | None = None) -> int:
    """A positive decimal amount (at most two decimals) in minor units; Invalid naming the field otherwise."""
    what = label or field
    if isinstance(value, bool) or value is None:
        raise Invalid(f"{what}: an amount is a number such as 1200 or 1200.50, not {value!r}", field=field)
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Invalid(f"{what}: {value!r} is not a number", field=field) from None
    if not amount.is_finite():
        raise Invalid(f"{what}: {value!r} is not a finite number", field=field)
    if amount <= 0:
        raise Invalid(f"{what}: must be greater than 0, not {amount}", field=field)
    if amount > MAX_AMOUNT:
        raise Invalid(f"{what}: {amount} is more than the largest amount accepted ({MAX_AMOUNT})", field=field)
    if amount != amount.quantize(Decimal("0.01")):
        raise Invalid(f"{what}: {amount} has more than two decimals", field=field)
    return int(amount * 100)


def money(cents: int) -> float:
    """Minor units as a JSON number (two decimals)."""
    return float(Decimal(cents) / 100)


def fmt(cents: int) -> str:
    """Minor units as text for messages: ``1,234.50``."""
    return f"{Decimal(cents) / 100:,.2f}"


def _to_date(value: Any, field: str, label: str) -> date:
    if isinstance(value, datetime):
        raise Invalid(f"{label}: due date must be a date (YYYY-MM-DD), not a time", field=field)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise Invalid(f"{label}: due date {value!r} is not a date (YYYY-MM-DD)", field=field)


@dataclass(frozen=True)
class PlannedInstallment:
    """One validated installment of a plan."""

    seq: int
    due_date: date
    amount_cents: int


@dataclass(frozen=True)
class Terms:
    """A validated contract: amount, currency, products and payment plan."""

    amount_cents: int
    currency: str
    products: list[dict[str, Any]]
    installments: list[PlannedInstallment]


class _Problems:
    """Collects every problem of a form, so one answer names them all (field and why)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def check(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Invalid as exc:
            self.items.append((exc.field or "", exc.message))
            return None

    def add(self, field: str, message: str) -> None:
        self.items.append((field, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise Invalid("; ".join(m for _, m in self.items), field=self.items[0][0] or None)


def _product(raw: Any, i: int, problems: _Problems) -> dict[str, Any] | None:
    label, field = f"product {i + 1}", f"products[{i}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        problems.add(field, f"{label}: a product is {{name, quantity, unit_price}}, not {raw!r}")
        return None
    unknown = sorted(set(raw) - {"name", "quantity", "unit_price"})
    if unknown:
        problems.add(
            f"{field}.{unknown[0]}", f"{label}: unknown field {unknown[0]!r} (known: name, quantity, unit_price)"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        problems.add(f"{field}.name", f"{label}: name must be 1-200 characters")
        name = None
    quantity = raw.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 1_000_000:
        problems.add(
            f"{field}.quantity", f"{label}: quantity must be a whole number from 1 to 1000000, not {quantity!r}"
        )
        quantity = None
    unit_price = None
    if raw.get("unit_price") is not None:
        unit_price = problems.check(to_cents, raw["unit_price"], f"{field}.unit_price", f"{label}: unit price")
    if name is None or quantity is None:
        return None
    return {"name": name.strip(), "quantity": quantity, "unit_price_cents": unit_price}


def validate_terms(
    *,
    amount: Any,
    currency: str = DEFAULT_CURRENCY,
    products: Sequence[Any] | None = None,
    installments: Sequence[Any] | None = None,
    today: date,
) -> Terms:
    """Check a contract form; Invalid lists every problem (field and installment named), nothing is written.

    Installments are ``{"due_date", "amount"}``: amounts > 0, due dates from today on and strictly
    ascending, and together exactly the contract amount. Without installments the plan is one payment of
    the whole amount due in 30 days. Products with unit prices on every line must add up to the amount.
    """
    problems = _Problems()
    total = problems.check(to_cents, amount, "amount", "amount")
    if not isinstance(currency, str) or not _CURRENCY.match(currency.strip().upper()):
        problems.add("currency", f"currency: a three-letter ISO 4217 code such as CNY or USD, not {currency!r}")
    else:
        currency = currency.strip().upper()
    items: list[dict[str, Any]] = []
    if products is not None and (not isinstance(products, Sequence) or isinstance(products, str)):
        problems.add("products", "products: a list of {name, quantity, unit_price}")
    elif products is not None:
        if len(products) > MAX_PRODUCTS:
            problems.add("products", f"products: at most {MAX_PRODUCTS} lines, not {len(products)}")
        for i, raw in enumerate(products[:MAX_PRODUCTS]):
            item = _product(raw, i, problems)
            if item is not None:
                items.append(item)
    plan: list[PlannedInstallment] = []
    if installments is None or len(installments) == 0:
        if total is not None:
            plan = [PlannedInstallment(1, today + timedelta(days=DEFAULT_DUE_DAYS), total)]
    elif len(installments) > MAX_INSTALLMENTS:
        problems.add("installments", f"installments: at most {MAX_INSTALLMENTS}, not {len(installments)}")
    else:
        previous: date | None = None
        for i, raw in enumerate(installments):
            label, field = f"installment {i + 1}", f"installments[{i}]"
            if not isinstance(raw, Mapping):
                problems.add(field, f"{label}: an installment is {{due_date, amount}}, not {raw!r}")
                continue
            unknown = sorted(set(raw) - {"due_date", "amount"})
            if unknown:
                problems.add(
                    f"{field}.{unknown[0]}", f"{label}: unknown field {unknown[0]!r} (known: due_date, amount)"
                )
            cents = problems.check(to_cents, raw.get("amount"), f"{field}.amount", f"{label}: amount")
            due = problems.check(_to_date, raw.get("due_date"), f"{field}.due_date", label)
            if due is not None:
                if due < today:
                    problems.add(f"{field}.due_date", f"{label}: due date {due} is in the past (today is {today})")
                if previous is not None and due <= previous:
                    problems.add(
                        f"{field}.due_date",
                        f"{label}: due date {due} must be after installment {i}'s ({previous}); dates go up",
                    )
                previous = due
            if cents is not None and due is not None:
                plan.append(PlannedInstallment(i + 1, due, cents))
        if total is not None and len(plan) == len(installments):
            planned = sum(p.amount_cents for p in plan)
            if planned != total:
                problems.add(
                    "installments",
                    f"installments add up to {fmt(planned)}, not the contract amount {fmt(total)} "
                    f"(difference {fmt(total - planned)})",
                )
    if total is not None and items and all(p["unit_price_cents"] is not None for p in items):
        lines = sum(p["quantity"] * p["unit_price_cents"] for p in items)
        if lines != total:
            problems.add("products", f"products add up to {fmt(lines)}, not the contract amount {fmt(total)}")
    problems.raise_if_any()
    assert total is not None
    return Terms(amount_cents=total, currency=currency, products=items, installments=plan)


# --- access ------------------------------------------------------------------------------------------------------


def contract_scope(actor: Actor) -> ColumnElement[bool]:
    """Contracts an actor may see and act on: admins all; supervisors their subtree's; sales their own."""
    if actor.is_admin:
        return true()
    if actor.role is Role.SALES and actor.id is not None:
        own_leads = select(Lead.id).where(Lead.owner_id == actor.id)
        return or_(Contract.owner_id == actor.id, Contract.lead_id.in_(own_leads))
    if actor.role is Role.SUPERVISOR and actor.id is not None:
        if not actor.team_ids:
            return Contract.owner_id == actor.id
        members = select(User.id).where(User.team_id.in_(actor.team_ids))
        team_leads = select(Lead.id).where(or_(Lead.team_id.in_(actor.team_ids), Lead.owner_id.in_(members)))
        return or_(Contract.owner_id == actor.id, Contract.owner_id.in_(members), Contract.lead_id.in_(team_leads))
    return false()


def get_contract(session: Session, *, actor: Actor, contract_id: int, for_update: bool = False) -> Contract:
    """One contract the actor may see (404 otherwise, never revealing that it exists)."""
    return get_visible(session, Contract, contract_id, contract_scope(actor), for_update=for_update)


def list_contracts(
    session: Session,
    *,
    actor: Actor,
    lead_id: int | None = None,
    status: str | None = None,
    sort: str = "-id",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Contract]:
    """Contracts the actor may see, newest first by default, one page at a time."""
    stmt = select(Contract).where(contract_scope(actor))
    if lead_id is not None:
        stmt = stmt.where(Contract.lead_id == lead_id)
    if status is not None:
        if status not in {s.value for s in ContractStatus}:
            known = ", ".join(s.value for s in ContractStatus)
            raise Invalid(f"unknown contract status {status!r} (known: {known})", field="status")
        stmt = stmt.where(Contract.status == status)
    return paginate(session, stmt, model=Contract, sortable=CONTRACT_SORT, sort=sort, cursor=cursor, limit=limit)


def installments_of(session: Session, contract_id: int) -> list[PaymentInstallment]:
    """A contract's installments in order."""
    stmt = select(PaymentInstallment).where(PaymentInstallment.contract_id == contract_id)
    return list(session.scalars(stmt.order_by(PaymentInstallment.seq)))


def payments_of(session: Session, contract_id: int) -> list[tuple[Payment, int]]:
    """A contract's payments with the seq of their installment, oldest first."""
    rows = session.execute(
        select(Payment, PaymentInstallment.seq)
        .join(PaymentInstallment, PaymentInstallment.id == Payment.installment_id)
        .where(PaymentInstallment.contract_id == contract_id)
        .order_by(Payment.paid_at, Payment.id)
    )
    return [(p, int(seq)) for p, seq in rows]


# --- create, send, sign, cancel ------------------------------------------------------------------------------


def create_contract(
    session: Session,
    *,
    actor: Actor,
    lead_id: int,
    amount: Any,
    currency: str = DEFAULT_CURRENCY,
    products: Sequence[Any] | None = None,
    installments: Sequence[Any] | None = None,
    title: str = "",
    number: str | None = None,
    now: datetime | None = None,
) -> Contract:
    """Create a draft contract with its payment plan for a lead the actor works on (see ``validate_terms``)."""
    now = now or utcnow()
    lead = lead_service.get_lead(session, actor=actor, lead_id=lead_id)  # 404 before 403
    if actor.role is Role.SCREENER:
        raise Forbidden("screeners do not make contracts; the lead's owner does")
    lead_service._check_can_work(actor, lead)
    if Stage(lead.stage) not in CONTRACT_STAGES or lead.owner_id is None:
        raise Conflict(
            f"lead {lead_id} is {lead.stage!r}{'' if lead.owner_id else ' without an owner'}; contracts are made "
            "for owned leads being worked (assigned, contacted, negotiating) or won",
            field="lead_id",
        )
    terms = validate_terms(
        amount=amount, currency=currency, products=products, installments=installments, today=now.date()
    )
    title = (title or "").strip()
    if len(title) > 300:
        raise Invalid("title: at most 300 characters", field="title")
    if number is not None:
        number = number.strip()
        if not _NUMBER.match(number):
            raise Invalid(f"number: 1-40 letters, digits, '_', '.', '/', '-' (got {number!r})", field="number")
        if session.scalar(select(Contract.id).where(Contract.number == number)) is not None:
            raise Conflict(f"contract number {number!r} is already in use", field="number")
    contract = Contract(
        number=number or f"tmp-{secrets.token_hex(16)}",  # replaced by C<year>-<id> right after the insert
        title=title or lead.title,
        lead_id=lead.id,
        account_id=lead.account_id,
        owner_id=lead.owner_id,
        created_by_id=actor.id,
        amount_cents=terms.amount_cents,
        currency=terms.currency,
        products=terms.products,
        status=ContractStatus.DRAFT.value,
        created_at=now,
        updated_at=now,
    )
    session.add(contract)
    session.flush()
    if number is None:
        contract.number = f"C{now:%Y}-{contract.id:06d}"
    for p in terms.installments:
        session.add(
            PaymentInstallment(
                contract_id=contract.id,
                seq=p.seq,
                due_date=p.due_date,
                amount_cents=p.amount_cents,
                paid_cents=0,
                status=InstallmentStatus.DUE.value,
            )
        )
    session.flush()
    _contract_event(
        session,
        EventType.CONTRACT_CREATED,
        contract,
        actor.id,
        now,
        {
            "amount": money(contract.amount_cents),
            "currency": contract.currency,
            "installments": len(terms.installments),
            "products": [p["name"] for p in terms.products],
        },
    )
    audit(session, actor, "create", "contract", contract.id, {"number": contract.number, "lead_id": lead.id})
    return contract


def _contract_event(
    session: Session, kind: EventType, contract: Contract, actor_id: int | None, at: datetime, details: dict[str, Any]
) -> None:
    """Append a contract's event to its lead's log: the contract's id and number, then ``details``."""
    payload = {"contract_id": contract.id, "number": contract.number, **details}
    append_event(session, kind, lead_id=contract.lead_id, actor_id=actor_id, occurred_at=at, payload=payload)


def document_hash(contract: Contract, installments: Sequence[PaymentInstallment]) -> str:
    """SHA-256 of the terms a signer agrees to: number, parties, amount, currency, products and the plan."""
    terms = {
        "number": contract.number,
        "title": contract.title,
        "lead_id": contract.lead_id,
        "account_id": contract.account_id,
        "amount_cents": contract.amount_cents,
        "currency": contract.currency,
        "products": contract.products,
        "installments": [[i.seq, i.due_date.isoformat(), i.amount_cents] for i in installments],
    }
    canonical = json.dumps(terms, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def send_contract(
    session: Session,
    *,
    actor: Actor,
    contract_id: int,
    provider: SigningProvider,
    link_days: int = 14,
    now: datetime | None = None,
) -> tuple[Contract, SigningEnvelope]:
    """Send a draft (or re-send a sent or expired) contract for signature; any earlier link stops working.

    Returns the contract and the provider's envelope; the token inside it is shown once and never stored.
    """
    now = now or utcnow()
    contract = get_contract(session, actor=actor, contract_id=contract_id, for_update=True)
    resendable = (ContractStatus.DRAFT.value, ContractStatus.SENT.value, ContractStatus.EXPIRED.value)
    if contract.status not in resendable:
        raise Conflict(f"contract {contract.number} is {contract.status}; only draft, sent or expired ones are sent")
    if not 1 <= link_days <= 365:
        raise Invalid(f"link_days: 1 to 365, not {link_days}", field="link_days")
    doc_hash = document_hash(contract, installments_of(session, contract.id))
    expires_at = now + timedelta(days=link_days)
    envelope = provider.send(SigningDocument(contract.id, contract.number, doc_hash, expires_at))
    contract.status = ContractStatus.SENT.value
    contract.signing_provider = provider.name
    contract.provider_ref = envelope.reference
    contract.token_hash = token_digest(envelope.token)
    contract.document_hash = doc_hash
    contract.sent_at = now
    contract.expires_at = expires_at
    contract.updated_at = now
    session.flush()
    _contract_event(
        session,
        EventType.CONTRACT_SENT,
        contract,
        actor.id,
        now,
        {
            "amount": money(contract.amount_cents),
            "provider": provider.name,
            "reference": envelope.reference,
            "expires_at": expires_at.isoformat(),
        },
    )
    audit(session, actor, "send", "contract", contract.id, {"provider": provider.name, "reference": envelope.reference})
    return contract, envelope


def _contract_for_token(
    session: Session, provider: SigningProvider, token: str, now: datetime, *, lock: bool = True
) -> Contract:
    """The contract a signing token is for, after every check: well-formed, current, unused, unexpired,
    and an HMAC that verifies against the contract's terms as they are now."""
    try:
        reference = provider.reference_of(token)
    except SigningError as exc:
        raise Forbidden(f"signing link is not valid: {exc.reason}") from None
    stmt = select(Contract).where(Contract.provider_ref == reference)
    contract = session.scalar(stmt.with_for_update() if lock else stmt)
    if contract is None or contract.signing_provider != provider.name:
        raise Forbidden("signing link is not valid: no contract is waiting for it")
    if contract.token_hash is None or not hmac.compare_digest(contract.token_hash, token_digest(token)):
        if contract.status in (ContractStatus.SIGNED.value, ContractStatus.DECLINED.value):
            raise Conflict(f"contract {contract.number} was already {contract.status}; a signing link works once")
        raise Forbidden("signing link is not valid: it was altered or replaced by a newer one")
    if contract.status != ContractStatus.SENT.value:
        raise Conflict(f"contract {contract.number} is {contract.status}; there is nothing to sign")
    if contract.expires_at is not None and now > contract.expires_at:
        raise Conflict(
            f"the signing link of contract {contract.number} expired at {contract.expires_at:%Y-%m-%d %H:%M} UTC"
        )
    current = document_hash(contract, installments_of(session, contract.id))
    try:
        provider.verify_callback(token, document_hash=current)
    except SigningError:
        raise Conflict(
            f"contract {contract.number} changed after it was sent (its document hash differs); "
            "it must be sent again before it can be signed"
        ) from None
    if contract.document_hash != current:
        raise Conflict(f"contract {contract.number} changed after it was sent; it must be sent again")
    return contract


def signing_view(
    session: Session, *, provider: SigningProvider, token: str, now: datetime | None = None
) -> dict[str, Any]:
    """What the signer sees behind a valid link: the terms and their document hash (writes nothing)."""
    contract = _contract_for_token(session, provider, token, now or utcnow(), lock=False)
    data = contract_json(session, contract)
    keep = ("number", "title", "amount", "currency", "products", "installments", "document_hash", "expires_at")
    return {k: data[k] for k in keep}


def answer_signing(
    session: Session,
    *,
    provider: SigningProvider,
    token: str,
    decision: str,
    signer: str = "",
    reason: str | None = None,
    now: datetime | None = None,
) -> Contract:
    """The signer's answer through a one-time link: ``sign`` or ``decline``.

    Signing marks the contract signed, appends ``contract_signed`` with ``{"amount"}`` and moves a
    negotiating lead to won through the CRM's stage service (its life-cycle rules apply); a lead in another
    stage keeps it (the event says which). The link stops working either way.
    """
    now = now or utcnow()
    if decision not in ("sign", "decline"):
        raise Invalid(f"decision: 'sign' or 'decline', not {decision!r}", field="decision")
    contract = _contract_for_token(session, provider, token, now)
    signer = (signer or "").strip()
    if decision == "sign" and not signer:
        raise Invalid("signer: the name of the person signing is required", field="signer")
    if len(signer) > 200:
        raise Invalid("signer: at most 200 characters", field="signer")
    if reason is not None and len(reason) > 500:
        raise Invalid("reason: at most 500 characters", field="reason")
    contract.token_hash = None
    contract.signer_name = signer or None
    contract.updated_at = now
    if decision == "decline":
        contract.status = ContractStatus.DECLINED.value
        contract.declined_at = now
        session.flush()
        _contract_event(
            session, EventType.CONTRACT_DECLINED, contract, None, now, {"signer": signer or None, "reason": reason}
        )
        audit(session, SYSTEM, "decline", "contract", contract.id, {"via": provider.name, "signer": signer or None})
        return contract
    contract.status = ContractStatus.SIGNED.value
    contract.signed_at = now
    session.flush()
    lead = session.get(Lead, contract.lead_id)
    moved = False
    if lead is not None and lead.stage == Stage.NEGOTIATING.value:
        lead_service.change_stage(
            session, actor=SYSTEM, lead_id=lead.id, stage=Stage.WON, reason=f"contract {contract.number} signed"
        )
        moved = True
    _contract_event(
        session,
        EventType.CONTRACT_SIGNED,
        contract,
        contract.owner_id,
        now,
        {
            "amount": money(contract.amount_cents),
            "currency": contract.currency,
            "signer": signer,
            "provider": provider.name,
            "document_hash": contract.document_hash,
            "lead_won": moved,
        },
    )
    audit(session, SYSTEM, "sign", "contract", contract.id, {"via": provider.name, "signer": signer})
    return contract


def cancel_contract(
    session: Session, *, actor: Actor, contract_id: int, reason: str | None = None, now: datetime | None = None
) -> Contract:
    """Cancel a contract not yet paid into: its link stops working and its open installments are cancelled."""
    now = now or utcnow()
    contract = get_contract(session, actor=actor, contract_id=contract_id, for_update=True)
    if contract.status == ContractStatus.CANCELLED.value:
        raise Conflict(f"contract {contract.number} is already cancelled")
    plan = installments_of(session, contract.id)
    if any(i.paid_cents > 0 for i in plan):
        raise Conflict(f"contract {contract.number} has payments; it cannot be cancelled")
    previous = contract.status
    contract.status = ContractStatus.CANCELLED.value
    contract.token_hash = None
    contract.updated_at = now
    for i in plan:
        i.status = InstallmentStatus.CANCELLED.value
    session.flush()
    _contract_event(
        session, EventType.CONTRACT_CANCELLED, contract, actor.id, now, {"from": previous, "reason": reason}
    )
    audit(session, actor, "cancel", "contract", contract.id, {"from": previous})
    return contract


# --- payments ----------------------------------------------------------------------------------------------------


def record_payment(
    session: Session,
    *,
    actor: Actor,
    contract_id: int,
    amount: Any,
    reference: str,
    installment: int | None = None,
    paid_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[Payment, bool]:
    """Record money received on a signed contract; returns (payment, created).

    It pays ``installment`` (its seq) or else the earliest one still open; a partial payment is fine, more
    than is still due on that installment is refused. ``reference`` (the bank's or gateway's id) makes it
    idempotent: the same payment again returns the first one with ``created`` False and writes nothing.
    """
    now = now or utcnow()
    contract = get_contract(session, actor=actor, contract_id=contract_id, for_update=True)
    reference = (reference or "").strip()
    if not reference or len(reference) > 120:
        raise Invalid("reference: the payment's bank or gateway reference, 1-120 characters", field="reference")
    cents = to_cents(amount, "amount")
    existing = session.execute(
        select(Payment, PaymentInstallment.contract_id, PaymentInstallment.seq)
        .join(PaymentInstallment, PaymentInstallment.id == Payment.installment_id)
        .where(Payment.reference == reference)
    ).first()
    if existing is not None:
        payment, paid_contract, seq = existing
        same = paid_contract == contract.id and payment.amount_cents == cents and installment in (None, seq)
        if not same:
            raise Conflict(
                f"payment reference {reference!r} was already used for {fmt(payment.amount_cents)} on another "
                "contract or installment",
                field="reference",
            )
        return payment, False
    if contract.status != ContractStatus.SIGNED.value:
        raise Conflict(f"contract {contract.number} is {contract.status}; payments are recorded on signed contracts")
    if paid_at is not None:
        if paid_at.tzinfo is None:
            raise Invalid("paid_at needs a time zone (e.g. 2026-01-31T09:00:00Z)", field="paid_at")
        if paid_at > now + timedelta(minutes=5):
            raise Invalid(f"paid_at {paid_at.isoformat()} is in the future", field="paid_at")
    plan = list(
        session.scalars(
            select(PaymentInstallment)
            .where(PaymentInstallment.contract_id == contract.id)
            .order_by(PaymentInstallment.seq)
            .with_for_update()
        )
    )
    if installment is not None:
        target = next((i for i in plan if i.seq == installment), None)
        if target is None:
            raise Invalid(
                f"installment: contract {contract.number} has installments 1 to {len(plan)}, not {installment}",
                field="installment",
            )
    else:
        target = next((i for i in plan if i.status in OPEN_INSTALLMENT), None)
        if target is None:
            raise Conflict(f"contract {contract.number} is paid in full")
    outstanding = target.amount_cents - target.paid_cents
    if target.status == InstallmentStatus.CANCELLED.value or outstanding <= 0:
        raise Conflict(f"installment {target.seq} of contract {contract.number} is {target.status}; nothing is due")
    if cents > outstanding:
        raise Invalid(
            f"amount: {fmt(cents)} is more than the {fmt(outstanding)} still due on installment {target.seq} "
            f"(of {fmt(target.amount_cents)}); overpayments are not accepted",
            field="amount",
        )
    target.paid_cents += cents
    if target.paid_cents == target.amount_cents:
        target.status = InstallmentStatus.PAID.value
    elif target.status != InstallmentStatus.OVERDUE.value:
        target.status = InstallmentStatus.PARTIAL.value
    payment = Payment(
        installment_id=target.id,
        amount_cents=cents,
        paid_at=paid_at or now,
        reference=reference,
        recorded_by_id=actor.id,
        created_at=now,
    )
    session.add(payment)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # the same reference committed by a concurrent request meanwhile
        raise Conflict(
            f"payment reference {reference!r} was recorded at the same moment; retry", field="reference"
        ) from None
    left = sum(i.amount_cents - i.paid_cents for i in plan if i.status != InstallmentStatus.CANCELLED.value)
    _contract_event(
        session,
        EventType.PAYMENT,
        contract,
        actor.id,
        payment.paid_at,
        {
            "amount": money(cents),
            "currency": contract.currency,
            "installment": target.seq,
            "reference": reference,
            "outstanding": money(left),
            "paid_in_full": left == 0,
        },
    )
    audit(session, actor, "pay", "contract", contract.id, {"amount": money(cents), "reference": reference})
    return payment, True


# --- the reminder job --------------------------------------------------------------------------------------------


def remind(
    session: Session, *, actor: Actor = SYSTEM, now: datetime | None = None, days_before: int = 3
) -> dict[str, int]:
    """The scheduled job: reminders before due dates, overdue alerts after them, expired signing links.

    For installments of signed contracts still open: due within ``days_before`` days (from today, UTC)
    → one ``payment_reminder`` event; past due → status ``overdue`` and one ``payment_overdue`` event.
    Each alert is sent once per installment and kind (a unique row in ``payment_reminders``), so running
    the job again, or twice at once, sends nothing new. Sent contracts whose link expired become
    ``expired`` with a ``contract_expired`` event. Workflow rules trigger on these events.
    """
    if not actor.is_admin:
        raise Forbidden("only an admin (or the scheduler) runs the reminder job")
    if not 0 <= days_before <= 90:
        raise Invalid(f"days_before: 0 to 90, not {days_before}", field="days_before")
    now = now or utcnow()
    today = now.astimezone(UTC).date()
    counts = {"reminders": 0, "overdue": 0, "expired": 0}
    expired = session.scalars(
        select(Contract)
        .where(Contract.status == ContractStatus.SENT.value, Contract.expires_at < now)
        .order_by(Contract.id)
        .with_for_update()
    ).all()
    for contract in expired:
        contract.status = ContractStatus.EXPIRED.value
        contract.token_hash = None
        contract.updated_at = now
        _contract_event(
            session, EventType.CONTRACT_EXPIRED, contract, None, now, {"expires_at": _iso(contract.expires_at)}
        )
        counts["expired"] += 1
    rows = session.execute(
        select(PaymentInstallment, Contract)
        .join(Contract, Contract.id == PaymentInstallment.contract_id)
        .where(
            Contract.status == ContractStatus.SIGNED.value,
            PaymentInstallment.status.in_(OPEN_INSTALLMENT),
            PaymentInstallment.due_date <= today + timedelta(days=days_before),
        )
        .order_by(PaymentInstallment.due_date, PaymentInstallment.id)
    ).all()
    ids = [i.id for i, _ in rows]
    sent: set[tuple[int, str]] = set()
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        sent |= {
            (int(a), str(b))
            for a, b in session.execute(
                select(PaymentReminder.installment_id, PaymentReminder.kind).where(
                    PaymentReminder.installment_id.in_(part)
                )
            )
        }
    for inst, contract in rows:
        overdue = inst.due_date < today
        kind = ReminderKind.OVERDUE if overdue else ReminderKind.DUE_SOON
        if overdue and inst.status != InstallmentStatus.OVERDUE.value:
            inst.status = InstallmentStatus.OVERDUE.value
        if (inst.id, kind.value) in sent:
            continue
        reminder = _claim_reminder(session, inst.id, kind, now)
        if reminder is None:
            continue
        outstanding = inst.amount_cents - inst.paid_cents
        payload: dict[str, Any] = {
            "contract_id": contract.id,
            "number": contract.number,
            "installment": inst.seq,
            "due_date": inst.due_date.isoformat(),
            "amount": money(inst.amount_cents),
            "outstanding": money(outstanding),
            "currency": contract.currency,
            "owner_id": contract.owner_id,
        }
        if overdue:
            payload["days_overdue"] = (today - inst.due_date).days
        else:
            payload["days_left"] = (inst.due_date - today).days
        event = append_event(
            session,
            EventType.PAYMENT_OVERDUE if overdue else EventType.PAYMENT_REMINDER,
            lead_id=contract.lead_id,
            actor_id=None,
            occurred_at=now,
            payload=payload,
        )
        reminder.event_id = event.id
        counts["overdue" if overdue else "reminders"] += 1
    session.flush()
    if any(counts.values()):
        audit(session, actor, "remind", "contract", None, {**counts, "days_before": days_before})
    return counts


def _claim_reminder(session: Session, installment_id: int, kind: ReminderKind, now: datetime) -> PaymentReminder | None:
    """Insert the once-only row for (installment, kind); None when another run already sent it."""
    row = PaymentReminder(installment_id=installment_id, kind=kind.value, sent_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


# --- JSON --------------------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def contract_json(session: Session, contract: Contract, *, detail: bool = True) -> dict[str, Any]:
    """A contract as plain JSON data; with ``detail`` its installments and payments too."""
    plan = installments_of(session, contract.id)
    live = [i for i in plan if i.status != InstallmentStatus.CANCELLED.value]
    paid = sum(i.paid_cents for i in plan)
    data: dict[str, Any] = {
        "id": contract.id,
        "number": contract.number,
        "title": contract.title,
        "lead_id": contract.lead_id,
        "account_id": contract.account_id,
        "owner_id": contract.owner_id,
        "amount": money(contract.amount_cents),
        "currency": contract.currency,
        "products": [
            {
                "name": p["name"],
                "quantity": p["quantity"],
                "unit_price": None if p.get("unit_price_cents") is None else money(p["unit_price_cents"]),
            }
            for p in contract.products
        ],
        "status": contract.status,
        "paid": money(paid),
        "outstanding": money(sum(i.amount_cents - i.paid_cents for i in live)),
        "signing_provider": contract.signing_provider,
        "provider_ref": contract.provider_ref,
        "document_hash": contract.document_hash,
        "signer_name": contract.signer_name,
        "sent_at": _iso(contract.sent_at),
        "signed_at": _iso(contract.signed_at),
        "declined_at": _iso(contract.declined_at),
        "expires_at": _iso(contract.expires_at),
        "created_at": _iso(contract.created_at),
    }
    if detail:
        data["installments"] = [installment_json(i) for i in plan]
        data["payments"] = [
            {
                "id": p.id,
                "installment": seq,
                "amount": money(p.amount_cents),
                "paid_at": _iso(p.paid_at),
                "reference": p.reference,
            }
            for p, seq in payments_of(session, contract.id)
        ]
    return data


def installment_json(i: PaymentInstallment) -> dict[str, Any]:
    """One installment as plain JSON data."""
    return {
        "seq": i.seq,
        "due_date": i.due_date.isoformat(),
        "amount": money(i.amount_cents),
        "paid": money(i.paid_cents),
        "outstanding": money(i.amount_cents - i.paid_cents),
        "status": i.status,
    }


# --- default workflow rules --------------------------------------------------------------------------------------


def default_rules_yaml() -> str:
    """The shipped workflow rules for reminders, overdue alerts and unsigned contracts (disabled)."""
    from importlib import resources

    return resources.files("leadpilot.contracts").joinpath("workflow_rules.yaml").read_text(encoding="utf-8")


def install_workflow_rules(session: Session, *, actor: Actor, enable: bool = False) -> dict[str, list[str]]:
    """Store the shipped contract workflow rules not stored yet (disabled unless ``enable``)."""
    from leadpilot.workflow import service as workflow_service
    from leadpilot.workflow.rules import load_yaml, parse_rule
    from leadpilot.workflow.tables import WorkflowRule

    existing = set(session.scalars(select(WorkflowRule.name)))
    rules = [r for r in load_yaml(default_rules_yaml()) if r.name not in existing]
    if enable:
        rules = [parse_rule({**r.to_dict(), "enabled": True}) for r in rules]
    return workflow_service.save_rules(session, actor=actor, rules=rules)
