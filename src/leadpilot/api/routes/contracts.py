"""Contracts and payments: create with a payment plan, send for e-signature, sign through the link, record payments.

``/signing/{token}`` answers without a bearer token: it is the customer's signing link, protected by the
one-time token itself (an HMAC over the contract's document hash, usable once, expiring; see
docs/contracts.md). Every other route needs a signed-in user and follows the lead's visibility.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from leadpilot.api.deps import CurrentActor, IdPath, IdQuery, PagingDep, ReadDB, SessionReleasingRoute, WriteDB
from leadpilot.contracts import service
from leadpilot.contracts.signing import SigningProvider, make_provider
from leadpilot.crm.schemas import RefId, UTCTimestamp

router = APIRouter(tags=["contracts"], route_class=SessionReleasingRoute)

TokenPath = Annotated[str, Path(min_length=1, max_length=200)]
# Amounts arrive as JSON numbers or strings; the service checks them (> 0, two decimals) and names the field.
Amount = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=20)]  # JSON number or decimal string


class ProductIn(BaseModel):
    """One product line of a contract."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["Premium listing, 12 months"])
    quantity: int = 1
    unit_price: Amount | None = None


class InstallmentIn(BaseModel):
    """One payment of the plan: its due date and amount."""

    model_config = ConfigDict(extra="forbid")

    due_date: date = Field(examples=["2027-01-31"])
    amount: Amount = Field(examples=["5000.00"])


class ContractIn(BaseModel):
    """A new contract: the lead, the amount and currency, products and the payment plan."""

    model_config = ConfigDict(extra="forbid")

    lead_id: RefId
    amount: Amount = Field(examples=["10000.00"])
    currency: str = Field(default=service.DEFAULT_CURRENCY, max_length=10)
    title: str = Field(default="", max_length=300)
    number: str | None = Field(default=None, max_length=40)
    products: list[ProductIn] = Field(default_factory=list, max_length=service.MAX_PRODUCTS)
    installments: list[InstallmentIn] = Field(default_factory=list, max_length=service.MAX_INSTALLMENTS)


class SendIn(BaseModel):
    """How long the signing link stays valid (default ``LEADPILOT_SIGNING_LINK_DAYS``)."""

    model_config = ConfigDict(extra="forbid")

    link_days: int | None = Field(default=None, ge=1, le=365)


class CancelIn(BaseModel):
    """Why a contract is cancelled."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


class PaymentIn(BaseModel):
    """Money received: amount, the bank's or gateway's reference (idempotency key), optional installment."""

    model_config = ConfigDict(extra="forbid")

    amount: Amount = Field(examples=["2500.00"])
    reference: str = Field(min_length=1, max_length=120, examples=["BANK-2026-000123"])
    installment: int | None = Field(default=None, ge=1, le=service.MAX_INSTALLMENTS)
    paid_at: UTCTimestamp | None = None


class SigningAnswerIn(BaseModel):
    """The signer's answer: sign (with their name) or decline (optionally why)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["sign", "decline"]
    signer: str = Field(default="", max_length=200)
    reason: str | None = Field(default=None, max_length=500)


def _provider(request: Request, db: Session) -> SigningProvider:
    settings = request.app.state.settings
    return make_provider(settings.signing_provider, secret_key=request.app.state.secret_key, session=db)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


