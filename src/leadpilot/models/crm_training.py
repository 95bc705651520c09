"""Training the CRM's own scoring models from its event log: p(transfer) and p(convert), point-in-time correct.

* ``transfer``: leads that entered screening; the example's time is that moment; label 1 when the lead was
  later qualified, 0 when it was lost in screening (leads still in screening are left out).
* ``convert``: leads that were assigned to a salesperson; the time is the assignment; label 1 when the lead
  was won, 0 when lost (open ones are left out). The salesperson at assignment is part of the example:
  the pair's features, whether their declared skills match the lead, and their record up to the day before
  (win rate, follow-up call length, replies per follow-up, follow-ups per open day; overall, on this
  lead's product line and on its company size, :func:`_rep_history`) are columns too.

Features are read with :func:`features.pit.tile_as_of` at the example's time (the snapshot of the day
before: no event at or after the decision), CRM attributes are those known when the lead arrived, and the
split is by time (the newest 20 % of examples are held out), so the reported metrics are honest.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.models import User
from leadpilot.features.dictionary import ALL_BUCKET, DerivedFeature, Dimension, Function
from leadpilot.features.engines.duckdb_engine import connect
from leadpilot.features.pit import tile_as_of
from leadpilot.features.sql import quote
from leadpilot.features.store import FeatureMatrix, FeatureStore, FeatureStoreError
from leadpilot.models.leadframe import LEAD_ATTRIBUTES, load_leads
from leadpilot.models.pipeline import FitResult, fit_model
from leadpilot.models.registry import promote, register
from leadpilot.models.tables import ModelVersion

MODEL_NAMES = ("transfer", "convert")
TARGET = "outcome"
TIME_COLUMN = "decided_at"
# A feature column is kept when at least this share of training rows has a value (the rest is noise).
MIN_COVERAGE = 0.002
Progress = Callable[[str], None]
# Booster settings per model, under any ``params`` given to :func:`train`. For ``convert`` (~50k examples, ~900
# mostly sparse columns on the medium company) shallower trees, a slower rate and half the columns per tree
# gave a held-out AUC of 0.718 against 0.716 with the pipeline's defaults (docs/benchmarks.md, section 7).
MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "convert": {
        "max_depth": 4,
        "learning_rate": 0.03,
        "colsample_bytree": 0.5,
        "min_child_weight": 10,
        "num_boost_round": 1500,
    },
    "transfer": {},
}


class TrainingDataError(ValueError):
    """Too little history to train (no examples, or one outcome only); the message says what is missing."""


_FUNCTION_WORDS = {
    Function.COUNT: "{what}",
    Function.SUM: "total {what}",
    Function.AVG: "average {what}",
    Function.MAX: "largest {what}",
    Function.MIN: "smallest {what}",
    Function.LAST: "latest {what}",
    Function.DISTINCT_COUNT: "distinct {what}",
    Function.DAYS_SINCE: "days since the last of the {what}",
}


def feature_label(d: DerivedFeature) -> str:
    """A derived feature in words: 'calls connected in the last 30d (housing)'."""
    what = _FUNCTION_WORDS[d.function].format(what=d.base.name.replace("_", " "))
    span = " so far" if d.window == "all" else f" in the last {d.window}"
    scope = "" if d.bucket.name == ALL_BUCKET else f" ({d.bucket.name.replace('_', ' ')})"
    return f"{what}{span}{scope}"


ATTRIBUTE_LABELS = {
    "budget": "stated budget",
    "region": "region",
    "source": "lead source",
    "product_line": "product line",
    "industry": "industry",
    "company_size": "company size",
    "age_days": "days since the lead arrived",
    "rep_region_match": "salesperson covers the lead's region",
    "rep_product_match": "salesperson sells the lead's product line",
    "rep_daily_capacity": "salesperson's daily capacity",
    "wait_days": "days the lead waited in the pool",
}
# The salesperson's record before the assignment day (from the event log, see _rep_history): overall, on leads
# of this lead's product line, and on leads of this lead's company size.
_SCOPE_WORDS = {"all": "", "product": " on this product line", "size": " with companies of this size"}
for _scope, _words in _SCOPE_WORDS.items():
    ATTRIBUTE_LABELS |= {
        f"rep_closed_{_scope}": f"deals the salesperson closed{_words}",
        f"rep_win_rate_{_scope}": f"salesperson's win rate{_words}",
        f"rep_followup_seconds_{_scope}": f"salesperson's average follow-up call length{_words}",
        f"rep_reply_rate_{_scope}": f"replies per follow-up call of the salesperson's leads{_words}",
        f"rep_followups_per_day_{_scope}": f"salesperson's follow-up calls per day a lead was open{_words}",
    }
for _scope in ("product", "size"):
    for _what in ("win_rate", "followup_seconds", "reply_rate", "followups_per_day"):
        ATTRIBUTE_LABELS[f"rep_{_what}_{_scope}_vs_all"] = (
            f"{ATTRIBUTE_LABELS[f'rep_{_what}_{_scope}']} compared with their overall"
        )
# The columns _rep_history computes (the rest of the rep_ columns come from the CRM row: _rep_columns).
REP_HISTORY_COLUMNS = tuple(
    c for c in ATTRIBUTE_LABELS if c.startswith(("rep_closed_", "rep_win_rate_", "rep_followup", "rep_reply_rate_"))
)


def _events(store: FeatureStore, where: str) -> pd.DataFrame:
    """Stage changes / assignments from the event lake (the log's Parquet copy, synced by feature runs)."""
    files = store.lake.event_files()
    if not files:
        raise TrainingDataError("the event lake is empty: run `leadpilot features compute` first")
    glob = "[" + ", ".join(quote(str(f)) for f in files) + "]"
    with connect() as con:
        return con.sql(
            "SELECT lead_id, occurred_at, type, json_extract_string(payload, '$.from') AS from_stage, "
            "json_extract_string(payload, '$.to') AS to_value "
            f"FROM read_parquet({glob}) WHERE lead_id IS NOT NULL AND ({where}) ORDER BY occurred_at, id"
        ).df()


def examples(store: FeatureStore, name: str, *, labelled_only: bool = True) -> pd.DataFrame:
    """Examples of model ``name``: lead_id, decided_at (UTC), outcome (0/1; -1 = still open), owner for ``convert``."""
    if name == "transfer":
        ev = _events(store, "type = 'stage_change'")
        start = ev[ev.to_value == "screening"].groupby("lead_id").occurred_at.min()
        qualified = ev[(ev.from_stage == "screening") & (ev.to_value == "qualified")].groupby("lead_id").size()
        lost = ev[(ev.from_stage == "screening") & (ev.to_value == "lost")].groupby("lead_id").size()
        out = pd.DataFrame({TIME_COLUMN: start})
        out[TARGET] = np.where(out.index.isin(qualified.index), 1, np.where(out.index.isin(lost.index), 0, -1))
    elif name == "convert":
        ev = _events(store, "type IN ('stage_change', 'assign')")
        assign = (
            ev[ev.type == "assign"]
            .groupby("lead_id")
            .agg(decided_at=("occurred_at", "min"), owner=("to_value", "first"))
        )
        qualified_at = ev[ev.to_value == "qualified"].groupby("lead_id").occurred_at.min()
        won = ev[ev.to_value == "won"].groupby("lead_id").size()
        lost = ev[(ev.to_value == "lost") & (ev.from_stage != "screening")].groupby("lead_id").size()
        out = assign.rename(columns={"decided_at": TIME_COLUMN})
        out["owner_id"] = pd.to_numeric(out.pop("owner"), errors="coerce")
        out["qualified_at"] = qualified_at.reindex(out.index)
        out[TARGET] = np.where(out.index.isin(won.index), 1, np.where(out.index.isin(lost.index), 0, -1))
        out = out[out.owner_id.notna()]
    else:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODEL_NAMES)}")
    out = out[out[TARGET] >= 0].copy() if labelled_only else out.copy()
    out.index.name = "lead_id"
    out[TIME_COLUMN] = pd.to_datetime(out[TIME_COLUMN], utc=True)
    return out.sort_values(TIME_COLUMN)


