"""Tables lead scoring keeps in the CRM database: model versions, cold-start rules, the manual review queue."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, JSONType, UTCDateTime, utcnow


class ModelStatus(StrEnum):
    """Where a model version stands: trained, tried beside the champion, serving, or retired."""

    CANDIDATE = "candidate"
    CHALLENGER = "challenger"
    CHAMPION = "champion"
    ARCHIVED = "archived"


class ReviewStatus(StrEnum):
    """A rule-selected lead waiting for a person, or their decision."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class ModelVersion(Base):
    """One trained scoring model: where its files are, what it was trained on and how well it did."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        CheckConstraint(_in("status", ModelStatus), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # What it predicts: "transfer" and "convert" for the CRM's own models; any name for a CSV model.
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=ModelStatus.CANDIDATE.value)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    schema_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    data_from: Mapped[datetime | None] = mapped_column(UTCDateTime())
    data_to: Mapped[datetime | None] = mapped_column(UTCDateTime())
    n_train: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_test: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    features: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    baseline_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notes: Mapped[str] = mapped_column(Text, nullable=False, default="")


class ScoringRule(Base):
    """One version of a cold-start rule (``condition -> action``); saving a rule adds a version."""

    __tablename__ = "scoring_rules"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_scoring_rules_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    condition: Mapped[str] = mapped_column(Text, nullable=False)
    priority: Mapped[str | None] = mapped_column(String(10))
    review: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # Only the newest version of a name is current; older ones stay for the record.
    current: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class ReviewItem(Base):
    """A lead a rule sent to manual review, and what the reviewer decided."""

    __tablename__ = "review_queue"
    __table_args__ = (
        # One item per lead and rule version: evaluating the rules again adds nothing twice.
        UniqueConstraint("lead_id", "rule_id", name="uq_review_queue_lead_rule"),
        CheckConstraint(_in("status", ReviewStatus), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), nullable=False, index=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("scoring_rules.id", ondelete="CASCADE"), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=ReviewStatus.PENDING.value, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
