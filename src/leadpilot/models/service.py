"""The scoring service: serves each model's champion, rescores leads, explains a score, writes score events.

* ``score_transfer`` = p(screening -> qualified), for leads in ``new`` / ``screening``;
* ``score_convert`` = p(won | assigned to its owner), for leads with an owner that are still open;
* ``score`` = the convert score where there is one, else the transfer score (the lead's current chance).

Batch rescoring reads point-in-time features at ``now`` from the tiles (the same code path as training, so
no train/serve skew); one lead's online score reads the online store fused with the events since the
batch (``features.realtime``). Every score that moves by at least :data:`MIN_CHANGE` is saved on the lead
and written as a ``score_changed`` event.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.events import append_events_bulk
from leadpilot.crm.models import Account, Event, Lead, User
from leadpilot.features.dictionary import Dimension
from leadpilot.features.online import OnlineStore
from leadpilot.features.realtime import OnlineFeatures
from leadpilot.features.store import FeatureMatrix, FeatureStore
from leadpilot.models import crm_training
from leadpilot.models.crm_training import TIME_COLUMN
from leadpilot.models.leadframe import LEAD_ATTRIBUTES
from leadpilot.models.pipeline import ScoringModel
from leadpilot.models.registry import champion
from leadpilot.models.tables import ModelStatus, ModelVersion
from leadpilot.models.tabular import ColumnSpec, TabularEncoder

MIN_CHANGE = 0.005
TRANSFER_STAGES = ("new", "screening")
OWNED_OPEN_STAGES = ("assigned", "contacted", "negotiating")
Progress = Callable[[str], None]
# Events that scoring and rules write themselves: they change no feature, so they never call for a rescore.
DERIVED_EVENTS = ("score_changed", "priority_changed", "review_requested", "review_decided")


class NoChampion(LookupError):
    """No model of that name has been promoted yet."""


@dataclass
class RescoreReport:
    """What one rescoring run did."""

    scored: dict[str, int] = field(default_factory=dict)
    changed: int = 0
    models: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class ScoringService:
    """Loads champions (cached per version) and scores, rescores and explains leads."""

    def __init__(self, engine: Engine, store: FeatureStore) -> None:
        self.engine = engine
        self.store = store
        self._models: dict[str, tuple[int, ScoringModel]] = {}
        self._online: OnlineFeatures | None = None

    def champion_model(self, name: str) -> tuple[ModelVersion, ScoringModel]:
        """The serving version of ``name`` and its loaded model (reloaded when the champion changed)."""
        with Session(self.engine) as session:
            row = champion(session, name=name)
            if row is None:
                raise NoChampion(f"no {name} model is promoted yet: run `leadpilot scoring train`")
            session.expunge(row)
        cached = self._models.get(name)
        if cached is None or cached[0] != row.id:
            self._models[name] = (row.id, ScoringModel.load(Path(row.path)))
        return row, self._models[name][1]

    def _frames(
        self, name: str, leads: pd.DataFrame, now: datetime, model: ScoringModel, source: Any = None
    ) -> pd.DataFrame:
        ex = pd.DataFrame(index=leads.index)
        ex[TIME_COLUMN] = pd.Timestamp(now).tz_convert("UTC")
        if name == "convert":
            ex["owner_id"] = leads["owner_id"].astype("int64")
            ex["qualified_at"] = leads["qualified_at"]
        frame, _ = crm_training.build_frame(
            self.engine, self.store, name, ex, keep_features=list(model.input_columns), source=source
        )
        frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_localize(None).to_numpy()
        return frame

    def _open_leads(self, lead_ids: Sequence[int] | None) -> pd.DataFrame:
        stmt = select(Lead.id, Lead.stage, Lead.owner_id, Lead.score, Lead.score_transfer, Lead.score_convert).where(
            Lead.stage.in_([*TRANSFER_STAGES, *OWNED_OPEN_STAGES])
        )
        with Session(self.engine) as session:
            if lead_ids is not None:
                rows: list[Any] = []
                ids = list(lead_ids)
                for i in range(0, len(ids), 20_000):
                    rows += session.execute(stmt.where(Lead.id.in_(ids[i : i + 20_000]))).all()
            else:
                rows = list(session.execute(stmt))
            frame = pd.DataFrame(rows, columns=["id", "stage", "owner_id", "score", "score_transfer", "score_convert"])
            owned = frame[frame.stage.isin(OWNED_OPEN_STAGES) & frame.owner_id.notna()]
            qualified = qualified_times(session, owned.id.tolist())
        frame = frame.set_index("id")
        frame["qualified_at"] = pd.Series(qualified, dtype="datetime64[us, UTC]").reindex(frame.index)
        return frame

    def predict(self, name: str, leads: pd.DataFrame, *, now: datetime) -> tuple[ModelVersion, np.ndarray]:
        """The champion's calibrated probabilities for ``leads`` (index: lead id) at ``now``."""
        row, model = self.champion_model(name)
        if leads.empty:
            return row, np.zeros(0)
        return row, model.predict_proba(self._frames(name, leads, now, model))

    def rescore(
        self,
        *,
        lead_ids: Sequence[int] | None = None,
        now: datetime | None = None,
        actor: Actor = SYSTEM,
        progress: Progress | None = None,
    ) -> RescoreReport:
        """Score open leads (all, or ``lead_ids``) with the champions; save and log the scores that moved."""
        started = datetime.now(UTC)
        now = now or started
        say = progress or (lambda _m: None)
        report = RescoreReport()
        leads = self._open_leads(lead_ids)
        new = leads[["score", "score_transfer", "score_convert"]].astype("float64").copy()
        versions: dict[str, int] = {}
        for name, mask in (
            ("transfer", leads.stage.isin(TRANSFER_STAGES)),
            ("convert", leads.stage.isin(OWNED_OPEN_STAGES) & leads.owner_id.notna()),
        ):
            subset = leads[mask]
            try:
                say(f"scoring {len(subset):,} leads with the {name} champion")
                row, p = self.predict(name, subset, now=now)
            except NoChampion:
                continue
            new.loc[subset.index, f"score_{name}"] = p
            versions[name] = row.version
            report.scored[name] = len(subset)
        report.models = versions
        new["score"] = new["score_convert"].where(leads.stage.isin(OWNED_OPEN_STAGES), new["score_transfer"])
        old = leads[["score", "score_transfer", "score_convert"]].astype("float64")
        moved = ((new - old).abs() >= MIN_CHANGE) | (old.isna() & new.notna())
        scored = new[new[["score_transfer", "score_convert"]].notna().any(axis=1)]
        moved_ids = set(new.index[moved.any(axis=1)])
        report.changed = len(moved_ids)
        if len(scored):
            self._save(scored, moved_ids, old, versions, now, actor)
        report.seconds = (datetime.now(UTC) - started).total_seconds()
        return report

    def _save(
        self,
        scored: pd.DataFrame,
        moved: set[int],
        old: pd.DataFrame,
        versions: dict[str, int],
        now: datetime,
        actor: Actor,
    ) -> None:
        """Save every scored lead's scores and time (so it is not due again); log only the ones that moved."""

        def clean(v: Any) -> float | None:
            return None if v is None or pd.isna(v) else round(float(v), 6)

        params = [
            {
                "lid": int(i),
                "s": clean(r.score),
                "st": clean(r.score_transfer),
                "sc": clean(r.score_convert),
                "at": now,
            }
            for i, r in scored.iterrows()
        ]
        stmt = (
            update(Lead)
            .where(Lead.id == bindparam("lid"))
            .values(
                score=bindparam("s"),
                score_transfer=bindparam("st"),
                score_convert=bindparam("sc"),
                score_updated_at=bindparam("at"),
            )
        )
        events = [
            {
                "type": "score_changed",
                "lead_id": p["lid"],
                "actor_id": actor.id,
                "occurred_at": now,
                "payload": {
                    "score": p["s"],
                    "from": clean(old.at[p["lid"], "score"]),
                    "transfer": p["st"],
                    "convert": p["sc"],
                    "models": {k: f"v{v}" for k, v in versions.items()},
                },
            }
            for p in params
            if p["lid"] in moved
        ]
        with Session(self.engine) as session:
            for i in range(0, len(params), 5_000):
                session.connection().execute(stmt, params[i : i + 5_000])
            append_events_bulk(session, events)
            session.commit()

    def online_score(self, lead_id: int, online: OnlineStore, *, at: datetime | None = None) -> dict[str, Any]:
        """One lead's score now from the online store fused with its events since the batch (no tile scan).

        The fast path builds the model's input row straight from the CRM row and the fused feature values
        (:meth:`OnlineFeatures.vectors`) and scores it with a one-thread copy of the booster; it gives the
        same score as the DataFrame path (``build_frame`` + ``predict_proba``), which stays for models with
        columns the fast path cannot build: columns ``build_frame`` computes from the event lake, and column
        kinds other than numbers, categories and the decision time's parts.
        """
        found = self._online_probability(lead_id, online, at or datetime.now(UTC))
        if found is None:
            return {"lead_id": lead_id, "score": None, "note": "closed or unknown lead"}
        name, version, score = found
        return {"lead_id": lead_id, "model": name, "version": version, "score": round(score, 6)}

    def _online_probability(self, lead_id: int, online: OnlineStore, at: datetime) -> tuple[str, int, float] | None:
        """(model name, champion version, calibrated probability) of an open lead; None if closed or unknown."""
        if self._online is None or self._online.online is not online:
            self._online = OnlineFeatures(self.store, online, self.engine)  # one per store: it caches per day
        lead = self._online_lead(lead_id)
        if lead is None:
            return None
        name = "transfer" if lead["stage"] in TRANSFER_STAGES else "convert"
        champion_id, version = lead["champions"].get(name, (None, None))
        cached = self._models.get(name)
        if champion_id is not None and cached is not None and cached[0] == champion_id:
            model = cached[1]
        else:
            row, model = self.champion_model(name)  # loads a new champion (or raises NoChampion)
            version = row.version
        plan = _online_plan(self, name, model)
        if plan is None or (name == "convert" and lead["owner_id"] is None):
            score = self._online_score_frames(lead_id, name, model, at)
        else:
            vector = self._online_vector(plan, lead, at)
            score = float(model.calibrate(plan.booster.inplace_predict(vector, predict_type="value"))[0])
        return name, int(version), score

    def _online_score_frames(self, lead_id: int, name: str, model: ScoringModel, at: datetime) -> float:
        """The DataFrame path: ``build_frame`` with the fused online features as its source."""
        leads = self._open_leads([lead_id])
        fused = self._online
        assert fused is not None

        def source(dimension: Any, keys: np.ndarray, times: list[datetime]) -> Any:
            wanted = [(int(a), int(b)) for a, b in keys]
            feature_ids = self.store.feature_ids(dimension)
            indptr, cols, data = [0], [], []
            for ids, values in fused.vectors([(dimension, k) for k in wanted], at=at):  # = fused.get's rows
                cols.append(np.searchsorted(feature_ids, ids))
                data.append(values)
                indptr.append(indptr[-1] + len(ids))
            matrix = sparse.csr_matrix(
                (np.concatenate(data), np.concatenate(cols), np.array(indptr)), shape=(len(wanted), len(feature_ids))
            )
            return FeatureMatrix(dimension, np.asarray(wanted, dtype=np.int64).reshape(-1, 2), feature_ids, matrix)

        return float(model.predict_proba(self._frames(name, leads, at, model, source))[0])

    def _online_lead(self, lead_id: int) -> dict[str, Any] | None:
        """The open lead's CRM row (what ``load_leads`` and ``_open_leads`` read), None if closed or unknown."""
        with self.engine.connect() as conn:
            found = conn.execute(_ONLINE_LEAD, {"lead_id": int(lead_id)}).first()
            if found is None or found.stage not in (*TRANSFER_STAGES, *OWNED_OPEN_STAGES):
                return None
            lead = dict(found._mapping)
            lead["champions"] = {r.name: (r.id, r.version) for r in conn.execute(_CHAMPIONS)}
            lead["qualified_at"] = None
            lead["owner"] = None
            if lead["stage"] in OWNED_OPEN_STAGES and lead["owner_id"] is not None:
                lead["qualified_at"] = qualified_times(conn, [int(lead_id)]).get(int(lead_id))
                lead["owner"] = conn.execute(_OWNER, {"user_id": int(lead["owner_id"])}).first()
        return lead

    def _online_vector(self, plan: _OnlinePlan, lead: dict[str, Any], at: datetime) -> np.ndarray:
        """The encoder's float32 row for ``lead`` at ``at``, equal to ``model.transform`` of its frame."""
        lead_id, owner = int(lead["id"]), lead["owner_id"]
        account = int(lead["account_id"]) if lead["account_id"] is not None else -1
        keys = {Dimension.LEAD: (lead_id, 0), Dimension.ACCOUNT: (account, 0)}
        if plan.name == "convert":
            keys |= {Dimension.SALESPERSON: (int(owner), 0), Dimension.LEAD_SALESPERSON: (lead_id, int(owner))}
        fetched = [d for d in keys if d in plan.features]
        assert self._online is not None
        vectors = self._online.vectors([(d, keys[d]) for d in fetched], at=at)
        values = dict(_attributes(lead, at))
        if plan.name == "convert":
            values |= _rep_values(lead, at)
        out = np.zeros(plan.width, dtype=np.float64)
        for dimension, (ids, fetched_values) in zip(fetched, vectors, strict=True):
            positions, feature_ids = plan.features[dimension]
            if not len(ids):
                continue  # build_frame: an absent feature is a sparse 0
            if np.any(ids[1:] < ids[:-1]):
                order = np.argsort(ids, kind="stable")
                ids, fetched_values = ids[order], fetched_values[order]
            at_id = np.minimum(np.searchsorted(ids, feature_ids), len(ids) - 1)
            found = ids[at_id] == feature_ids
            out[positions[found]] = fetched_values[at_id[found]].astype(np.float32)
        for position, column in plan.numeric:
            value = values.get(column)
            out[position] = np.nan if value is None else float(value)
        if plan.rep_record:
            record = crm_training.rep_record(
                self.store,
                rep=int(owner),
                product_line=lead["product_line"],
                company_size=lead["company_size"],
                at=at,
            )
            for position, column in plan.rep_record:
                out[position] = record[column]
        for position, spec in plan.categorical:
            _encode_categorical(plan, out, position, spec, values.get(spec.name))
        decided = at.astimezone(UTC)  # the frame's time column: ``at`` as naive UTC
        for position, part in plan.time_parts:
            if part == "month":
                out[position] = decided.month
            elif part == "dow":
                out[position] = decided.weekday()
            else:
                out[position] = decided.hour + decided.minute / 60
        out[np.isinf(out)] = np.nan
        return out.astype(np.float32).reshape(1, -1)

    def changed_leads(self, since: datetime | None = None) -> list[int]:
        """Open leads with an event after their last scoring (or since ``since``): the ones to rescore now."""
        last_event = (
            select(Event.lead_id, func.max(Event.occurred_at).label("at"))
            .where(
                Event.lead_id.is_not(None),
                Event.type.not_in(DERIVED_EVENTS),
                Event.occurred_at <= datetime.now(UTC),  # the future (scheduled, clock skew) is not news yet
            )
            .group_by(Event.lead_id)
        )
        if since is not None:
            last_event = last_event.where(Event.occurred_at >= since)
        sub = last_event.subquery()
        stmt = (
            select(Lead.id)
            .join(sub, sub.c.lead_id == Lead.id)
            .where(
                Lead.stage.in_(TRANSFER_STAGES) | (Lead.stage.in_(OWNED_OPEN_STAGES) & Lead.owner_id.is_not(None)),
                (Lead.score_updated_at.is_(None)) | (sub.c.at > Lead.score_updated_at),
            )
        )
        with Session(self.engine) as session:
            return [int(i) for i in session.scalars(stmt)]

    def explain(self, lead_id: int, *, now: datetime | None = None, top: int = 3) -> dict[str, Any]:
        """The lead's scores now with the factors that raise and lower each, in words."""
        now = now or datetime.now(UTC)
        leads = self._open_leads([lead_id])
        out: dict[str, Any] = {"lead_id": lead_id, "at": now.isoformat(), "models": {}}
        if leads.empty:
            out["note"] = "the lead is closed (won or lost) or does not exist: nothing to score"
            return out
        stage = leads.stage.iloc[0]
        names = ["transfer"] if stage in TRANSFER_STAGES else ["convert"]
        for name in names:
            try:
                row, model = self.champion_model(name)
            except NoChampion as exc:
                out["models"][name] = {"error": str(exc)}
                continue
            frame = self._frames(name, leads, now, model)
            explanation = model.explain(frame, top=top)[0]
            out["models"][name] = {
                "version": row.version,
                "score": round(explanation.score, 4),
                "up": [_factor_json(f) for f in explanation.up],
                "down": [_factor_json(f) for f in explanation.down],
            }
        first = out["models"].get(names[0], {})
        out["score"] = first.get("score")
        return out


