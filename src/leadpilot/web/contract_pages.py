"""Contract pages (docs/web.md): the lead page's contracts panel and form, a contract's page, the contracts list.

Every action calls ``leadpilot.contracts.service`` (the functions behind ``/api/v1/contracts``), so events,
audit rows, refusals and who may see what are those of the API.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Form, Query, Request, Response
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from leadpilot.contracts import service as contract_service
from leadpilot.contracts.signing import make_provider
from leadpilot.contracts.tables import Contract, ContractStatus, InstallmentStatus, PaymentInstallment
from leadpilot.crm.access import Actor
from leadpilot.crm.errors import DomainError, Invalid
from leadpilot.crm.models import Event, Lead, Role, Stage
from leadpilot.web.routes import (
    CSRF,
    LIST_LIMIT,
    check_csrf,
    error_page,
    page,
    reading,
    redirect,
    render,
    require,
    router,
    writing,
)

CONTRACT_EVENTS = (
    "contract_created",
    "contract_sent",
    "contract_signed",
    "contract_declined",
    "contract_cancelled",
    "contract_expired",
    "payment",
    "payment_reminder",
    "payment_overdue",
)
PRODUCT_ROWS = 3  # blank rows the new-contract form offers (more come back when a filled form is re-shown)
INSTALLMENT_ROWS = 4
# Where a service message belongs: "installment 2: ..." -> installments[1], "amount: ..." -> amount, ...
_PART = re.compile(r"; (?=(?:installment \d+|product \d+|installments|products|amount|currency|title|number)\b)")
_LABEL = re.compile(r"^(installment|product) (\d+)\b")


def split_problems(message: str) -> dict[str, list[str]]:
    """A service error (every problem joined by '; ') as messages per form place: ``installment.1``,
    ``product.1``, ``amount``, ``currency``, ``installments``, ``products``, ... (``form`` for the rest)."""
    out: dict[str, list[str]] = {}
    for part in _PART.split(message):
        found = _LABEL.match(part)
        if found:
            key = f"{found.group(1)}.{int(found.group(2))}"
        else:
            head = part.split(":", 1)[0].split(" ", 1)[0]
            key = head if head in ("installments", "products", "amount", "currency", "title", "number") else "form"
        out.setdefault(key, []).append(part)
    return out


def _today_overdue() -> Any:
    """Installments counted overdue: marked so by the reminder job, or open with a due date before today."""
    today = datetime.now(UTC).date()
    return or_(
        PaymentInstallment.status == InstallmentStatus.OVERDUE.value,
        and_(
            PaymentInstallment.status.in_(contract_service.OPEN_INSTALLMENT),
            PaymentInstallment.due_date < today,
        ),
    )


def plan_summary(db: Session, contract_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per contract: installments in all, paid, still due and overdue (one grouped query)."""
    out = {cid: {"total": 0, "paid": 0, "due": 0, "overdue": 0} for cid in contract_ids}
    if not contract_ids:
        return out
    overdue = _today_overdue()
    rows = db.execute(
        select(
            PaymentInstallment.contract_id,
            func.count(),
            func.sum(case((PaymentInstallment.status == InstallmentStatus.PAID.value, 1), else_=0)),
            func.sum(case((PaymentInstallment.status.in_(contract_service.OPEN_INSTALLMENT), 1), else_=0)),
            func.sum(case((overdue, 1), else_=0)),
        )
        .where(PaymentInstallment.contract_id.in_(contract_ids))
        .group_by(PaymentInstallment.contract_id)
    )
    for cid, total, paid, due, late in rows:
        out[int(cid)] = {"total": int(total), "paid": int(paid or 0), "due": int(due or 0), "overdue": int(late or 0)}
    return out


def contracts_of_lead(db: Session, actor: Actor, lead: Lead) -> dict[str, Any]:
    """The lead page's contracts panel: the lead's contracts the actor may see, with plan summaries, and whether
    the actor may make a new one (the service still decides)."""
    if actor.role is Role.SCREENER:
        return {"contracts": [], "plans": {}, "can_contract": False}
    items = contract_service.list_contracts(db, actor=actor, lead_id=lead.id, limit=LIST_LIMIT).items
    rows = [contract_service.contract_json(db, c, detail=False) for c in items]
    can = (
        lead.owner_id is not None
        and Stage(lead.stage) in contract_service.CONTRACT_STAGES
        and (actor.role is not Role.SALES or lead.owner_id == actor.id)
    )
    return {"contracts": rows, "plans": plan_summary(db, [r["id"] for r in rows]), "can_contract": can}


