"""contracts: contracts with e-signature state, payment installments, payments, reminders sent

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leadpilot.db.base import JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Cents = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "contracts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("amount_cents", Cents, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("products", JSONType, nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("signing_provider", sa.String(length=40), nullable=True),
        sa.Column("provider_ref", sa.String(length=120), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("document_hash", sa.String(length=64), nullable=True),
        sa.Column("signer_name", sa.String(length=200), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("signed_at", UTCDateTime(), nullable=True),
        sa.Column("declined_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('draft', 'sent', 'signed', 'declined', 'expired', 'cancelled')",
            name=op.f("ck_contracts_status"),
        ),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_contracts_amount")),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_contracts_lead_id_leads"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_contracts_account_id_accounts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_contracts_owner_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_contracts_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contracts")),
        sa.UniqueConstraint("number", name="uq_contracts_number"),
        sa.UniqueConstraint("provider_ref", name="uq_contracts_provider_ref"),
    )
    op.create_index("ix_contracts_lead_id", "contracts", ["lead_id"])
    op.create_index("ix_contracts_owner_id", "contracts", ["owner_id"])
    op.create_table(
        "payment_installments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contract_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("amount_cents", Cents, nullable=False),
        sa.Column("paid_cents", Cents, nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.CheckConstraint(
            "status IN ('due', 'partial', 'paid', 'overdue', 'cancelled')", name=op.f("ck_payment_installments_status")
        ),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_payment_installments_amount")),
        sa.CheckConstraint("paid_cents >= 0 AND paid_cents <= amount_cents", name=op.f("ck_payment_installments_paid")),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_payment_installments_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_installments")),
        sa.UniqueConstraint("contract_id", "seq", name="uq_payment_installments_contract_seq"),
    )
    op.create_index("ix_payment_installments_status_due", "payment_installments", ["status", "due_date"])
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installment_id", sa.Integer(), nullable=False),
        sa.Column("amount_cents", Cents, nullable=False),
        sa.Column("paid_at", UTCDateTime(), nullable=False),
        sa.Column("reference", sa.String(length=120), nullable=False),
        sa.Column("recorded_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_payments_amount")),
        sa.ForeignKeyConstraint(
            ["installment_id"],
            ["payment_installments.id"],
            name=op.f("fk_payments_installment_id_payment_installments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recorded_by_id"], ["users.id"], name=op.f("fk_payments_recorded_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("reference", name="uq_payments_reference"),
    )
    op.create_index("ix_payments_installment_id", "payments", ["installment_id"])
    op.create_table(
        "payment_reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.CheckConstraint("kind IN ('due_soon', 'overdue')", name=op.f("ck_payment_reminders_kind")),
        sa.ForeignKeyConstraint(
            ["installment_id"],
            ["payment_installments.id"],
            name=op.f("fk_payment_reminders_installment_id_payment_installments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reminders")),
        sa.UniqueConstraint("installment_id", "kind", name="uq_payment_reminders_installment_kind"),
    )


def downgrade() -> None:
    op.drop_table("payment_reminders")
    op.drop_index("ix_payments_installment_id", table_name="payments")
    op.drop_table("payments")
    op.drop_index("ix_payment_installments_status_due", table_name="payment_installments")
    op.drop_table("payment_installments")
    op.drop_index("ix_contracts_owner_id", table_name="contracts")
    op.drop_index("ix_contracts_lead_id", table_name="contracts")
    op.drop_table("contracts")