def _factor_json(factor: Any) -> dict[str, Any]:
    return {
        "column": factor.column,
        "value": factor.value,
        "contribution": round(float(factor.contribution), 4),
        "text": factor.text,
    }


def qualified_times(session: Session | Any, lead_ids: list[int]) -> dict[int, datetime]:
    """When each lead was qualified (its latest stage change to ``qualified``); a session or a connection."""
    out: dict[int, datetime] = {}
    for i in range(0, len(lead_ids), 20_000):
        rows = session.execute(
            select(Event.lead_id, Event.occurred_at, Event.payload).where(
                Event.type == "stage_change", Event.lead_id.in_(lead_ids[i : i + 20_000])
            )
        )
        for lead_id, at, payload in rows:
            if (payload or {}).get("to") == "qualified" and (lead_id not in out or at > out[lead_id]):
                out[lead_id] = at
    return out


# --------------------------------------------------------------------------------------- online fast path

_ONLINE_LEAD = (
    select(
        Lead.id,
        Lead.stage,
        Lead.owner_id,
        Lead.account_id,
        Lead.created_at,
        Lead.budget,
        Lead.region,
        Lead.source,
        Lead.product_line,
        Account.industry,
        Account.size.label("company_size"),
    )
    .outerjoin(Account, Account.id == Lead.account_id)
    .where(Lead.id == bindparam("lead_id"))
)
_CHAMPIONS = select(ModelVersion.name, ModelVersion.id, ModelVersion.version).where(
    ModelVersion.status == ModelStatus.CHAMPION.value
)
_OWNER = select(User.regions, User.product_lines, User.daily_capacity).where(User.id == bindparam("user_id"))
_REP_COLUMNS = ("rep_region_match", "rep_product_match", "rep_daily_capacity", "wait_days")
_NUMERIC_CRM_COLUMNS = frozenset({"budget", "age_days", *_REP_COLUMNS})  # numbers in build_frame's frame


