"""V2 ranking on the CRM (issue #6): ESMM exposures from the event log, an MMoE ranker trained, exported to ONNX,
registered and served in the distribution run and in an experiment arm, on a tiny simulated company."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from leadpilot.config import Settings
from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Event, Lead
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.distribution import ranking_v2
from leadpilot.distribution.ranking_v2 import ASSIGNMENT, SCREENING, V2Scorer
from leadpilot.features.dictionary import load_default
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training, registry
from leadpilot.models.crm_training import TIME_COLUMN, TrainingDataError
from leadpilot.models.service import ScoringService
from leadpilot.models.tables import ModelVersion
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World
from tests.integration.test_features import START, TODAY, add_events, seed_crm

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

FAST = {"epochs": 4, "batch_size": 256, "patience": 2, "threads": 2}


@dataclass
class Company:
    engine: Engine
    settings: Settings
    store: FeatureStore
    url: str


@pytest.fixture(scope="module")
def company(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Company]:
    """3,000 simulated leads over 18 months with their features and a V1 convert champion; built once."""
    tmp = tmp_path_factory.mktemp("ranking_v2")
    shutil.copy(sqlite_template, tmp / "leadpilot.db")
    url = f"sqlite:///{tmp / 'leadpilot.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    settings = Settings(environment="test", data_dir=tmp / "data", secret_key="test-secret-key-" + "x" * 32)
    generate(engine, World("tiny", seed=11), data_dir=settings.data_dir)
    store = FeatureStore(settings.feature_dir, load_default())
    store.compute(engine)
    crm_training.train(
        engine, store, "convert", data_dir=settings.data_dir, params={"num_boost_round": 30}, max_rows=None
    )
    yield Company(engine, settings, store, url)
    engine.dispose()


@pytest.fixture(scope="module")
def data(company: Company) -> ranking_v2.V2Data:
    return ranking_v2.training_data(company.engine, company.store, max_rows=None)


@pytest.fixture(scope="module")
def trained(company: Company) -> ranking_v2.TrainedV2:
    return ranking_v2.train_v2(
        company.engine, company.store, arch="mmoe", data_dir=company.settings.data_dir, params=FAST, max_rows=None
    )


def _release(engine: Engine, n: int) -> list[int]:
    """Give ``n`` worked leads back to the claim pool (the simulated pool is nearly empty "now")."""
    with Session(engine) as s:
        owned = s.scalars(
            select(Lead.id).where(Lead.stage.in_(["assigned", "contacted"])).order_by(Lead.id).limit(n)
        ).all()
        for lead_id in owned:
            lead_service.release_lead(s, actor=SYSTEM, lead_id=lead_id, reason="test: back to the pool")
        s.commit()
    return list(owned)


# --- exposures ----------------------------------------------------------------------------------------------


def test_exposures_are_labelled_from_the_log_point_in_time_and_split_by_time(
    company: Company, data: ranking_v2.V2Data
) -> None:
    rows, y = data.rows, data.y
    screening, assignment = (rows.phase == SCREENING).to_numpy(), (rows.phase == ASSIGNMENT).to_numpy()
    assert screening.sum() > 1_000 and assignment.sum() > 300
    # Task 0: screening exposures qualified or lost in screening; every assignment is a transfer.
    assert set(np.unique(y[screening, 0])) == {0.0, 1.0} and (y[assignment, 0] == 1).all()
    # Task 1: no conversion without a transfer; decided assignments won or lost, open ones unobserved.
    assert (y[screening & (y[:, 0] == 0), 1] == 0).all() and np.isnan(y[screening & (y[:, 0] == 1), 1]).all()
    assert set(np.unique(y[assignment & ~np.isnan(y[:, 1]), 1])) == {0.0, 1.0}
    assert np.isnan(y[assignment, 1]).any()
    with Session(company.engine) as s:
        stages = {int(i): str(stage) for i, stage in s.execute(select(Lead.id, Lead.stage)).all()}
    for lead_id, label in zip(rows.lead_id[assignment], y[assignment, 1], strict=True):
        assert stages[lead_id] == ("won" if label == 1 else "lost" if label == 0 else stages[lead_id])
    # Every labelled exposure was decided before its outcome happened.
    labelled = rows.outcome_at.notna().to_numpy()
    assert labelled.sum() > 1_000
    assert (rows[TIME_COLUMN][labelled] < rows.outcome_at[labelled]).all()
    # No salesperson at screening: the rep inputs are missing and the salesperson code is 0 ("none").
    frame = data.frame
    rep_columns = [c for c in frame.columns if c.startswith("rep_") or c == "wait_days"]
    assert rep_columns and frame.loc[screening, rep_columns].isna().all().all()
    assert frame.loc[assignment, "rep_win_rate_all"].notna().all()
    vocab = ranking_v2.vocabulary(frame, rows.owner_id)
    _, codes = ranking_v2.encode(frame, rows.owner_id.to_numpy(), numeric=data.numeric_columns, vocab=vocab)
    assert (codes[screening, -1] == 0).all() and (codes[assignment, -1] > 0).all()
    # The inputs see nothing at or after the decision: the lead's stage-change count is the log's count of
    # stage changes before the decision's day (the tiles are the snapshot of the day before), so no row counts
    # its own outcome.
    counts = ["stage_changes__all__count__365d"]
    assert counts[0] in frame.columns
    with Session(company.engine) as s:
        changes = pd.DataFrame(
            s.execute(select(Event.lead_id, Event.occurred_at).where(Event.type == "stage_change")).all(),
            columns=["lead_id", "at"],
        )
    changes["at"] = pd.to_datetime(changes["at"], utc=True)
    by_lead = {k: v.dt.tz_localize(None).to_numpy() for k, v in changes.groupby("lead_id")["at"]}
    sample = rows.sample(400, random_state=3)
    seen = 0
    for i, row in sample.iterrows():
        day = row[TIME_COLUMN].floor("D")
        times = pd.DatetimeIndex(by_lead.get(row.lead_id, []), tz="UTC")
        before = int(((times < day) & (times >= day - pd.Timedelta(days=365))).sum())
        assert frame.at[i, counts[0]] == before, (row.phase, row.lead_id)
        seen += before
    assert seen > 50  # not vacuous: assignment exposures count the stage changes of their screening
    # The newest window is held out.
    assert 0.15 < data.test.mean() < 0.25
    assert rows[TIME_COLUMN][data.test].min() >= rows[TIME_COLUMN][~data.test].max()


# --- training, registry, ONNX -------------------------------------------------------------------------------


def test_train_v2_registers_promotes_and_serves_the_same_scores_with_onnx(
    company: Company, trained: ranking_v2.TrainedV2
) -> None:
    row = trained.version
    assert row.name == "mmoe" and row.version == 1 and row.status == "champion"
    assert row.params["kind"] == "multitask" and ranking_v2.is_multitask(row)
    files = {p.name for p in Path(row.path).iterdir()}
    assert {"ranker.onnx", "v2.json", "meta.json", "torch"} <= files
    spec = json.loads(Path(row.path, "v2.json").read_text())
    assert spec["categorical_columns"][-1] == "salesperson" and spec["vocabulary"]["salesperson"]
    m = trained.metrics
    assert m["n_test_convert"] > 30 and m["n_test_transfer"] > 100
    assert m["auc_transfer"] > 0.55 and m["auc"] is not None and m["auc"] > 0.5, m
    v1 = row.baseline_metrics["convert_v1"]
    assert v1["version"] == 1 and v1["n"] > 0 and v1["auc"] is not None and v1["v2_auc_same_rows"] is not None
    assert row.baseline_metrics["lead_prior"]["auc"] is not None
    with Session(company.engine) as s:
        assert registry.champion(s, name="mmoe") is not None
        events = s.scalars(select(Event.payload).where(Event.type == "model_promoted")).all()
        assert any(e["model"] == "mmoe" for e in events)
    # ONNX Runtime gives the eager network's probabilities on the same rows.
    data = trained.data
    scorer = V2Scorer(company.engine, company.store, row)
    x_num, x_cat = scorer.inputs(data.frame, data.rows.owner_id.to_numpy())
    eager = trained.model.predict_proba(x_num, X_cat=x_cat)
    served = scorer.onnx.predict_proba(x_num, X_cat=x_cat)
    assert served.shape == (data.n, 2)
    np.testing.assert_allclose(served, eager, atol=1e-5)
    # Pairs scored at "now" through the served path equal the eager model on build_frame's columns.
    now = datetime.now(UTC)
    with Session(company.engine) as s:
        lead_ids = (
            s.scalars(select(Lead.id).where(Lead.stage == "qualified").limit(5)).all()
            or s.scalars(select(Lead.id).limit(5)).all()
        )
    reps = spec["vocabulary"]["salesperson"][:3]
    pairs = pd.DataFrame([(lead, u) for lead in lead_ids for u in reps], columns=["lead_id", "user_id"])
    p = scorer.predict_pairs(pairs, now)
    assert p.shape == (len(pairs), 2) and ((p > 0) & (p < 1)).all()
    first = pairs.groupby("lead_id").head(1)
    ex = pd.DataFrame({TIME_COLUMN: pd.Timestamp(now)}, index=first.lead_id.to_numpy())
    ex["owner_id"] = first.user_id.to_numpy()
    ex["qualified_at"] = pd.Timestamp(now)
    frame, _ = crm_training.build_frame(
        company.engine, company.store, "convert", ex, keep_features=spec["feature_columns"]
    )
    n2, c2 = scorer.inputs(frame, ex["owner_id"].to_numpy())
    direct = trained.model.predict_proba(n2, X_cat=c2)
    with Session(company.engine) as s:
        from leadpilot.models.service import qualified_times

        known = qualified_times(s, first.lead_id.tolist())
    unqualified = [i for i, lead in enumerate(first.lead_id) if lead not in known]
    if unqualified:  # wait_days is measured from "now" for a lead never qualified: the rows match exactly
        np.testing.assert_allclose(p[first.index.to_numpy()][unqualified], direct[unqualified], atol=1e-5)
    # Salespeople of the same lead get different scores (the pair matters).
    assert np.unique(np.round(p[:, 1], 6)).size > 1


def test_distribute_run_ranks_the_pool_with_the_v2_champion(
    company: Company, trained: ranking_v2.TrainedV2, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leadpilot.cli.main import app
    from leadpilot.config import get_settings
    from leadpilot.db.engine import _cached_engine
    from leadpilot.distribution.recommend import run_distribution, score_pairs
    from leadpilot.distribution.tables import Recommendation

    _release(company.engine, 12)
    v1 = run_distribution(company.engine, company.store, per_lead=3, top_n=20)
    assert v1.ranker.startswith("convert v1")  # the default ranker is still the V1 convert champion
    report = run_distribution(company.engine, company.store, per_lead=3, top_n=20, ranker="mmoe")
    assert report.pool > 0 and report.pairs == v1.pairs > 0 and report.ranker.startswith("mmoe v1")
    # The stored p_convert is the V2 champion's p(convert | transfer) of each pair.
    service = ScoringService(company.engine, company.store)
    with Session(company.engine) as s:
        recs = s.scalars(select(Recommendation)).all()
    pairs = pd.DataFrame([(r.lead_id, r.user_id) for r in recs], columns=["lead_id", "user_id"])
    pool = pd.DataFrame({"lead_id": pairs.lead_id.unique(), "score": 0.5})
    p, ranker = score_pairs(service, pairs, pool, datetime.now(UTC), model_name="mmoe")
    assert "ONNX Runtime" in ranker
    stored = np.array([r.p_convert for r in recs])
    assert np.abs(stored - p).max() < 0.05  # scored a moment apart ("now" moves wait_days and ages)
    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(company.settings.data_dir))
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", company.url)
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["distribute", "run", "--ranker", "mmoe", "--per-lead", "2", "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["ranker"].startswith("mmoe v1")
        missing = runner.invoke(app, ["distribute", "run", "--ranker", "ple"])
        assert missing.exit_code == 2 and "train-v2 --arch ple" in missing.output
        bad = runner.invoke(app, ["distribute", "run", "--ranker", "magic"])
        assert bad.exit_code == 1 and "--ranker must be" in bad.output
        wrong_arch = runner.invoke(app, ["distribute", "train-v2", "--arch", "dcn"])
        assert wrong_arch.exit_code == 1 and "--arch must be one of mmoe, ple" in wrong_arch.output
        listed = runner.invoke(app, ["scoring", "models", "list", "--json"])
        assert listed.exit_code == 0 and {"mmoe", "convert"} <= {m["name"] for m in json.loads(listed.stdout)}
    finally:
        get_settings.cache_clear()
        _cached_engine.cache_clear()
    # The scoring service still serves only transfer / convert: rescoring ignores the V2 champion.
    assert "mmoe" not in service.rescore(lead_ids=pairs.lead_id.tolist()[:5]).models


def test_experiment_arm_v2_mmoe_routes_leads(company: Company, trained: ranking_v2.TrainedV2) -> None:
    from leadpilot.experiments import service
    from leadpilot.experiments.service import Arm

    _release(company.engine, 30)
    with Session(company.engine) as s:
        service.create_experiment(
            s,
            actor=SYSTEM,
            key="v2",
            unit="lead",
            arms=[Arm("control", "round_robin", 0.5), Arm("v2", "v2_mmoe", 0.5)],
        )
        service.start_experiment(s, actor=SYSTEM, key="v2")
        s.commit()
    run = service.run_experiment(company.engine, company.store, key="v2", per_lead=3)
    assert run.routed["v2"] > 0 and run.exposures == run.assigned
    with Session(company.engine) as s:
        reasons = [
            e.payload["reason"]
            for e in s.scalars(
                select(Event).where(Event.type == "assign").order_by(Event.id.desc()).limit(run.assigned)
            )
        ]
    v2 = [r for r in reasons if "arm v2 (v2_mmoe)" in r]
    assert len(v2) == run.routed["v2"] and all("expected value" in r for r in v2)


# --- bad input ----------------------------------------------------------------------------------------------


def test_no_exposures_or_one_class_is_a_clear_error_and_registers_nothing(
    sqlite_engine: Engine, sqlite_template: Path, tmp_path: Path, data: ranking_v2.V2Data
) -> None:
    # Leads with page views only: nobody was ever screened or assigned.
    shutil.copy(sqlite_template, tmp_path / "views.db")
    views = make_engine(f"sqlite:///{tmp_path / 'views.db'}")
    try:
        ids = seed_crm(views, n_events=0)
        add_events(
            views,
            [
                {"type": "page_view", "lead_id": lead, "occurred_at": START + timedelta(days=i % 20), "payload": {}}
                for i, lead in enumerate(ids["leads"])
            ],
        )
        bare = FeatureStore(tmp_path / "views-features", load_default())
        bare.compute(views, today=TODAY)
        with pytest.raises(TrainingDataError, match="no exposures in the event log"):
            ranking_v2.train_v2(views, bare, arch="mmoe", data_dir=tmp_path / "data", params=FAST)
    finally:
        views.dispose()
    # Too little history: the message says which task lacks which outcome.
    store = FeatureStore(tmp_path / "features", load_default())
    seed_crm(sqlite_engine, n_events=200)
    store.compute(sqlite_engine, today=TODAY)
    with pytest.raises(TrainingDataError, match=r"transfer: \d+ positive and 0 negative outcomes"):
        ranking_v2.train_v2(sqlite_engine, store, arch="mmoe", data_dir=tmp_path / "data", params=FAST)
    with pytest.raises(TrainingDataError, match="unknown V2 architecture 'dcn'"):
        ranking_v2.train_v2(sqlite_engine, store, arch="dcn", data_dir=tmp_path / "data")
    with Session(sqlite_engine) as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert not (tmp_path / "data" / "models").exists()
    # One class: the company's exposures with every deal lost cannot teach p(convert | transfer).
    all_lost = ranking_v2.V2Data(
        rows=data.rows,
        frame=data.frame,
        y=np.where(np.isnan(data.y), np.nan, np.column_stack([data.y[:, 0], np.zeros(data.n)])),
        test=data.test,
        numeric_columns=data.numeric_columns,
    )
    with pytest.raises(TrainingDataError, match=r"convert \(decided assigned leads\): 0 positive and \d+ negative"):
        ranking_v2.check_trainable(all_lost, ~data.test)
    ranking_v2.check_trainable(data, ~data.test)  # the real labels are fine
