"""Leads as DataFrames for rules and models: CRM attributes known at creation, plus feature-store values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm.models import Account, Lead
from leadpilot.features.dictionary import DerivedFeature, Dimension, FeatureDictionary, Function
from leadpilot.features.store import FeatureMatrix, FeatureStore

# Attributes a rule or a model may read from the CRM itself; all are known when the lead arrives (stage is
# for rules only: it is the outcome the models predict).
LEAD_ATTRIBUTES: dict[str, str] = {
    "budget": "numeric",
    "region": "text",
    "source": "text",
    "product_line": "text",
    "industry": "text",
    "company_size": "text",
    "age_days": "numeric",
}
RULE_ONLY_ATTRIBUTES: dict[str, str] = {"stage": "text", "has_owner": "boolean"}
CLOSED_STAGES = ("won", "lost")
# Functions whose value is 0 when an entity had no event in the window; the others have no value then.
_ZERO_WHEN_ABSENT = frozenset({Function.COUNT, Function.SUM, Function.DISTINCT_COUNT})
# Dimensions a lead's row can read: its own features and its account's.
LEAD_ROW_DIMENSIONS = (Dimension.LEAD, Dimension.ACCOUNT)


def load_leads(
    source: Engine | Session, *, lead_ids: Sequence[int] | None = None, open_only: bool = False, now: datetime
) -> pd.DataFrame:
    """CRM attributes of leads (index: lead id), with ``age_days`` at ``now`` and the account's attributes."""
    stmt = select(
        Lead.id,
        Lead.budget,
        Lead.region,
        Lead.source,
        Lead.product_line,
        Lead.stage,
        Lead.owner_id,
        Lead.account_id,
        Lead.created_at,
        Lead.priority,
        Account.industry,
        Account.size.label("company_size"),
    ).outerjoin(Account, Account.id == Lead.account_id)
    if open_only:
        stmt = stmt.where(Lead.stage.not_in(CLOSED_STAGES))
    frames: list[pd.DataFrame] = []
    ids = list(lead_ids) if lead_ids is not None else None
    # Bounded IN lists: SQLite allows 32,766 parameters, and a long list is slow to plan on PostgreSQL.
    batches = [ids[i : i + 20_000] for i in range(0, len(ids), 20_000)] if ids is not None else [None]
    session = source if isinstance(source, Session) else Session(source)
    try:
        for batch in batches:
            query = stmt if batch is None else stmt.where(Lead.id.in_(batch))
            rows = session.execute(query).all()
            frames.append(pd.DataFrame(rows, columns=list(query.selected_columns.keys())))
    finally:
        if not isinstance(source, Session):
            session.close()
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame = frame.set_index("id").sort_index()
    created = pd.to_datetime(frame["created_at"], utc=True)
    frame["age_days"] = (pd.Timestamp(now).tz_convert("UTC") - created).dt.total_seconds() / 86_400.0
    frame["has_owner"] = frame["owner_id"].notna()
    frame["budget"] = pd.to_numeric(frame["budget"], errors="coerce")
    return frame


def feature_columns(dictionary: FeatureDictionary, names: Sequence[str] | None = None) -> list[DerivedFeature]:
    """The derived features a lead row can carry (lead and account dimensions), optionally only ``names``."""
    wanted = set(names) if names is not None else None
    return [
        d
        for d in dictionary.derived
        if d.base.dimension in LEAD_ROW_DIMENSIONS and (wanted is None or d.name in wanted)
    ]


def _dense(matrix: FeatureMatrix, features: list[DerivedFeature], rows: np.ndarray) -> np.ndarray:
    """Columns ``features`` of ``matrix`` for row positions ``rows`` (-1 = entity absent), absent -> 0 / NaN."""
    ids = np.array([d.id for d in features], dtype=np.int64)
    cols = np.searchsorted(matrix.feature_ids, ids)
    known = matrix.feature_ids
    present = (cols < len(known)) & (known[np.minimum(cols, max(len(known) - 1, 0))] == ids) if len(known) else cols < 0
    out = np.zeros((len(rows), len(features)), dtype=np.float64)
    stored = np.zeros(out.shape, dtype=bool)
    found = rows >= 0
    if found.any() and present.any():
        sub = matrix.matrix[rows[found]][:, cols[present]].toarray()
        block = np.zeros((int(found.sum()), len(features)))
        block[:, present] = sub
        out[found] = block
        block[:, present] = sub != 0
        stored[found] = block.astype(bool)
    # A sparse zero is "no value"; only counts and sums are really 0 then.
    absent_means_nan = np.array([d.function not in _ZERO_WHEN_ABSENT for d in features])
    out[~stored & absent_means_nan[None, :]] = np.nan
    return out


def _positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted k1 in a matrix's keys (-1 when absent)."""
    if len(keys) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(keys[:, 0], kind="stable")
    sorted_keys = keys[order, 0]
    pos = np.searchsorted(sorted_keys, wanted)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    hit = sorted_keys[pos] == wanted
    return np.where(hit, order[pos], -1)


def feature_frame(
    store: FeatureStore,
    leads: pd.DataFrame,
    *,
    day: date | None = None,
    times: Sequence[datetime] | None = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Feature values for ``leads`` (from :func:`load_leads`): as of the end of ``day``, or point-in-time at ``times``.

    With ``times`` each row reads :meth:`FeatureStore.as_of` (only events before that time's day), which is
    how training sets stay free of the future. Account features come through the lead's account.
    """
    features = feature_columns(store.dictionary, names)
    lead_ids = leads.index.to_numpy(dtype=np.int64)
    account_ids = pd.to_numeric(leads["account_id"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    for dimension, ids in ((Dimension.LEAD, lead_ids), (Dimension.ACCOUNT, account_ids)):
        wanted = [d for d in features if d.base.dimension == dimension]
        if not wanted:
            continue
        keys = np.stack([ids, np.zeros_like(ids)], axis=1)
        if times is not None:
            matrix = store.as_of(dimension, keys, list(times))
            rows = np.where(ids >= 0, np.arange(len(ids)), -1)
        else:
            if day is None:
                raise ValueError("feature_frame needs a day or times")
            valid = sorted({int(i) for i in ids if i >= 0})
            matrix = store.values_at(dimension, day, [(i, 0) for i in valid])
            rows = np.where(ids >= 0, _positions(matrix.keys, ids), -1)
        blocks.append(_dense(matrix, wanted, rows))
        columns.extend(d.name for d in wanted)
    values = np.hstack(blocks) if blocks else np.zeros((len(leads), 0))
    return pd.DataFrame(values, index=leads.index, columns=columns)