def _rows(*columns: list[str]) -> list[list[str]]:
    """Form columns (name[], qty[] ...) zipped into rows, blank rows dropped."""
    width = max((len(c) for c in columns), default=0)
    padded = [list(c) + [""] * (width - len(c)) for c in columns]
    return [list(row) for row in zip(*padded, strict=True) if any(v.strip() for v in row)]


def _quantity(text: str) -> Any:
    """A quantity as typed: a whole number when it is one, else the text (the service names the problem)."""
    value = text.strip()
    if not value:
        return 1
    return int(value) if re.fullmatch(r"-?\d{1,9}", value) else value


@router.post("/leads/{lead_id}/contracts")
@page
def create_contract(
    request: Request,
    lead_id: int,
    amount: Annotated[str, Form(max_length=40)] = "",
    currency: Annotated[str, Form(max_length=10)] = contract_service.DEFAULT_CURRENCY,
    title: Annotated[str, Form(max_length=400)] = "",
    product_name: Annotated[list[str] | None, Form(max_length=300)] = None,
    product_quantity: Annotated[list[str] | None, Form(max_length=20)] = None,
    product_unit_price: Annotated[list[str] | None, Form(max_length=40)] = None,
    installment_due_date: Annotated[list[str] | None, Form(max_length=40)] = None,
    installment_amount: Annotated[list[str] | None, Form(max_length=40)] = None,
    csrf_token: CSRF = "",
) -> Response:
    """Make a draft contract for the lead (``contracts.service.create_contract``, as ``POST /api/v1/contracts``).

    A refused form comes back with every problem beside its field or installment and the values as typed.
    """
    from leadpilot.web.routes import _lead_context

    actor = require(request, "contracts")
    check_csrf(request, csrf_token)
    products = _rows(product_name or [], product_quantity or [], product_unit_price or [])
    plan = _rows(installment_due_date or [], installment_amount or [])
    form = {"amount": amount, "currency": currency, "title": title, "products": products, "installments": plan}
    try:
        if len(products) > contract_service.MAX_PRODUCTS or len(plan) > contract_service.MAX_INSTALLMENTS:
            raise Invalid("too many rows in the form", field="installments")
        with writing(request) as db:
            contract = contract_service.create_contract(
                db,
                actor=actor,
                lead_id=lead_id,
                amount=amount,
                currency=currency,
                title=title,
                products=[
                    {"name": n, "quantity": _quantity(q), **({"unit_price": p} if p.strip() else {})}
                    for n, q, p in products
                ],
                installments=[{"due_date": d, "amount": a} for d, a in plan],
            )
            db.commit()
            contract_id = contract.id
    except DomainError as exc:
        try:
            context = _lead_context(request, actor, lead_id)
        except DomainError as missing:
            return error_page(request, actor, missing.status_code, missing.message)
        context.update(contract_error=exc.message, contract_problems=split_problems(exc.message), contract_form=form)
        return render(request, "lead.html", actor, context, status=exc.status_code)
    return redirect(f"/contracts/{contract_id}", done="created")


def _events_of(db: Session, contract: Contract) -> list[Event]:
    """The contract's events (those of its lead that name it), oldest first."""
    stmt = (
        select(Event)
        .where(Event.lead_id == contract.lead_id, Event.type.in_(CONTRACT_EVENTS))
        .order_by(Event.id)
        .limit(2000)
    )
    return [e for e in db.scalars(stmt) if (e.payload or {}).get("contract_id") == contract.id]


def _contract_context(request: Request, actor: Actor, contract_id: int) -> dict[str, Any]:
    with reading(request) as db:
        contract = contract_service.get_contract(db, actor=actor, contract_id=contract_id)
        data = contract_service.contract_json(db, contract)
        events = _events_of(db, contract)
        lead_title = db.scalar(select(Lead.title).where(Lead.id == contract.lead_id))
    open_plan = [i for i in data["installments"] if i["status"] in contract_service.OPEN_INSTALLMENT]
    return {
        "contract": data,
        "lead_title": lead_title,
        "events": events,
        "can_send": data["status"] in ("draft", "sent", "expired") and actor.role is not Role.SCREENER,
        "can_pay": data["status"] == ContractStatus.SIGNED.value and bool(open_plan),
        "open_plan": open_plan,
        "signing": None,
        "error": None,
        "form": {},
        "done": request.query_params.get("done"),
    }


