"""Tables the feature pipeline keeps in the CRM database (the online store)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, LargeBinary, SmallInteger
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, UTCDateTime


class OnlineFeatures(Base):
    """An entity's latest feature vector (packed ids and values; see ``features.online``)."""

    __tablename__ = "online_features"

    dim: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    k1: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    k2: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    as_of: Mapped[date] = mapped_column(Date, nullable=False)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
