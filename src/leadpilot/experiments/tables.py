"""Tables experiments keep in the CRM database: one row per experiment (its arms, unit and status)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, JSONType, UTCDateTime, utcnow


class ExperimentUnit(StrEnum):
    """What an experiment buckets into arms: salespeople or leads."""

    SALESPERSON = "salesperson"
    LEAD = "lead"


class ExperimentStatus(StrEnum):
    """Where an experiment stands: being set up, routing leads, or finished."""

    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Experiment(Base):
    """An A/B test of routing strategies: arms ``[{name, strategy, share}]`` with the first arm as control."""

    __tablename__ = "experiments"
    __table_args__ = (
        UniqueConstraint("key", name="uq_experiments_key"),
        CheckConstraint(_in("unit", ExperimentUnit), name="unit"),
        CheckConstraint(_in("status", ExperimentStatus), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(80), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    unit: Mapped[str] = mapped_column(String(20), nullable=False)
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=ExperimentStatus.DRAFT.value)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
