"""Tables distribution keeps in the CRM database: each salesperson's ranked pool from the last run."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, UTCDateTime


class Recommendation(Base):
    """A pool lead ranked for one salesperson by the last distribution run."""

    __tablename__ = "recommendations"
    __table_args__ = (Index("ix_recommendations_user_id_rank", "user_id", "rank"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    p_convert: Mapped[float] = mapped_column(Float, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