FeatureSource = Callable[[Dimension, np.ndarray, list[datetime]], FeatureMatrix]


def _sparse_block(
    store: FeatureStore, source: FeatureSource, dimension: Dimension, keys: np.ndarray, times: list[datetime]
) -> tuple[Any, list[DerivedFeature]]:
    matrix = source(dimension, keys, times)
    by_id = {d.id: d for d in store.dictionary.derived}
    return matrix.matrix.tocsc(), [by_id[int(f)] for f in matrix.feature_ids]


def build_frame(
    engine: Engine,
    store: FeatureStore,
    name: str,
    ex: pd.DataFrame,
    *,
    keep_features: Sequence[str] | None = None,
    source: FeatureSource | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The model's input table for examples ``ex`` (from :func:`examples`, or rows to score), and column labels.

    ``keep_features``: the feature columns to build (a trained model's); otherwise those with a value in at
    least :data:`MIN_COVERAGE` of the rows. ``source`` reads feature rows (default: point-in-time from the
    tiles; the online scorer passes the online store fused with recent events).
    """
    say = progress or (lambda _m: None)

    def from_tiles(dimension: Dimension, keys: np.ndarray, times: list[datetime]) -> FeatureMatrix:
        return tile_as_of(store, dimension, keys, times)

    read = source or from_tiles
    times = [t.to_pydatetime() for t in ex[TIME_COLUMN]]
    lead_ids = ex.index.to_numpy(dtype=np.int64)
    say(f"reading CRM attributes of {len(ex):,} leads")
    leads = load_leads(engine, lead_ids=lead_ids.tolist(), now=datetime.now(UTC)).reindex(lead_ids)
    frame = pd.DataFrame(index=pd.Index(lead_ids, name="lead_id"))
    for column in LEAD_ATTRIBUTES:
        frame[column] = leads[column].to_numpy() if column in leads else np.nan
    created = pd.to_datetime(leads["created_at"], utc=True).dt.tz_localize(None).to_numpy("datetime64[us]")
    decided = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
    frame["age_days"] = ((decided - created) / np.timedelta64(1, "s")).astype(np.float64) / 86_400.0
    blocks: list[tuple[Dimension, np.ndarray]] = [
        (Dimension.LEAD, np.stack([lead_ids, np.zeros_like(lead_ids)], 1)),
        (Dimension.ACCOUNT, np.stack([leads["account_id"].fillna(-1).to_numpy(np.int64), np.zeros_like(lead_ids)], 1)),
    ]
    if name == "convert":
        owners = ex["owner_id"].to_numpy(dtype=np.int64)
        blocks.append((Dimension.LEAD_SALESPERSON, np.stack([lead_ids, owners], 1)))
        # The salesperson's windowed tiles (every product-line bucket × window × function: 1,000+ columns)
        # are replaced by _rep_history, which aligns the record with this lead's product line and size and is
        # one pass over the log; the tiles' point-in-time read of 47k (salesperson, day) rows ran out of
        # DuckDB's memory on the medium company. Models trained with those columns still get them.
        rep_names = {d.name for d in store.dictionary.for_dimension(Dimension.SALESPERSON)}
        if keep_features is not None and rep_names & set(keep_features):
            blocks.insert(2, (Dimension.SALESPERSON, np.stack([owners, np.zeros_like(owners)], 1)))
        frame = frame.join(_rep_columns(engine, ex, leads))
        say(f"salespeople's records before the assignment for {len(ex):,} rows")
        frame = frame.join(_rep_history(store, ex, leads))
    labels = {c: ATTRIBUTE_LABELS.get(c, c) for c in frame.columns}
    wanted = set(keep_features) if keep_features is not None else None
    for dimension, keys in blocks:
        say(f"point-in-time {dimension.value} features for {len(ex):,} rows")
        matrix, features = _sparse_block(store, read, dimension, keys, times)
        coverage = np.diff(matrix.indptr) / max(len(ex), 1)
        cols = [
            i
            for i, d in enumerate(features)
            if (wanted is None and coverage[i] >= MIN_COVERAGE) or (wanted is not None and d.name in wanted)
        ]
        if cols:
            dense = matrix[:, cols].toarray().astype(np.float32)
            block = pd.DataFrame(dense, index=frame.index, columns=[features[i].name for i in cols])
            frame = pd.concat([frame, block], axis=1)
            labels.update({features[i].name: feature_label(features[i]) for i in cols})
    return frame, labels


def _rep_columns(engine: Engine, ex: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """What is known about the salesperson at assignment: skills matching the lead, capacity, pool wait."""
    with Session(engine) as session:
        rows = session.execute(select(User.id, User.regions, User.product_lines, User.daily_capacity)).all()
    regions = {r.id: set(r.regions or []) for r in rows}
    products = {r.id: set(r.product_lines or []) for r in rows}
    capacity = {r.id: r.daily_capacity for r in rows}
    owners = ex["owner_id"].astype(int).tolist()
    out = pd.DataFrame(index=ex.index)
    out["rep_region_match"] = [
        float(region in regions.get(o, set())) for o, region in zip(owners, leads["region"], strict=True)
    ]
    out["rep_product_match"] = [
        float(pl in products.get(o, set())) for o, pl in zip(owners, leads["product_line"], strict=True)
    ]
    out["rep_daily_capacity"] = [float(capacity.get(o, np.nan)) for o in owners]
    waited = (ex[TIME_COLUMN] - pd.to_datetime(ex["qualified_at"], utc=True)).dt.total_seconds() / 86_400.0
    out["wait_days"] = waited.to_numpy()
    return out


_REP_SUMS = ("won", "lost", "fu_attempts", "fu_calls", "fu_seconds", "replies", "closed_attempts", "closed_days")
# The salesperson records' running sums of the last store used, with the lake state they were computed from.
_REP_CACHE: dict[str, tuple[tuple[Any, ...], dict[str, pd.DataFrame]]] = {}
_REP_SCOPES: tuple[tuple[str, list[str]], ...] = (
    ("everyone", []),
    ("all", ["rep"]),
    ("product", ["rep", "product_line"]),
    ("size", ["rep", "company_size"]),
)


def _lake_state(store: FeatureStore) -> tuple[Any, ...]:
    manifest = store.lake.manifest()
    tables = [store.lake.dimension_path(t) for t in ("leads", "accounts")]
    return (
        manifest.get("high_water_mark"),
        tuple(manifest.get("parts", [])),
        *(p.stat().st_mtime_ns if p.exists() else None for p in tables),
    )


def _rep_cumulative(store: FeatureStore) -> dict[str, pd.DataFrame]:
    """Per scope (everyone, salesperson, × product line, × company size) the running sums of
    :func:`_rep_daily_from_lake` by day, sorted by day; cached per store until the lake changes (scoring
    calls build_frame again and again on the same lake: the pass over the whole log runs once per sync).
    """
    state = _lake_state(store)
    cached = _REP_CACHE.get(str(store.root))
    if cached is not None and cached[0] == state:
        return cached[1]
    daily = _rep_daily_from_lake(store)
    out: dict[str, pd.DataFrame] = {}
    for scope, keys in _REP_SCOPES:
        per_day = daily.groupby([*keys, "day"])[list(_REP_SUMS)].sum()
        cumulative = (per_day.groupby(level=keys).cumsum() if keys else per_day.cumsum()).reset_index()
        out[scope] = cumulative.sort_values("day", kind="stable").reset_index(drop=True)
    _REP_CACHE.clear()  # one store at a time: a few MB per million leads
    _REP_CACHE[str(store.root)] = (state, out)
    return out


def _rep_daily_from_lake(store: FeatureStore) -> pd.DataFrame:
    """Per salesperson, lead product line, lead company size and day: their leads' follow-ups, replies and closes.

    Every event of a lead after an ``assign`` counts for the salesperson it was assigned to (the latest
    assignment before the event), so a reassigned lead's history stays with whoever worked it then.
    """
    files = store.lake.event_files()
    if not files:
        raise TrainingDataError("the event lake is empty: run `leadpilot features compute` first")
    glob = "[" + ", ".join(quote(str(f)) for f in files) + "]"
    leads_file, accounts_file = (quote(str(store.lake.dimension_path(t))) for t in ("leads", "accounts"))

    def field(key: str) -> str:
        return f"json_extract_string(e.payload, '$.{key}')"

    sql = f"""
    WITH ev AS (
        SELECT lead_id, occurred_at, type, payload FROM read_parquet({glob})
        WHERE lead_id IS NOT NULL AND type IN ('assign', 'call_attempt', 'call_completed', 'message', 'stage_change')
    ),
    owners AS (
        SELECT lead_id, occurred_at AS since, TRY_CAST(json_extract_string(payload, '$.to') AS BIGINT) AS rep
        FROM ev WHERE type = 'assign'
    ),
    facts AS (
        SELECT e.lead_id, e.occurred_at, o.rep, o.since,
            CAST(e.type = 'call_attempt' AND {field("purpose")} = 'follow_up' AS INTEGER) AS fu_attempts,
            CAST(e.type = 'call_completed' AND {field("purpose")} = 'follow_up' AS INTEGER) AS fu_calls,
            CASE WHEN e.type = 'call_completed' AND {field("purpose")} = 'follow_up'
                 THEN coalesce(TRY_CAST({field("duration_s")} AS DOUBLE), 0) ELSE 0 END AS fu_seconds,
            CAST(e.type = 'message' AND {field("kind")} = 'reply' AS INTEGER) AS replies,
            CAST(e.type = 'stage_change' AND {field("to")} = 'won' AS INTEGER) AS won,
            CAST(e.type = 'stage_change' AND {field("to")} = 'lost' AND {field("from")} <> 'screening' AS INTEGER)
                AS lost
        FROM ev e ASOF JOIN owners o ON e.lead_id = o.lead_id AND e.occurred_at >= o.since
        WHERE e.type <> 'assign' AND o.rep IS NOT NULL
    ),
    closes AS (  -- per closed lead, at its close: follow-up attempts and days from assignment to close
        SELECT lead_id, rep, min(occurred_at) FILTER (WHERE won + lost > 0) AS occurred_at,
            sum(fu_attempts) AS closed_attempts,
            date_diff('second', min(since), min(occurred_at) FILTER (WHERE won + lost > 0)) / 86400.0 AS closed_days
        FROM facts GROUP BY lead_id, rep HAVING min(occurred_at) FILTER (WHERE won + lost > 0) IS NOT NULL
    ),
    rows AS (
        SELECT lead_id, rep, occurred_at, won, lost, fu_attempts, fu_calls, fu_seconds, replies,
            0 AS closed_attempts, 0.0 AS closed_days
        FROM facts WHERE won + lost + fu_attempts + fu_calls + replies > 0
        UNION ALL
        SELECT lead_id, rep, occurred_at, 0, 0, 0, 0, 0.0, 0, closed_attempts, closed_days FROM closes
    )
    SELECT r.rep, coalesce(l.product_line, '') AS product_line, coalesce(a.size, '') AS company_size,
        CAST(r.occurred_at AS DATE) AS day, {", ".join(f"sum(r.{c}) AS {c}" for c in _REP_SUMS)}
    FROM rows r LEFT JOIN read_parquet({leads_file}) l ON l.id = r.lead_id
        LEFT JOIN read_parquet({accounts_file}) a ON a.id = l.account_id
    GROUP BY ALL
    """
    with connect() as con:
        daily = con.sql(sql).df()
    daily["day"] = pd.to_datetime(daily["day"]).astype("datetime64[ns]")
    daily[list(_REP_SUMS)] = daily[list(_REP_SUMS)].astype(np.float64)
    return daily


def _rep_history(store: FeatureStore, ex: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """The assigned salesperson's record up to the day before the decision (point-in-time, events only).

    Overall, on leads of this lead's product line and on leads of its company size: deals closed, win rate,
    average follow-up call length, replies per follow-up call, follow-up calls per open day of closed leads
    (each shrunk towards the wider scope: everyone's for the overall figure, the salesperson's overall for
    the narrower ones), and the narrower figures relative to the salesperson's overall. These carry how well
    a salesperson does with this kind of lead, which the CRM's declared skills only hint at.
    """
    cumulative = _rep_cumulative(store)
    decided = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D").astype("datetime64[ns]")
    query = pd.DataFrame(
        {
            "row": np.arange(len(ex)),
            "rep": ex["owner_id"].astype(np.int64).to_numpy(),
            "product_line": leads["product_line"].fillna("").astype(str).to_numpy(),
            "company_size": leads["company_size"].fillna("").astype(str).to_numpy(),
            "day": decided.to_numpy(),
        }
    ).sort_values("day", kind="stable")
    sums: dict[str, pd.DataFrame] = {}
    for scope, keys in _REP_SCOPES:
        merged = pd.merge_asof(
            query,
            cumulative[scope],
            on="day",
            by=keys or None,
            allow_exact_matches=False,  # up to the day before the decision, as the tiles
        )
        sums[scope] = merged.set_index("row").sort_index()[list(_REP_SUMS)].fillna(0.0)

    def shrunk(num: pd.Series, den: pd.Series, prior: pd.Series, weight: float) -> pd.Series:
        return (num + weight * prior) / (den + weight)

    def ratio(num: pd.Series, den: pd.Series) -> pd.Series:
        return num / den.where(den > 0)

    everyone = sums["everyone"]
    base = {
        "win_rate": ratio(everyone.won, everyone.won + everyone.lost).fillna(0.5),
        "followup_seconds": ratio(everyone.fu_seconds, everyone.fu_calls),
        "reply_rate": ratio(everyone.replies, everyone.fu_attempts),
        "followups_per_day": ratio(everyone.closed_attempts, everyone.closed_days),
    }
    out = pd.DataFrame(index=ex.index)
    overall: dict[str, pd.Series] = {}
    for scope in ("all", "product", "size"):
        s = sums[scope]
        prior = base if scope == "all" else overall
        closed = s.won + s.lost
        values = {
            "win_rate": shrunk(s.won, closed, prior["win_rate"], 10.0),
            "followup_seconds": shrunk(s.fu_seconds, s.fu_calls, prior["followup_seconds"], 20.0),
            "reply_rate": shrunk(s.replies, s.fu_attempts, prior["reply_rate"], 20.0),
            "followups_per_day": shrunk(s.closed_attempts, s.closed_days, prior["followups_per_day"], 30.0),
        }
        if scope == "all":
            overall = values
        out[f"rep_closed_{scope}"] = closed.to_numpy()
        for what, value in values.items():
            out[f"rep_{what}_{scope}"] = value.to_numpy()
            if scope != "all":
                out[f"rep_{what}_{scope}_vs_all"] = np.log(ratio(value, overall[what])).to_numpy()
    return out.replace([np.inf, -np.inf], np.nan)


# The online scorer's salesperson records: (store root, lake state, day) -> records by (rep, product line, size).
_RECORD_TABLES: dict[str, tuple[tuple[Any, ...], datetime, dict[tuple[int, str, str], dict[str, float]]]] = {}


def rep_record(
    store: FeatureStore, *, rep: int, product_line: str | None, company_size: str | None, at: datetime
) -> dict[str, float]:
    """One salesperson's :func:`_rep_history` columns for a lead of this product line and size, decided at ``at``.

    The online scorer calls this per request: the records of every salesperson × product line × company size
    for ``at``'s day are computed together once per lake sync and day (a few thousand rows, one vectorised
    pass) and then looked up; a combination not in that table (a salesperson with no history yet) is
    computed alone and kept.
    """
    day = pd.Timestamp(at).tz_convert("UTC").floor("D").to_pydatetime()
    state = _lake_state(store)
    cached = _RECORD_TABLES.get(str(store.root))
    if cached is None or cached[0] != state or cached[1] != day:
        cumulative = _rep_cumulative(store)
        reps = cumulative["all"]["rep"].unique()
        products = sorted(set(cumulative["product"]["product_line"]) | {""})
        sizes = sorted(set(cumulative["size"]["company_size"]) | {""})
        grid = pd.MultiIndex.from_product([reps, products, sizes], names=["rep", "product_line", "company_size"])
        cached = (state, day, _records_for(store, grid.to_frame(index=False), day))
        _RECORD_TABLES.clear()
        _RECORD_TABLES[str(store.root)] = cached
    key = (int(rep), product_line or "", company_size or "")
    table = cached[2]
    if key not in table:
        one = pd.DataFrame({"rep": [key[0]], "product_line": [key[1]], "company_size": [key[2]]})
        table.update(_records_for(store, one, day))
    return table[key]


def _records_for(
    store: FeatureStore, keys: pd.DataFrame, day: datetime
) -> dict[tuple[int, str, str], dict[str, float]]:
    """:func:`_rep_history` for (rep, product_line, company_size) rows decided at ``day``, by key."""
    ex = pd.DataFrame(
        {TIME_COLUMN: pd.Series([pd.Timestamp(day)] * len(keys), dtype="datetime64[us, UTC]"), "owner_id": keys["rep"]}
    )
    history = _rep_history(store, ex, keys[["product_line", "company_size"]])
    values = history.to_numpy(dtype=np.float64)
    columns = list(history.columns)
    return {
        (int(r), str(p), str(s)): dict(zip(columns, row.tolist(), strict=True))
        for r, p, s, row in zip(keys["rep"], keys["product_line"], keys["company_size"], values, strict=True)
    }


@dataclass
class TrainedModel:
    """A CRM model after training: its registry row and the fit's report."""

    version: ModelVersion
    result: FitResult
    examples: int
    positives: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.version.name,
            "version": self.version.version,
            "status": self.version.status,
            "examples": self.examples,
            "positives": self.positives,
            "metrics": self.version.metrics,
            "baseline_metrics": self.version.baseline_metrics,
            "warnings": self.result.warnings,
        }