@dataclass
class _OnlinePlan:
    """Where each input column of a model comes from and where it goes in the encoder's row."""

    name: str
    width: int
    booster: Any  # a one-thread copy: one row needs no thread pool (whose wake-ups cost ms on a busy machine)
    features: dict[Dimension, tuple[np.ndarray, np.ndarray]]  # dimension -> (positions, feature ids)
    numeric: list[tuple[int, str]]  # (position, CRM column)
    categorical: list[tuple[int, ColumnSpec]]
    time_parts: list[tuple[int, str]]  # (position, part) of the decision time column (month, dow, hour)
    rep_record: list[tuple[int, str]] = field(default_factory=list)  # (position, crm_training.rep_record column)
    encoded: dict[tuple[int, Any], np.ndarray] = field(default_factory=dict)  # (position, value) -> encoder's row


_PLANS: weakref.WeakKeyDictionary[ScoringModel, tuple[str, int, _OnlinePlan | None]] = weakref.WeakKeyDictionary()


def _online_plan(service: ScoringService, name: str, model: ScoringModel) -> _OnlinePlan | None:
    """The model's plan (cached per loaded model); None when a column needs the DataFrame path."""
    cached = _PLANS.get(model)
    if cached is not None and cached[0] == name and cached[1] == id(service.store.dictionary):
        return cached[2]
    plan = _make_plan(service.store, name, model)
    _PLANS[model] = (name, id(service.store.dictionary), plan)
    return plan