@router.get("/contracts")
def list_contracts(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    lead_id: IdQuery = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """Contracts the caller may see (their leads' by role), newest first, with paid and outstanding totals."""
    page = service.list_contracts(
        db,
        actor=actor,
        lead_id=lead_id,
        status=status,
        sort=paging.sort or "-id",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    items = [service.contract_json(db, c, detail=False) for c in page.items]
    return {"items": items, "next_cursor": page.next_cursor}


@router.post("/contracts", status_code=201)
def create_contract(data: ContractIn, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Create a draft contract with its payment plan; every invalid value is named in one 422."""
    contract = service.create_contract(
        db,
        actor=actor,
        lead_id=data.lead_id,
        amount=_plain(data.amount),
        currency=data.currency,
        title=data.title,
        number=data.number,
        products=[{k: _plain(v) for k, v in p.model_dump(exclude_none=True).items()} for p in data.products],
        installments=[{"due_date": i.due_date, "amount": _plain(i.amount)} for i in data.installments],
    )
    db.commit()
    return service.contract_json(db, contract)


@router.get("/contracts/{contract_id}")
def get_contract(contract_id: IdPath, actor: CurrentActor, db: ReadDB) -> dict[str, Any]:
    """One contract with its installments and payments."""
    return service.contract_json(db, service.get_contract(db, actor=actor, contract_id=contract_id))


@router.get("/contracts/{contract_id}/installments")
def list_installments(contract_id: IdPath, actor: CurrentActor, db: ReadDB) -> list[dict[str, Any]]:
    """The payment plan: each installment's due date, amount, paid, outstanding and status."""
    contract = service.get_contract(db, actor=actor, contract_id=contract_id)
    return [service.installment_json(i) for i in service.installments_of(db, contract.id)]


@router.post("/contracts/{contract_id}/send")
def send_contract(
    contract_id: IdPath, request: Request, actor: CurrentActor, db: WriteDB, data: SendIn | None = None
) -> dict[str, Any]:
    """Send for e-signature: returns the signing link once (its token is not stored; re-send for a new one)."""
    days = (data.link_days if data else None) or request.app.state.settings.signing_link_days
    contract, envelope = service.send_contract(
        db, actor=actor, contract_id=contract_id, provider=_provider(request, db), link_days=days
    )
    db.commit()
    body = service.contract_json(db, contract)
    body["signing"] = {"reference": envelope.reference, "url": envelope.url, "token": envelope.token}
    return body


@router.post("/contracts/{contract_id}/cancel")
def cancel_contract(
    contract_id: IdPath, actor: CurrentActor, db: WriteDB, data: CancelIn | None = None
) -> dict[str, Any]:
    """Cancel a contract without payments (its signing link stops working)."""
    contract = service.cancel_contract(db, actor=actor, contract_id=contract_id, reason=data.reason if data else None)
    db.commit()
    return service.contract_json(db, contract)


@router.post("/contracts/{contract_id}/payments", status_code=201)
def record_payment(contract_id: IdPath, data: PaymentIn, actor: CurrentActor, db: WriteDB) -> JSONResponse:
    """Record a payment (201); the same reference again answers 200 with the first one and writes nothing."""
    payment, created = service.record_payment(
        db,
        actor=actor,
        contract_id=contract_id,
        amount=_plain(data.amount),
        reference=data.reference,
        installment=data.installment,
        paid_at=data.paid_at,
    )
    db.commit()
    contract = service.get_contract(db, actor=actor, contract_id=contract_id)
    body = service.contract_json(db, contract)
    body["payment"] = {"id": payment.id, "amount": service.money(payment.amount_cents), "created": created}
    return JSONResponse(body, status_code=201 if created else 200)


@router.get("/signing/{token}")
def signing_document(token: TokenPath, request: Request, db: ReadDB) -> dict[str, Any]:
    """The terms behind a signing link (no bearer token: the one-time link is the credential)."""
    return service.signing_view(db, provider=_provider(request, db), token=token)


@router.post("/signing/{token}")
def answer_signing(token: TokenPath, data: SigningAnswerIn, request: Request, db: WriteDB) -> Response:
    """Sign or decline through the one-time link; signing moves a negotiating lead to won."""
    contract = service.answer_signing(
        db,
        provider=_provider(request, db),
        token=token,
        decision=data.decision,
        signer=data.signer,
        reason=data.reason,
    )
    db.commit()
    return JSONResponse({"number": contract.number, "status": contract.status, "signer": contract.signer_name})