def train(
    engine: Engine,
    store: FeatureStore,
    name: str,
    *,
    data_dir: Path,
    actor: Actor = SYSTEM,
    since: datetime | None = None,
    max_rows: int | None = 200_000,
    params: dict[str, Any] | None = None,
    promote_if_first: bool = True,
    progress: Progress | None = None,
) -> TrainedModel:
    """Train model ``name`` on the event log's outcomes and register it (champion when it is the first one)."""
    say = progress or (lambda _m: None)
    if not store.runs():
        raise FeatureStoreError("no features computed yet: run `leadpilot features compute`")
    ex = examples(store, name)
    if since is not None:
        ex = ex[ex[TIME_COLUMN] >= pd.Timestamp(since)]
    if max_rows is not None and len(ex) > max_rows:
        ex = ex.iloc[-max_rows:]  # the newest: closest to the leads the model will score
    positives = int(ex[TARGET].sum())
    if len(ex) < 50 or positives < 10 or positives > len(ex) - 10:
        raise TrainingDataError(
            f"{name}: {len(ex):,} finished examples with {positives:,} positive outcomes; at least 50 examples "
            "with 10 of each outcome are needed (let the CRM record more outcomes, or simulate a company)"
        )
    frame, labels = build_frame(engine, store, name, ex, progress=say)
    frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    frame[TARGET] = ex[TARGET].to_numpy()
    say(f"training {name} on {len(frame):,} examples × {frame.shape[1] - 2:,} columns")
    result = fit_model(
        frame.reset_index(drop=True),
        target=TARGET,
        time_col=TIME_COLUMN,
        params={**MODEL_PARAMS.get(name, {}), **(params or {})},
        feature_labels=labels,
        progress=say,
    )
    with tempfile.TemporaryDirectory(prefix="leadpilot-model-") as tmp:
        out = Path(tmp) / "model"
        result.model.save(out)
        meta = json.loads((out / "meta.json").read_text())
        with Session(engine) as session:
            row = register(session, actor=actor, name=name, source=out, data_dir=data_dir, meta=meta)
            if promote_if_first and not any(
                v.status == "champion" for v in session.scalars(select(ModelVersion).where(ModelVersion.name == name))
            ):
                promote(session, actor=actor, name=name, version=row.version, reason="first model")
            session.commit()
            session.refresh(row)
            session.expunge(row)
    return TrainedModel(row, result, len(ex), positives)