def _make_plan(store: FeatureStore, name: str, model: ScoringModel) -> _OnlinePlan | None:
    plan, blockers = _plan_and_blockers(store, name, model)
    return plan if not blockers else None


def _plan_and_blockers(store: FeatureStore, name: str, model: ScoringModel) -> tuple[_OnlinePlan | None, list[str]]:
    """The one-row plan, and the input columns it cannot build (then the DataFrame path scores the lead)."""
    blockers: list[str] = []
    dimensions = [Dimension.LEAD, Dimension.ACCOUNT]
    if name == "convert":
        dimensions += [Dimension.SALESPERSON, Dimension.LEAD_SALESPERSON]
    by_name: dict[str, tuple[Dimension, int]] = {}
    for d in store.dictionary.derived:
        if d.base.dimension in dimensions:
            if d.name in by_name:  # the same name in two blocks: build_frame would hold both columns
                blockers.append(d.name)
            by_name[d.name] = (d.base.dimension, d.id)
    crm_columns = set(LEAD_ATTRIBUTES) | (set(_REP_COLUMNS) if name == "convert" else set())
    features: dict[Dimension, list[tuple[int, int]]] = {}
    numeric: list[tuple[int, str]] = []
    categorical: list[tuple[int, ColumnSpec]] = []
    time_parts: list[tuple[int, str]] = []
    rep_record: list[tuple[int, str]] = []
    record_columns = set(crm_training.REP_HISTORY_COLUMNS) if name == "convert" else set()
    for spec, positions in model.encoder.groups():
        position = int(positions[0])
        if spec.name in crm_columns and spec.name in by_name:
            blockers.append(spec.name)
        elif spec.kind == "numeric" and spec.name in by_name:
            dimension, feature_id = by_name[spec.name]
            features.setdefault(dimension, []).append((position, feature_id))
        elif spec.kind == "numeric" and spec.name in crm_columns and spec.name in _NUMERIC_CRM_COLUMNS:
            numeric.append((position, spec.name))
        elif spec.kind == "numeric" and spec.name in record_columns and spec.name not in by_name:
            rep_record.append((position, spec.name))
        elif spec.kind == "categorical" and spec.name in crm_columns and spec.name not in _NUMERIC_CRM_COLUMNS:
            categorical.append((position, spec))
        elif spec.kind == "datetime" and spec.name == TIME_COLUMN and set(spec.parts) <= {"month", "dow", "hour"}:
            time_parts += [(position + i, part) for i, part in enumerate(spec.parts)]
        else:
            blockers.append(spec.name)  # e.g. a column build_frame computes from the event lake
    if blockers:
        return None, blockers
    booster = model.booster.copy()
    booster.set_param({"nthread": 1})
    plan = _OnlinePlan(
        name,
        len(model.feature_names),
        booster,
        {
            d: (np.array([p for p, _ in c], np.int64), np.array([f for _, f in c], np.int64))
            for d, c in features.items()
        },
        numeric,
        categorical,
        time_parts,
        rep_record,
    )
    return plan, []


