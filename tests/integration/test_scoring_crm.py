"""The CRM's scoring models end to end on a tiny simulated company: point-in-time training sets, the registry,
rescoring with events, explanations, retraining with a champion/challenger decision, drift and the API."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.auth.security import create_access_token
from leadpilot.config import Settings
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Event, Lead, User
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import Dimension, load_default
from leadpilot.features.pit import tile_as_of
from leadpilot.features.store import FeatureStore, FeatureStoreError
from leadpilot.models import crm_training, lifecycle, registry
from leadpilot.models.crm_training import TARGET, TIME_COLUMN, TrainingDataError
from leadpilot.models.service import ScoringService
from leadpilot.models.tables import ModelVersion
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World
from tests.integration.test_features import DAYS, START, TODAY, _days, add_events, seed_crm

FAST = {"num_boost_round": 40}


# --- point-in-time rows from tiles ------------------------------------------------------------------------


def test_tile_as_of_equals_the_history_on_every_dimension(sqlite_engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(sqlite_engine, n_events=700)
    store = FeatureStore(tmp_path / "features", load_default())
    rng = random.Random(3)
    request_days = sorted({rng.randint(2, DAYS) for _ in range(6)})
    for offset in request_days:
        store.compute(sqlite_engine, day=_days(offset - 1, 0)[0], today=TODAY)
    keys_by_dim = {
        Dimension.LEAD: [(lead, 0) for lead in ids["leads"]],
        Dimension.SALESPERSON: [(user, 0) for user in ids["users"]],
        Dimension.LEAD_SALESPERSON: [(lead, user) for lead in ids["leads"][:8] for user in ids["users"]],
    }
    for dimension, keys in keys_by_dim.items():
        requests = [
            (rng.choice(keys), START + timedelta(days=rng.choice(request_days), seconds=rng.randint(0, 86_399)))
            for _ in range(60)
        ]
        history = store.as_of(dimension, [k for k, _ in requests], [t for _, t in requests])
        tiles = tile_as_of(store, dimension, [k for k, _ in requests], [t for _, t in requests])
        assert history.matrix.nnz > 0
        assert abs(history.matrix - tiles.matrix).max() < 1e-9, dimension
        batched = tile_as_of(store, dimension, [k for k, _ in requests], [t for _, t in requests], batch_rows=7)
        assert abs(batched.matrix - tiles.matrix).max() == 0
    # Events at or after t never reach the row of time t.
    lead, t = ids["leads"][0], START + timedelta(days=request_days[-1], hours=10)
    before = tile_as_of(store, Dimension.LEAD, [(lead, 0)], [t])
    add_events(sqlite_engine, [{"type": "page_view", "lead_id": lead, "occurred_at": t, "payload": {}}])
    store.compute(sqlite_engine, day=t.date(), today=TODAY)
    after = tile_as_of(store, Dimension.LEAD, [(lead, 0)], [t])
    assert abs(after.matrix - before.matrix).max() == 0
    with pytest.raises(FeatureStoreError, match="naive"):
        tile_as_of(store, Dimension.LEAD, [(lead, 0)], [t.replace(tzinfo=None)])


def test_psi_is_zero_for_the_same_population_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    assert lifecycle.psi(reference, rng.normal(size=20_000)) < 0.01
    assert lifecycle.psi(reference, rng.normal(1.0, 1.0, size=20_000)) > lifecycle.PSI_RETRAIN
    with_missing = np.where(rng.random(20_000) < 0.5, np.nan, rng.normal(size=20_000))
    assert lifecycle.psi(reference, with_missing) > lifecycle.PSI_RETRAIN  # missing values are a bin of their own


# --- a tiny simulated company --------------------------------------------------------------------------------


@dataclass
class Company:
    engine: Engine
    settings: Settings
    store: FeatureStore


@pytest.fixture(scope="module")
def company(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Company]:
    """3,000 simulated leads over 18 months with their features; built once for this module."""
    tmp = tmp_path_factory.mktemp("scoring")
    shutil.copy(sqlite_template, tmp / "leadpilot.db")
    url = f"sqlite:///{tmp / 'leadpilot.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    settings = Settings(environment="test", data_dir=tmp / "data", secret_key="test-secret-key-" + "x" * 32)
    generate(engine, World("tiny", seed=11), data_dir=settings.data_dir)
    store = FeatureStore(settings.feature_dir, load_default())
    store.compute(engine)
    yield Company(engine, settings, store)
    engine.dispose()


def _stage_outcomes(engine: Engine) -> dict[int, str]:
    with Session(engine) as s:
        return {lead_id: stage for lead_id, stage in s.execute(select(Lead.id, Lead.stage))}


def test_examples_are_labelled_from_the_event_log(company: Company) -> None:
    transfer = crm_training.examples(company.store, "transfer")
    convert = crm_training.examples(company.store, "convert")
    stages = _stage_outcomes(company.engine)
    assert len(transfer) > 1_000 and 0 < transfer[TARGET].mean() < 1
    # A qualified lead has moved past screening; a negative one was lost in screening.
    for lead_id, row in transfer.sample(200, random_state=1).iterrows():
        if row[TARGET] == 0:
            assert stages[lead_id] == "lost"
        else:
            assert stages[lead_id] not in ("new", "screening")
    for lead_id, row in convert.iterrows():
        assert stages[lead_id] == ("won" if row[TARGET] == 1 else "lost")
    assert transfer[TIME_COLUMN].is_monotonic_increasing
    everything = crm_training.examples(company.store, "convert", labelled_only=False)
    assert len(everything) > len(convert) and set(everything[TARGET]) == {-1, 0, 1}


def test_training_rows_never_see_the_decision_day(company: Company) -> None:
    ex = crm_training.examples(company.store, "transfer").iloc[:300]
    frame, labels = crm_training.build_frame(company.engine, company.store, "transfer", ex)
    assert labels["budget"] == "stated budget"
    assert any(text.startswith("page views") for text in labels.values())
    # The decision is the first screening call: the row may not see it (nor anything of its day), so the
    # call features are empty for every row - empty enough that the coverage filter drops them.
    calls = ["call_attempts__all__count__30d", "calls_connected__all__count__30d", "call_attempts__all__count__365d"]
    assert not set(calls) & set(frame.columns)
    forced, _ = crm_training.build_frame(company.engine, company.store, "transfer", ex, keep_features=calls)
    assert set(calls) <= set(forced.columns)
    assert float(forced[calls].to_numpy().sum()) == 0.0
    assert (frame["age_days"] >= 0).all()


def test_train_registers_versions_with_baselines_and_the_first_is_champion(company: Company) -> None:
    first = crm_training.train(
        company.engine, company.store, "transfer", data_dir=company.settings.data_dir, params=FAST
    )
    assert first.version.status == "champion" and first.version.version == 1
    metrics = first.version.metrics
    assert metrics["auc"] > 0.55, metrics
    assert set(first.version.baseline_metrics) == {"naive_bayes", "logistic_regression"}
    for key in ("auc", "pr_auc", "log_loss", "brier", "lift", "gain"):
        assert key in metrics
    assert Path(first.version.path, "calibration.png").stat().st_size > 1_000
    second = crm_training.train(
        company.engine, company.store, "convert", data_dir=company.settings.data_dir, params=FAST
    )
    assert second.version.status == "champion"
    with Session(company.engine) as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.type == "model_promoted")) == 2
        rows = {(r.name, r.version): r.status for r in registry.list_versions(s)}
    assert rows == {("transfer", 1): "champion", ("convert", 1): "champion"}


def test_rescore_saves_scores_writes_events_and_is_idempotent(company: Company) -> None:
    service = ScoringService(company.engine, company.store)
    report = service.rescore()
    assert report.scored["transfer"] > 0 and report.scored["convert"] > 0
    assert report.changed == report.scored["transfer"] + report.scored["convert"]
    with Session(company.engine) as s:
        events = s.scalar(select(func.count()).select_from(Event).where(Event.type == "score_changed"))
        scored = s.execute(
            select(Lead.stage, Lead.score, Lead.score_transfer, Lead.score_convert).where(Lead.score.is_not(None))
        ).all()
    assert events == report.changed
    for stage, score, transfer, convert in scored:
        assert 0 <= score <= 1
        assert score == (convert if stage in ("assigned", "contacted", "negotiating") else transfer)
    again = service.rescore(now=datetime.now(UTC) + timedelta(seconds=1))
    assert again.changed == 0
    assert service.changed_leads() == []


def test_a_new_event_makes_its_lead_due_for_rescoring(company: Company) -> None:
    service = ScoringService(company.engine, company.store)
    with Session(company.engine) as s:
        lead_id = s.scalar(select(Lead.id).where(Lead.stage == "negotiating").limit(1))
    assert lead_id is not None
    add_events(company.engine, [{"type": "note", "lead_id": lead_id, "payload": {"text": "called back"}}])
    assert service.changed_leads() == [lead_id]
    service.rescore(lead_ids=[lead_id])
    assert service.changed_leads() == []


def test_explain_gives_factors_in_words(company: Company) -> None:
    service = ScoringService(company.engine, company.store)
    with Session(company.engine) as s:
        lead_id = s.scalar(select(Lead.id).where(Lead.stage == "negotiating").limit(1))
    assert lead_id is not None
    data = service.explain(lead_id)
    convert = data["models"]["convert"]
    assert 0 <= convert["score"] <= 1 and data["score"] == convert["score"]
    factors = convert["up"] + convert["down"]
    assert factors and all(f["text"] and ("raises" in f["text"] or "lowers" in f["text"]) for f in factors)
    assert all(f["contribution"] > 0 for f in convert["up"]) and all(f["contribution"] < 0 for f in convert["down"])


def test_promote_and_roll_back(company: Company) -> None:
    crm_training.train(company.engine, company.store, "convert", data_dir=company.settings.data_dir, params=FAST)
    with Session(company.engine) as s:
        assert registry.champion(s, name="convert").version == 1  # a new version does not serve by itself
        registry.promote(s, actor=SYSTEM, name="convert", version=2)
        s.commit()
        assert registry.champion(s, name="convert").version == 2
        registry.rollback(s, actor=SYSTEM, name="convert")
        s.commit()
        assert registry.champion(s, name="convert").version == 1
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.status == "champion")) == 2


def test_retrain_promotes_only_a_challenger_that_wins(company: Company) -> None:
    weak = {"num_boost_round": 1, "max_depth": 1}
    with Session(company.engine) as s:
        for row in registry.list_versions(s, name="transfer"):
            s.delete(row)
        s.commit()
    crm_training.train(company.engine, company.store, "transfer", data_dir=company.settings.data_dir, params=weak)
    won = lifecycle.retrain(company.engine, company.store, "transfer", data_dir=company.settings.data_dir, params=FAST)
    assert won["promoted"], won
    assert won["challenger_metrics"]["auc"] > won["champion_metrics"]["auc"]
    lost = lifecycle.retrain(company.engine, company.store, "transfer", data_dir=company.settings.data_dir, params=weak)
    assert not lost["promoted"], lost
    with Session(company.engine) as s:
        statuses = {r.version: r.status for r in registry.list_versions(s, name="transfer")}
    assert statuses[won["challenger"]] == "champion" and statuses[lost["challenger"]] == "challenger"


def test_drift_report(company: Company) -> None:
    report = lifecycle.drift_report(company.engine, company.store, "transfer", recent_days=60)
    assert report["verdict"] in {"stable", "watch", "retrain"}
    assert report["current"]["n"] > 0 and report["reference"]["n"] > report["current"]["n"]
    assert TIME_COLUMN not in {f["column"] for f in report["features"]}
    assert all(f["psi"] >= 0 for f in report["features"]) and report["score_psi"] >= 0


def test_too_little_history_is_a_clear_error(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine, n_events=200)
    store = FeatureStore(tmp_path / "features", load_default())
    store.compute(sqlite_engine, today=TODAY)
    with pytest.raises(TrainingDataError, match="at least 50 examples"):
        crm_training.train(sqlite_engine, store, "transfer", data_dir=tmp_path / "data")
    with Session(sqlite_engine) as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0  # nothing half-registered


def test_the_api_returns_a_leads_score_with_its_explanation(company: Company) -> None:
    with Session(company.engine) as s:
        lead_id = s.scalar(select(Lead.id).where(Lead.stage == "negotiating").limit(1))
        admin = s.scalar(select(User).where(User.role == "admin").limit(1))
        assert admin is not None
        token = create_access_token(admin, secret=company.settings.resolved_secret_key(), minutes=5)
    with TestClient(create_app(company.settings, engine=company.engine)) as client:
        response = client.get(f"/api/v1/leads/{lead_id}/score", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["stored"]["score"] is not None
        assert data["models"]["convert"]["up"] or data["models"]["convert"]["down"]
        models = client.get("/api/v1/scoring/models", headers={"Authorization": f"Bearer {token}"}).json()
        assert {m["name"] for m in models} == {"transfer", "convert"}
        json.dumps(models)  # plain JSON all the way down


# --- distribution on the same company (the convert champion ranks the pool) --------------------------------


def test_distribution_ranks_each_salespersons_pool_and_assigns_under_capacity(company: Company) -> None:
    from leadpilot.crm import leads as lead_service
    from leadpilot.crm.access import actor_for
    from leadpilot.distribution.recommend import recommendations_for, run_distribution
    from leadpilot.distribution.tables import Recommendation

    with Session(company.engine) as s:  # the simulated pool is nearly empty "now": give some leads back
        owned = s.scalars(select(Lead.id).where(Lead.stage.in_(["assigned", "contacted"])).limit(12)).all()
        for lead_id in owned:
            lead_service.release_lead(s, actor=SYSTEM, lead_id=lead_id, reason="test: back to the pool")
        s.commit()
    report = run_distribution(company.engine, company.store, per_lead=3, top_n=20)
    assert report.pool > 0 and report.pairs > 0 and report.ranker.startswith("convert v")
    with Session(company.engine) as s:
        rows = s.scalars(select(Recommendation)).all()
        assert len(rows) == report.stored > 0
        by_user: dict[int, list[Recommendation]] = {}
        for r in rows:
            by_user.setdefault(r.user_id, []).append(r)
        for ranked in by_user.values():
            ranked.sort(key=lambda r: r.rank)
            assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1)) and len(ranked) <= 20
            assert all(a.value >= b.value for a, b in itertools.pairwise(ranked))
        user = s.get_one(User, next(iter(by_user)))
        mine = recommendations_for(s, actor=actor_for(s, user), limit=5)
        assert mine and [m["rank"] for m in mine] == sorted(m["rank"] for m in mine)
        pool_before = s.scalar(
            select(func.count())
            .select_from(Lead)
            .where(Lead.owner_id.is_(None), Lead.stage.in_(["qualified", "recycled"]))
        )
    assigned = run_distribution(company.engine, company.store, per_lead=3, assign=True, working_hours=False)
    assert assigned.assigned > 0 and assigned.assignment["method"] == "exact"
    with Session(company.engine) as s:
        pool_after = s.scalar(
            select(func.count())
            .select_from(Lead)
            .where(Lead.owner_id.is_(None), Lead.stage.in_(["qualified", "recycled"]))
        )
        assert pool_after == pool_before - assigned.assigned
        reasons = s.scalars(
            select(Event.payload).where(Event.type == "assign").order_by(Event.id.desc()).limit(3)
        ).all()
        assert all("expected value" in (p.get("reason") or "") for p in reasons)
