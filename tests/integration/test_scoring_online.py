"""One lead's online score (fused online features + champion) on a tiny simulated company: the fast one-row
path gives the batch scorer's probability at the same time, and the DataFrame path's when windows slid or
events arrived since the batch."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Lead
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import load_default
from leadpilot.features.online import DatabaseOnlineStore, materialize
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training, registry
from leadpilot.models.crm_training import TARGET, TIME_COLUMN
from leadpilot.models.leadframe import LEAD_ATTRIBUTES
from leadpilot.models.pipeline import fit_model
from leadpilot.models.service import OWNED_OPEN_STAGES, TRANSFER_STAGES, ScoringService, _online_plan
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World
from tests.integration.test_features import add_events

FAST = {"num_boost_round": 20}


ONLINE_COLUMNS = (
    *LEAD_ATTRIBUTES,
    "rep_region_match",
    "rep_product_match",
    "rep_daily_capacity",
    "wait_days",
    *crm_training.REP_HISTORY_COLUMNS,
)


def train_servable(engine: Engine, store: FeatureStore, name: str, *, data_dir: Path, rows: int = 800) -> None:
    """Train and promote ``name`` on the columns the one-row online path builds (CRM attributes, rep
    columns, the salesperson's record and feature-store features)."""
    ex = crm_training.examples(store, name).iloc[-rows:]
    frame, labels = crm_training.build_frame(engine, store, name, ex)
    features = {d.name for d in store.dictionary.derived}
    frame = frame[[c for c in frame.columns if c in ONLINE_COLUMNS or c in features]].copy()
    frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    frame[TARGET] = ex[TARGET].to_numpy()
    fit = fit_model(
        frame.reset_index(drop=True), target=TARGET, time_col=TIME_COLUMN, params=FAST, feature_labels=labels
    )
    out = data_dir / "servable" / name
    fit.model.save(out)
    with Session(engine) as s:
        row = registry.register(s, actor=SYSTEM, name=name, source=out, data_dir=data_dir, meta=fit.model.meta)
        registry.promote(s, actor=SYSTEM, name=name, version=row.version, reason="online test")
        s.commit()


@dataclass
class Company:
    engine: Engine
    store: FeatureStore
    online: DatabaseOnlineStore
    start: datetime  # the end of the batch day: the first time the online store answers for
    open_leads: list[int]


@pytest.fixture(scope="module")
def company(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Company]:
    """A tiny company with features computed for yesterday, materialized, and both models trained."""
    tmp = tmp_path_factory.mktemp("online")
    shutil.copy(sqlite_template, tmp / "leadpilot.db")
    engine = make_engine(f"sqlite:///{tmp / 'leadpilot.db'}")
    data = tmp / "data"
    generate(engine, World("tiny", seed=7), data_dir=data)
    store = FeatureStore(data / "features", load_default())
    batch = datetime.now(UTC).date() - timedelta(days=1)
    store.compute(engine, day=batch)
    online = DatabaseOnlineStore(store.dictionary, engine)
    materialize(store, online)
    for name in crm_training.MODEL_NAMES:
        train_servable(engine, store, name, data_dir=data)
    with Session(engine) as s:
        open_leads = list(s.scalars(select(Lead.id).where(Lead.stage.in_([*TRANSFER_STAGES, *OWNED_OPEN_STAGES]))))
    start = datetime.combine(batch + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    yield Company(engine, store, online, start, sorted(open_leads))
    engine.dispose()


def test_online_score_equals_the_batch_score_when_nothing_happened_since(company: Company) -> None:
    service = ScoringService(company.engine, company.store)
    at = company.start  # no event since the batch, no window slid: the batch's features exactly
    leads = service._open_leads(company.open_leads)
    assert len(leads) > 30
    want: dict[int, tuple[str, float]] = {}
    for name, mask in (
        ("transfer", leads.stage.isin(TRANSFER_STAGES)),
        ("convert", leads.stage.isin(OWNED_OPEN_STAGES) & leads.owner_id.notna()),
    ):
        _, p = service.predict(name, leads[mask], now=at)
        want |= {int(i): (name, float(v)) for i, v in zip(leads[mask].index, p, strict=True)}
    assert {name for name, _ in want.values()} == {"transfer", "convert"}
    for name in crm_training.MODEL_NAMES:  # both models take the one-row path (no DataFrame)
        assert _online_plan(service, name, service.champion_model(name)[1]) is not None
    convert_plan = _online_plan(service, "convert", service.champion_model("convert")[1])
    assert convert_plan is not None and len(convert_plan.rep_record) >= 10  # the salesperson's record, served
    for lead_id, (name, expected) in want.items():
        found = service._online_probability(lead_id, company.online, at)
        assert found is not None
        assert found[0] == name
        assert abs(found[2] - expected) < 1e-9, (lead_id, name, found[2], expected)
    answer = service.online_score(company.open_leads[0], company.online, at=at)
    assert answer["version"] == 1 and answer["score"] == round(want[company.open_leads[0]][1], 6)
    with Session(company.engine) as s:
        closed = s.scalar(select(Lead.id).where(Lead.stage == "lost").limit(1))
    assert closed is not None
    assert service.online_score(closed, company.online, at=at)["score"] is None


def test_fast_path_equals_the_dataframe_path_after_windows_slid_and_events(company: Company) -> None:
    service = ScoringService(company.engine, company.store)
    later = company.start + timedelta(hours=13, minutes=7)  # a day after the batch: tiles left windows
    sample = company.open_leads[:: max(1, len(company.open_leads) // 8)]
    with Session(company.engine) as s:
        stages = {i: stage for i, stage in s.execute(select(Lead.id, Lead.stage).where(Lead.id.in_(sample)))}
    lead = next(i for i in sample if stages[i] in OWNED_OPEN_STAGES)
    add_events(
        company.engine,
        [
            {"type": "page_view", "lead_id": lead, "occurred_at": later - timedelta(hours=2), "payload": {}},
            {"type": "message", "lead_id": lead, "occurred_at": later - timedelta(hours=1), "payload": {}},
        ],
    )
    fresh = set()
    for lead_id in sample:
        found = service._online_probability(lead_id, company.online, later)
        assert found is not None
        name, _, fast = found
        _, model = service.champion_model(name)
        slow = service._online_score_frames(lead_id, name, model, later)
        assert abs(fast - slow) < 1e-9, (lead_id, name, fast, slow)
        fresh.add(lead_id)
    assert lead in fresh
