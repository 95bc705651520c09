"""Tables contracts keep in the CRM database: contracts, payment installments, payments, reminders sent.

Money is stored in integer minor units (cents, fen) so sums are exact on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, BigId, JSONType, UTCDateTime, utcnow

Cents = BigInteger().with_variant(Integer(), "sqlite")


class ContractStatus(StrEnum):
    """Where a contract stands in its signing life."""

    DRAFT = "draft"
    SENT = "sent"
    SIGNED = "signed"
    DECLINED = "declined"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class InstallmentStatus(StrEnum):
    """Where one payment of a plan stands."""

    DUE = "due"
    PARTIAL = "partial"
    PAID = "paid"
    OVERDUE = "overdue"
    CANCELLED = "cancelled"


class ReminderKind(StrEnum):
    """Which alert was sent about an installment (each at most once)."""

    DUE_SOON = "due_soon"
    OVERDUE = "overdue"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Contract(Base):
    """A contract for a lead: amount, products, payment plan and its e-signature state."""

    __tablename__ = "contracts"
    __table_args__ = (
        UniqueConstraint("number", name="uq_contracts_number"),
        UniqueConstraint("provider_ref", name="uq_contracts_provider_ref"),
        CheckConstraint(_in("status", ContractStatus), name="status"),
        CheckConstraint("amount_cents > 0", name="amount"),
        Index("ix_contracts_lead_id", "lead_id"),
        Index("ix_contracts_owner_id", "owner_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(40), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    # RESTRICT: a lead with contracts cannot be deleted (money records outlive a clean-up).
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="RESTRICT"), nullable=False)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    amount_cents: Mapped[int] = mapped_column(Cents, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # [{"name", "quantity", "unit_price_cents" (or null)}]
    products: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default=ContractStatus.DRAFT.value)
    signing_provider: Mapped[str | None] = mapped_column(String(40))
    provider_ref: Mapped[str | None] = mapped_column(String(120))
    # SHA-256 of the one-time signing token now valid (only the hash is kept; cleared once used).
    token_hash: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of the terms (see service.document_hash) as last sent for signature.
    document_hash: Mapped[str | None] = mapped_column(String(64))
    signer_name: Mapped[str | None] = mapped_column(String(200))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    declined_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


class PaymentInstallment(Base):
    """One due payment of a contract's plan (``seq`` 1, 2, ... in due-date order)."""

    __tablename__ = "payment_installments"
    __table_args__ = (
        UniqueConstraint("contract_id", "seq", name="uq_payment_installments_contract_seq"),
        CheckConstraint(_in("status", InstallmentStatus), name="status"),
        CheckConstraint("amount_cents > 0", name="amount"),
        CheckConstraint("paid_cents >= 0 AND paid_cents <= amount_cents", name="paid"),
        Index("ix_payment_installments_status_due", "status", "due_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contract_id: Mapped[int] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    due_date: Mapped[date] = mapped_column(Date, nullable=False)
    amount_cents: Mapped[int] = mapped_column(Cents, nullable=False)
    paid_cents: Mapped[int] = mapped_column(Cents, nullable=False, default=0)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default=InstallmentStatus.DUE.value)


class Payment(Base):
    """Money received against an installment; ``reference`` (bank or gateway id) makes recording idempotent."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("reference", name="uq_payments_reference"),
        CheckConstraint("amount_cents > 0", name="amount"),
        Index("ix_payments_installment_id", "installment_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installment_id: Mapped[int] = mapped_column(
        ForeignKey("payment_installments.id", ondelete="CASCADE"), nullable=False
    )
    amount_cents: Mapped[int] = mapped_column(Cents, nullable=False)
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    reference: Mapped[str] = mapped_column(String(120), nullable=False)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class PaymentReminder(Base):
    """A reminder or overdue alert already sent for an installment; the unique key sends each once."""

    __tablename__ = "payment_reminders"
    __table_args__ = (
        UniqueConstraint("installment_id", "kind", name="uq_payment_reminders_installment_kind"),
        CheckConstraint(_in("kind", ReminderKind), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installment_id: Mapped[int] = mapped_column(
        ForeignKey("payment_installments.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    event_id: Mapped[int | None] = mapped_column(BigId)
