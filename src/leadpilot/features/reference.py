"""A straightforward pandas implementation of the dictionary: the engines' correctness oracle and the
benchmark baseline.  It recomputes every window from raw events for one day (no tiles, no incrementality).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from leadpilot.expressions import to_pandas
from leadpilot.features.dictionary import (
    FUNCTION_CODES,
    TABLE_DIMENSION,
    WINDOWS,
    EventSource,
    FeatureDictionary,
    Function,
    TableSource,
)
from leadpilot.features.sql import _KEYS, DIMENSION_CODES

_EVENT_COLUMNS = {n: n for n in ("type", "lead_id", "actor_id", "product_line", "region", "lead_source")}


def reference_values(
    dictionary: FeatureDictionary,
    *,
    event_files: list[str],
    table_files: dict[str, str],
    day: date,
    at: datetime | None = None,
) -> Any:
    """Long DataFrame (dim, k1, k2, feature_id, value) of every non-zero feature as of the end of ``day``.

    With ``at`` (a UTC instant on ``day`` or at the next midnight): as of that instant instead: events
    before ``at``, windows still by whole days (window 7d = ``day`` and the 6 days before), DAYS_SINCE up to
    ``at``.  DAYS_SINCE is in days here (the engines carry anchors).
    """
    import pandas as pd

    end = pd.Timestamp(datetime.combine(day + timedelta(days=1), datetime.min.time()))
    cutoff = pd.Timestamp(at.astimezone(UTC).replace(tzinfo=None)) if at is not None else end
    events = pd.concat([pq.read_table(f).to_pandas() for f in event_files], ignore_index=True) if event_files else None
    frames = []
    if events is not None and len(events):
        events = events[events["occurred_at"] < cutoff]
        leads = pq.read_table(table_files["leads"]).to_pandas()
        leads = leads.rename(columns={"id": "lead_id", "source": "lead_source"})
        events = events.merge(
            leads[["lead_id", "product_line", "region", "lead_source", "account_id"]], on="lead_id", how="left"
        )
        keys: set[str] = set()
        for base in dictionary.base_features:
            if isinstance(base.source, EventSource):
                for expr in (base.source.filter, base.source.value, base.source.distinct):
                    if expr is not None:
                        keys |= expr.payload_keys
        parsed = [json.loads(p) if isinstance(p, str) else {} for p in events["payload"]]
        for key in sorted(keys):
            events["payload." + key] = pd.Series([p.get(key) for p in parsed], index=events.index, dtype=object)
        codes = dictionary.bucket_names()
        events["pl_code"] = events["product_line"].map(codes)
        for base in dictionary.base_features:
            if isinstance(base.source, EventSource):
                frames.append(_event_feature(base, events, end, cutoff, pd))
    for base in dictionary.base_features:
        if isinstance(base.source, TableSource):
            frames.append(_table_feature(base, base.source, table_files, cutoff, pd))
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame({"dim": [], "k1": [], "k2": [], "feature_id": [], "value": []})
    out = pd.concat(frames, ignore_index=True)
    out = out[out["value"].notna() & (out["value"] != 0)]
    return out.sort_values(["dim", "k1", "k2", "feature_id"], ignore_index=True)


def _event_feature(base: Any, events: Any, end: Any, cutoff: Any, pd: Any) -> Any:
    source: EventSource = base.source
    k1, k2 = _KEYS[base.dimension]
    mask = events["type"].isin(source.events) & events[k1].notna()
    if k2:
        mask &= events[k2].notna()
    if source.filter is not None:
        mask &= to_pandas(source.filter, events, _EVENT_COLUMNS).fillna(False).astype(bool)
    rows = events[mask]
    if not len(rows):
        return None
    sub = pd.DataFrame(
        {
            "k1": rows[k1].astype(np.int64),
            "k2": rows[k2].astype(np.int64) if k2 else np.zeros(len(rows), dtype=np.int64),
            "at": rows["occurred_at"],
            "id": rows["id"],
            "v": to_pandas(source.value, rows, _EVENT_COLUMNS).astype("Float64") if source.value else 1.0,
        }
    )
    if source.distinct is not None:
        sub["d"] = to_pandas(source.distinct, rows, _EVENT_COLUMNS).astype("string")
    parts = [sub.assign(bucket=0)]
    if base.by_product_line:
        with_pl = rows["pl_code"].notna()
        parts.append(sub[with_pl.to_numpy()].assign(bucket=rows.loc[with_pl, "pl_code"].astype(int).to_numpy()))
    data = pd.concat(parts, ignore_index=True).sort_values(["at", "id"])
    out = []
    for window in base.windows:
        days = WINDOWS[window][1]
        w = data if days is None else data[data["at"] >= end - pd.Timedelta(days=days)]
        if not len(w):
            continue
        grouped = w.groupby(["k1", "k2", "bucket"], sort=False)
        results: dict[Function, Any] = {}
        for function in base.functions:
            if function is Function.COUNT:
                results[function] = grouped.size().astype(float)
            elif function is Function.SUM:
                results[function] = grouped["v"].sum(min_count=1)
            elif function is Function.AVG:
                results[function] = grouped["v"].sum(min_count=1) / grouped.size()
            elif function is Function.MIN:
                results[function] = grouped["v"].min()
            elif function is Function.MAX:
                results[function] = grouped["v"].max()
            elif function is Function.LAST:
                # The value of the latest row (by time, then id) that has a value.
                results[function] = (
                    w[w["v"].notna()]
                    .drop_duplicates(["k1", "k2", "bucket"], keep="last")
                    .set_index(["k1", "k2", "bucket"])["v"]
                )
            elif function is Function.DAYS_SINCE:
                results[function] = (cutoff - grouped["at"].max()).dt.total_seconds() / 86400.0
            elif function is Function.DISTINCT_COUNT:
                results[function] = grouped["d"].nunique().astype(float)
        for function, series in results.items():
            series = series.astype("Float64").rename("value").reset_index()
            series["feature_id"] = (
                base.id * 10_000 + series["bucket"] * 100 + FUNCTION_CODES[function] * 10 + WINDOWS[window][0]
            )
            series["dim"] = DIMENSION_CODES[base.dimension]
            out.append(series[["dim", "k1", "k2", "feature_id", "value"]])
    if not out:
        return None
    frame = pd.concat(out, ignore_index=True)
    frame["value"] = frame["value"].astype(float)
    return frame


def _table_feature(base: Any, source: TableSource, table_files: dict[str, str], end: Any, pd: Any) -> Any:
    table = pq.read_table(table_files[source.table]).to_pandas()
    table = table[table["created_at"] < end]
    if not len(table):
        return None
    value = to_pandas(source.value, table, {c: c for c in source.value.names})
    frame = pd.DataFrame(
        {
            "dim": DIMENSION_CODES[TABLE_DIMENSION[source.table]],
            "k1": table["id"].astype(np.int64),
            "k2": 0,
            "feature_id": base.id * 10_000 + FUNCTION_CODES[Function.LAST] * 10 + WINDOWS["all"][0],
            "value": value.astype("Float64").astype(float),
        }
    )
    return frame