def _utc_naive_us(t: datetime) -> np.datetime64:
    """A timestamp as naive UTC microseconds (naive ones are UTC, as pandas reads them with utc=True)."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(t, "us")


def _attributes(lead: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The CRM columns of ``build_frame`` for one lead (budget as a number, age in days at ``at``)."""
    budget = lead["budget"]
    try:
        budget = float(budget) if budget is not None else None
    except (TypeError, ValueError):
        budget = None
    age = (_utc_naive_us(at) - _utc_naive_us(lead["created_at"])) / np.timedelta64(1, "s")
    return {
        "budget": budget,
        "region": lead["region"],
        "source": lead["source"],
        "product_line": lead["product_line"],
        "industry": lead["industry"],
        "company_size": lead["company_size"],
        "age_days": float(np.float64(age) / 86_400.0),
    }


def _rep_values(lead: dict[str, Any], at: datetime) -> dict[str, Any]:
    """``crm_training._rep_columns`` for one lead and its owner."""
    owner = lead["owner"]
    regions = set(owner.regions or []) if owner is not None else set()
    products = set(owner.product_lines or []) if owner is not None else set()
    capacity = owner.daily_capacity if owner is not None else None
    qualified = lead["qualified_at"]
    wait = None
    if qualified is not None:
        wait = float(np.float64((_utc_naive_us(at) - _utc_naive_us(qualified)) / np.timedelta64(1, "s")) / 86_400.0)
    return {
        "rep_region_match": float(lead["region"] in regions),
        "rep_product_match": float(lead["product_line"] in products),
        "rep_daily_capacity": np.nan if capacity is None else float(capacity),
        "wait_days": wait,
    }


_MAX_ENCODED = 50_000  # cached category encodings per plan (CRM categories are few; a bound all the same)


def _encode_categorical(plan: _OnlinePlan, out: np.ndarray, position: int, spec: ColumnSpec, value: Any) -> None:
    """The encoder's own categorical encoding of one value, written into the row at ``position``.

    Cached per plan and value: the encoder's pandas code costs about 1 ms per call, the lookup microseconds.
    """
    key = (position, value if value is None or isinstance(value, str) else repr(value))
    row = plan.encoded.get(key)
    if row is None:
        row = TabularEncoder._categorical(spec, pd.Series([value], dtype=object))[0]
        if len(plan.encoded) < _MAX_ENCODED:
            plan.encoded[key] = row
    out[position : position + len(row)] = row