@router.get("/contracts/{contract_id}")
@page
def contract_page(request: Request, contract_id: int) -> Response:
    """One contract: status, signing, installments, payments and its events."""
    actor = require(request, "contracts")
    try:
        context = _contract_context(request, actor, contract_id)
    except DomainError as exc:
        return error_page(request, actor, exc.status_code, exc.message)
    return render(request, "contract.html", actor, context)


def _refused(request: Request, actor: Actor, contract_id: int, exc: DomainError, form: dict[str, str]) -> Response:
    try:
        context = _contract_context(request, actor, contract_id)
    except DomainError as missing:
        return error_page(request, actor, missing.status_code, missing.message)
    context.update(error=exc.message, form=form)
    return render(request, "contract.html", actor, context, status=exc.status_code)


@router.post("/contracts/{contract_id}/send")
@page
def send_contract(request: Request, contract_id: int, csrf_token: CSRF = "") -> Response:
    """Send for e-signature (``contracts.service.send_contract``); the signing link is shown this once."""
    actor = require(request, "contracts")
    check_csrf(request, csrf_token)
    settings = request.app.state.settings
    try:
        with writing(request) as db:
            provider = make_provider(settings.signing_provider, secret_key=request.app.state.secret_key, session=db)
            _contract, envelope = contract_service.send_contract(
                db, actor=actor, contract_id=contract_id, provider=provider, link_days=settings.signing_link_days
            )
            db.commit()
    except DomainError as exc:
        return _refused(request, actor, contract_id, exc, {})
    context = _contract_context(request, actor, contract_id)
    context["signing"] = {"url": str(request.base_url).rstrip("/") + envelope.url, "reference": envelope.reference}
    context["done"] = "sent"
    return render(request, "contract.html", actor, context)


@router.post("/contracts/{contract_id}/payments")
@page
def record_payment(
    request: Request,
    contract_id: int,
    amount: Annotated[str, Form(max_length=40)] = "",
    reference: Annotated[str, Form(max_length=200)] = "",
    installment: Annotated[str, Form(max_length=10)] = "",
    csrf_token: CSRF = "",
) -> Response:
    """Record a payment (``contracts.service.record_payment``, as ``POST /api/v1/contracts/{id}/payments``)."""
    actor = require(request, "contracts")
    check_csrf(request, csrf_token)
    form = {"amount": amount, "reference": reference, "installment": installment}
    try:
        seq: int | None = None
        if installment.strip():
            if not installment.strip().isdigit():
                raise Invalid(f"installment: a number such as 1, not {installment!r}", field="installment")
            seq = int(installment.strip())
        with writing(request) as db:
            _payment, created = contract_service.record_payment(
                db, actor=actor, contract_id=contract_id, amount=amount, reference=reference, installment=seq
            )
            db.commit()
    except DomainError as exc:
        return _refused(request, actor, contract_id, exc, form)
    return redirect(f"/contracts/{contract_id}", done="paid" if created else "paid_before")


def overdue_contracts(db: Session, *, actor: Actor, status: str | None = None) -> list[Contract]:
    """Signed contracts the actor may see with an overdue installment, newest first (at most ``LIST_LIMIT``)."""
    stmt = select(Contract).where(
        contract_service.contract_scope(actor),
        Contract.status == ContractStatus.SIGNED.value,
        Contract.id.in_(select(PaymentInstallment.contract_id).where(_today_overdue())),
    )
    if status:
        stmt = stmt.where(Contract.status == status)
    return list(db.scalars(stmt.order_by(Contract.id.desc()).limit(LIST_LIMIT)))


@router.get("/contracts")
@page
def contracts_page(
    request: Request,
    status: Annotated[str, Query(max_length=20)] = "",
    overdue: Annotated[str, Query(max_length=5)] = "",
) -> Response:
    """Contracts I may see (by role, like the API), newest first; filter by status and by overdue installments."""
    actor = require(request, "contracts")
    try:
        with reading(request) as db:
            if overdue:
                if status:
                    contract_service.list_contracts(db, actor=actor, status=status, limit=1)  # validates the status
                items = overdue_contracts(db, actor=actor, status=status or None)
            else:
                items = contract_service.list_contracts(db, actor=actor, status=status or None, limit=LIST_LIMIT).items
            rows = [contract_service.contract_json(db, c, detail=False) for c in items]
            plans = plan_summary(db, [r["id"] for r in rows])
    except DomainError as exc:
        return error_page(request, actor, exc.status_code, exc.message)
    context = {
        "contracts": rows,
        "plans": plans,
        "status": status,
        "overdue": bool(overdue),
        "statuses": [s.value for s in ContractStatus],
        "today": date.today(),
    }
    return render(request, "contracts.html", actor, context)
