"""Experiments on routing: validation, hash bucketing, the experiment-aware distribution run on a tiny
simulated company (exposures once per lead, in the assignment's transaction), and a report whose numbers
equal a direct count from the event log."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from leadpilot.crm import eventlog, schemas
from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM, actor_for
from leadpilot.crm.errors import Conflict, Forbidden, Invalid, NotFound
from leadpilot.crm.models import Event, Lead, Stage, User
from leadpilot.experiments import service
from leadpilot.experiments.analysis import sample_ratio_mismatch
from leadpilot.experiments.service import Arm
from leadpilot.experiments.tables import Experiment
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World
from tests.conftest import build_org

ARMS = [Arm("control", "round_robin", 0.5), Arm("busy", "least_busy", 0.5)]


# --- create, validate, start, stop ---------------------------------------------------------------------------


def test_create_validates_and_moves_through_its_life_cycle(engine: Engine) -> None:
    org = build_org(engine)
    sup_all, sup_east, alice = org.actor("sup_all"), org.actor("sup_east"), org.actor("alice")
    with Session(engine) as s:
        bad: list[tuple[dict[str, Any], str, str]] = [
            ({"key": "x y", "unit": "lead", "arms": ARMS}, "key", "experiment key"),
            ({"key": "ab", "unit": "team", "arms": ARMS}, "unit", "unit 'team' is not one of"),
            ({"key": "ab", "unit": "lead", "arms": [ARMS[0]]}, "arms", "at least two arms"),
            (
                {"key": "ab", "unit": "lead", "arms": [ARMS[0], Arm("b", "random", 0.5)]},
                "arms",
                "arm 'b': unknown strategy 'random'",
            ),
            (
                {"key": "ab", "unit": "lead", "arms": [ARMS[0], Arm("b", "least_busy", 0.4)]},
                "arms",
                "add up to 0.9, not 1",
            ),
            ({"key": "ab", "unit": "lead", "arms": [ARMS[0], Arm("control", "least_busy", 0.5)]}, "arms", "repeat"),
            (
                {"key": "ab", "unit": "lead", "arms": [{"name": "a", "strategy": "round_robin"}, ARMS[1]]},
                "arms",
                "arm 1: missing share",
            ),
        ]
        for kwargs, field, message in bad:
            with pytest.raises(Invalid, match=message) as caught:
                service.create_experiment(s, actor=SYSTEM, **kwargs)
            assert caught.value.field == field
        with pytest.raises(Invalid, match="not NAME:STRATEGY:SHARE"):
            service.parse_arm("control:round_robin")
        with pytest.raises(Invalid, match="share 'half' is not a number"):
            service.parse_arm("control:round_robin:half")
        with pytest.raises(Forbidden):
            service.create_experiment(s, actor=sup_all, key="ab", unit="lead", arms=ARMS)

        row = service.create_experiment(
            s, actor=SYSTEM, key="ab", unit="lead", arms=[service.parse_arm("control:round_robin:0.5"), ARMS[1]]
        )
        s.commit()
        assert row.status == "draft" and row.arms[0] == {"name": "control", "strategy": "round_robin", "share": 0.5}
        with pytest.raises(Conflict, match="already exists"):
            service.create_experiment(s, actor=SYSTEM, key="ab", unit="lead", arms=ARMS)
        s.rollback()
        assert [e.key for e in service.list_experiments(s, actor=sup_east)] == ["ab"]
        with pytest.raises(Forbidden):
            service.list_experiments(s, actor=alice)
        with pytest.raises(NotFound):
            service.get_experiment(s, actor=SYSTEM, key="nope")
        with pytest.raises(Conflict, match="only a running experiment can be stopped"):
            service.stop_experiment(s, actor=SYSTEM, key="ab")
        assert service.start_experiment(s, actor=SYSTEM, key="ab").started_at is not None
        with pytest.raises(Conflict, match="only a draft experiment can be started"):
            service.start_experiment(s, actor=SYSTEM, key="ab")
        assert service.stop_experiment(s, actor=SYSTEM, key="ab").status == "stopped"
        s.commit()

        # Model strategies need their champion: V2 names are accepted but cannot start without a V2 model.
        for key, strategy, message in (("v2", "v2_mmoe", "no V2 model registered"), ("v1", "v1_xgb", "'convert'")):
            service.create_experiment(
                s, actor=SYSTEM, key=key, unit="salesperson", arms=[ARMS[0], Arm("model", strategy, 0.5)]
            )
            s.commit()
            with pytest.raises(Conflict, match=message):
                service.start_experiment(s, actor=SYSTEM, key=key)
            s.rollback()


def test_arms_are_deterministic_hashes_split_by_share() -> None:
    experiment = Experiment(
        key="split",
        unit="lead",
        arms=[
            {"name": "a", "strategy": "round_robin", "share": 0.2},
            {"name": "b", "strategy": "least_busy", "share": 0.3},
            {"name": "c", "strategy": "score_round_robin", "share": 0.5},
        ],
    )
    arms = [service.arm_for(experiment, unit) for unit in range(30_000)]
    assert arms == [service.arm_for(experiment, unit) for unit in range(30_000)]  # stable
    counts = Counter(arms)
    for name, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(counts[name] / 30_000 - share) < 0.015
    assert not sample_ratio_mismatch(counts, {"a": 0.2, "b": 0.3, "c": 0.5})["mismatch"]
    # Another key buckets independently; a salesperson test's lead slices use their own key.
    other = Experiment(key="other", unit="lead", arms=experiment.arms)
    same = sum(service.arm_for(other, u) == arms[u] for u in range(30_000)) / 30_000
    assert abs(same - (0.2**2 + 0.3**2 + 0.5**2)) < 0.02
    per_rep = Experiment(key="split", unit="salesperson", arms=experiment.arms)
    assert sum(service.lead_arm(per_rep, u) == arms[u] for u in range(30_000)) / 30_000 < 0.45
    # Capacity split between arms: exact totals, proportional, the remainder rotating with the user id.
    split = [service.split_capacity(7, user, service.arms_of(experiment)) for user in range(6)]
    assert all(sum(s.values()) == 7 for s in split)
    assert all(s["c"] in (3, 4) and s["a"] in (1, 2) for s in split)
    assert service.split_capacity(0, 1, ARMS) == {"control": 0, "busy": 0}


# --- an experiment-aware distribution run on a tiny simulated company ------------------------------------------


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


def _exposures(engine: Engine, key: str) -> list[Event]:
    with Session(engine) as s:
        rows = s.scalars(select(Event).where(Event.type == "experiment_exposure").order_by(Event.id)).all()
        return [r for r in rows if r.payload.get("experiment") == key]


def _direct_count(engine: Engine, key: str) -> dict[str, dict[str, float]]:
    """The report's numbers counted straight from the event log, the simple way."""
    with Session(engine) as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
    first: dict[int, Event] = {}
    for e in events:
        if e.type == "experiment_exposure" and e.payload["experiment"] == key and e.lead_id not in first:
            first[e.lead_id] = e  # type: ignore[index]
    out: dict[str, dict[str, float]] = {}
    for lead_id, exposure in first.items():
        later = [e for e in events if e.lead_id == lead_id and e.occurred_at >= exposure.occurred_at]
        won = any(
            (e.type == "stage_change" and e.payload.get("to") == "won") or e.type == "contract_signed" for e in later
        )
        worked = won or any(
            e.type == "stage_change" and e.payload.get("to") in ("contacted", "negotiating", "won") for e in later
        )
        revenue = sum(float(e.payload["amount"]) for e in later if e.type == "contract_signed")
        arm = out.setdefault(exposure.payload["arm"], {"exposures": 0, "transfers": 0, "conversions": 0, "revenue": 0})
        arm["exposures"] += 1
        arm["transfers"] += worked
        arm["conversions"] += won
        arm["revenue"] += revenue
    return out


def _work(engine: Engine, lead_id: int, *, won: bool, amount: float = 0.0) -> None:
    """The owner works the lead through the CRM services: contacted, and maybe negotiating, won and signed."""
    with Session(engine) as s:
        owner = s.get_one(User, s.get_one(Lead, lead_id).owner_id)
        actor = actor_for(s, owner)
        lead_service.change_stage(s, actor=actor, lead_id=lead_id, stage=Stage.CONTACTED)
        if won:
            lead_service.change_stage(s, actor=actor, lead_id=lead_id, stage=Stage.NEGOTIATING)
            lead_service.change_stage(s, actor=actor, lead_id=lead_id, stage=Stage.WON)
            eventlog.record_activity(
                s,
                actor=actor,
                data=schemas.EventCreate(type="contract_signed", lead_id=lead_id, payload={"amount": amount}),
            )
        s.commit()


def test_experiment_run_exposes_each_routed_lead_once_and_the_report_counts_the_event_log(
    engine: Engine, tmp_path: Path
) -> None:
    generate(engine, World("tiny", seed=5, days=150), data_dir=tmp_path / "sim")
    _release(engine, 60)
    with Session(engine) as s:
        service.create_experiment(s, actor=SYSTEM, key="rr-vs-busy", unit="lead", arms=ARMS)
        s.commit()
        with pytest.raises(Conflict, match="start it before routing"):
            service.run_experiment(engine, None, key="rr-vs-busy")
        service.start_experiment(s, actor=SYSTEM, key="rr-vs-busy")
        s.commit()
        experiment = service.get_experiment(s, actor=SYSTEM, key="rr-vs-busy")
        s.expunge(experiment)

    first = service.run_experiment(engine, None, key="rr-vs-busy")
    assert first.assigned > 20 and first.exposures == first.assigned and first.failed == 0
    assert sum(first.routed.values()) == first.assigned and min(first.routed.values()) > 0
    exposures = _exposures(engine, "rr-vs-busy")
    assert len(exposures) == first.exposures == len({e.lead_id for e in exposures})
    with Session(engine) as s:
        for e in exposures:
            lead = s.get_one(Lead, e.lead_id)
            assert e.payload["arm"] == service.arm_for(experiment, lead.id)  # the lead's own arm
            assert e.payload["strategy"] == {"control": "round_robin", "busy": "least_busy"}[e.payload["arm"]]
            assert e.payload["unit"] == "lead" and e.payload["unit_id"] == lead.id
            assert lead.owner_id == e.payload["owner_id"] and lead.stage == "assigned"
            # The assignment and the exposure were one transaction: the assign event sits right before it.
            assign = s.scalars(
                select(Event).where(Event.lead_id == lead.id, Event.type == "assign").order_by(Event.id.desc())
            ).first()
            assert assign is not None and assign.payload["to"] == lead.owner_id
            assert "experiment rr-vs-busy" in assign.payload["reason"]
            assert 0 < e.id - assign.id <= 2

    # Nothing left to route: a re-run exposes nothing; leads recycled and routed again are not exposed twice.
    again = service.run_experiment(engine, None, key="rr-vs-busy")
    assert again.exposures == 0
    recycled = sorted(e.lead_id for e in exposures)[:8]  # type: ignore[type-var]
    with Session(engine) as s:
        for lead_id in recycled:
            lead_service.release_lead(s, actor=SYSTEM, lead_id=lead_id, reason="test: recycled")  # type: ignore[arg-type]
        s.commit()
    rerun = service.run_experiment(engine, None, key="rr-vs-busy")
    assert rerun.exposures == 0 and rerun.already_exposed == rerun.assigned > 0
    assert len(_exposures(engine, "rr-vs-busy")) == len(exposures)

    # Outcomes through the CRM services; some before the exposure (the simulation's history) must not count.
    exposed = sorted(e.lead_id for e in exposures)  # type: ignore[type-var]
    with Session(engine) as s:
        still_owned = [lead_id for lead_id in exposed if s.get_one(Lead, lead_id).stage == "assigned"]
    for n, lead_id in enumerate(still_owned[:30]):
        if n % 3 == 0:
            _work(engine, lead_id, won=True, amount=1000.0 * (n + 1))  # type: ignore[arg-type]
        elif n % 3 == 1:
            _work(engine, lead_id, won=False)  # type: ignore[arg-type]
    plot = tmp_path / "report.png"
    with Session(engine) as s:
        report = service.report(s, actor=SYSTEM, key="rr-vs-busy", plot=plot)
        with pytest.raises(Forbidden):
            seller = s.scalars(select(User).where(User.role == "sales")).first()
            assert seller is not None
            service.report(s, actor=actor_for(s, seller), key="x")
    direct = _direct_count(engine, "rr-vs-busy")
    assert report["exposures"] == len(exposures)
    assert report["control"] == "control" and set(report["arms"]) == {"control", "busy"}
    worked = still_owned[:30]
    assert sum(d["conversions"] for d in direct.values()) == len(worked[::3]) > 0
    assert sum(d["transfers"] for d in direct.values()) == len(worked[::3]) + len(worked[1::3])
    with Session(engine) as s:  # the simulation had worked some of these leads before: that must not count
        before = s.scalars(
            select(Event.lead_id).where(
                Event.lead_id.in_(exposed), Event.type == "stage_change", Event.occurred_at < exposures[0].occurred_at
            )
        ).all()
    assert before
    for name, counted in direct.items():
        arm = report["arms"][name]
        assert arm["exposures"] == arm["units"] == counted["exposures"]
        assert arm["transfers"] == counted["transfers"] and arm["conversions"] == counted["conversions"]
        assert arm["ctcvr"] == pytest.approx(counted["conversions"] / counted["exposures"])
        if counted["transfers"]:
            assert arm["cvr"] == pytest.approx(counted["conversions"] / counted["transfers"])
        assert arm["revenue_per_lead"] == pytest.approx(counted["revenue"] / counted["exposures"])
        assert arm["ctcvr_ci"][0] <= arm["ctcvr"] <= arm["ctcvr_ci"][1]
    busy = report["vs_control"]["busy"]
    assert 0 <= busy["ctcvr_p_z"] <= 1 and 0 <= busy["ctcvr_p_bootstrap"] <= 1 and 0 <= busy["revenue_p_bootstrap"] <= 1
    assert report["sample_ratio"]["observed"] == {n: d["exposures"] for n, d in direct.items()} | {
        n: 0 for n in ("control", "busy") if n not in direct
    }
    json.dumps(report, allow_nan=False)  # JSON-safe as it is
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A salesperson experiment: each arm's salespeople get leads only from their arm's slice of the pool.
    _release(engine, 40)
    with Session(engine) as s:
        service.stop_experiment(s, actor=SYSTEM, key="rr-vs-busy")
        row = service.create_experiment(
            s,
            actor=SYSTEM,
            key="reps",
            unit="salesperson",
            arms=[Arm("control", "round_robin", 0.5), Arm("scored", "score_round_robin", 0.5)],
        )
        service.start_experiment(s, actor=SYSTEM, key="reps")
        s.commit()
        s.refresh(row)
        s.expunge(row)
    run = service.run_experiment(engine, None, key="reps")
    assert run.assigned > 0 and run.exposures + run.already_exposed == run.assigned
    for e in _exposures(engine, "reps"):
        assert e.payload["unit_id"] == e.payload["owner_id"]
        assert service.arm_for(row, e.payload["owner_id"]) == e.payload["arm"]
        assert service.lead_arm(row, e.lead_id) == e.payload["arm"]  # type: ignore[arg-type]
    with Session(engine) as s:
        reps_report = service.report(s, actor=SYSTEM, key="reps")
    owners: dict[str, set[int]] = {}
    for e in _exposures(engine, "reps"):
        owners.setdefault(e.payload["arm"], set()).add(e.payload["owner_id"])
    assert {n: m["units"] for n, m in reps_report["arms"].items() if m["exposures"]} == {
        arm: len(ids) for arm, ids in owners.items()
    }


# --- the command line and the API ----------------------------------------------------------------------------


def test_cli_creates_starts_reports_and_refuses_bad_arms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leadpilot.cli.main import app
    from leadpilot.config import get_settings
    from leadpilot.db.engine import _cached_engine

    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["init", "--json"]).exit_code == 0
        bad = runner.invoke(
            app, ["experiments", "create", "ab", "--unit", "lead", "--arm", "a:round_robin:0.5", "--arm", "b:magic:0.5"]
        )
        assert bad.exit_code == 1 and "unknown strategy 'magic'" in bad.output
        made = runner.invoke(
            app,
            [
                "experiments",
                "create",
                "ab",
                "--unit",
                "lead",
                "--arm",
                "a:round_robin:0.7",
                "--arm",
                "b:least_busy:0.3",
            ],
        )
        assert made.exit_code == 0, made.output
        started = runner.invoke(app, ["experiments", "start", "ab", "--json"])
        assert json.loads(started.stdout)["status"] == "running"
        listed = json.loads(runner.invoke(app, ["experiments", "list", "--json"]).stdout)
        assert [e["key"] for e in listed] == ["ab"]
        shown = json.loads(runner.invoke(app, ["experiments", "show", "ab", "--json"]).stdout)
        assert shown["arms"][0] == {"name": "a", "strategy": "round_robin", "share": 0.7}
        routed = runner.invoke(app, ["distribute", "run", "--assign", "--experiment", "ab", "--json"])
        assert routed.exit_code == 0, routed.output
        assert json.loads(routed.stdout)["exposures"] == 0  # an empty CRM: nothing to route
        needs_assign = runner.invoke(app, ["distribute", "run", "--experiment", "ab"])
        assert needs_assign.exit_code == 1 and "--assign" in needs_assign.output
        report = runner.invoke(app, ["experiments", "report", "ab", "--plot", str(tmp_path / "ab.png")])
        assert report.exit_code == 0, report.output
        assert "sample ratio: ok" in report.output and (tmp_path / "ab.png").exists()
        assert json.loads(runner.invoke(app, ["experiments", "stop", "ab", "--json"]).stdout)["status"] == "stopped"
        missing = runner.invoke(app, ["experiments", "report", "nope"])
        assert missing.exit_code == 1 and "experiment 'nope' not found" in missing.output
    finally:
        get_settings.cache_clear()
        _cached_engine.cache_clear()


def test_api_admin_runs_experiments_supervisors_read_reports(client: Any, auth: dict[str, dict[str, str]]) -> None:
    admin, sup, alice = auth["admin"], auth["sup_east"], auth["alice"]
    body = {
        "key": "api-ab",
        "unit": "salesperson",
        "arms": [
            {"name": "control", "strategy": "round_robin", "share": 0.5},
            {"name": "odoo", "strategy": "score_round_robin", "share": 0.5},
        ],
    }
    assert client.post("/api/v1/experiments", json=body, headers=sup).status_code == 403
    created = client.post("/api/v1/experiments", json=body, headers=admin)
    assert created.status_code == 201 and created.json()["control"] == "control"
    again = client.post("/api/v1/experiments", json=body, headers=admin)
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert client.post("/api/v1/experiments/api-ab/start", headers=admin).json()["status"] == "running"
    report = client.get("/api/v1/experiments/api-ab/report", headers=sup)
    assert report.status_code == 200 and report.json()["exposures"] == 0
    assert report.json()["sample_ratio"]["mismatch"] is False
    assert client.get("/api/v1/experiments/api-ab/report", headers=alice).status_code == 403
    png = client.get("/api/v1/experiments/api-ab/report.png", headers=sup)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert client.get("/api/v1/experiments", headers=sup).json()[0]["key"] == "api-ab"


def test_v1_xgb_arm_ranks_with_the_convert_champion_through_the_solver(sqlite_engine: Engine, tmp_path: Path) -> None:
    from leadpilot.features.dictionary import load_default
    from leadpilot.features.store import FeatureStore
    from leadpilot.models import crm_training

    generate(sqlite_engine, World("tiny", seed=7, days=150), data_dir=tmp_path / "sim")
    store = FeatureStore(tmp_path / "features", load_default())
    store.compute(sqlite_engine)
    crm_training.train(sqlite_engine, store, "convert", data_dir=tmp_path / "data", params={"num_boost_round": 20})
    _release(sqlite_engine, 40)
    with Session(sqlite_engine) as s:
        service.create_experiment(
            s,
            actor=SYSTEM,
            key="v1",
            unit="lead",
            arms=[Arm("control", "score_round_robin", 0.5), Arm("v1", "v1_xgb", 0.5)],
        )
        service.start_experiment(s, actor=SYSTEM, key="v1")
        s.commit()
    run = service.run_experiment(sqlite_engine, store, key="v1", per_lead=3)
    assert run.routed["v1"] > 0 and run.exposures == run.assigned
    with Session(sqlite_engine) as s:
        reasons = [
            e.payload["reason"]
            for e in s.scalars(
                select(Event).where(Event.type == "assign").order_by(Event.id.desc()).limit(run.assigned)
            )
        ]
    v1 = [r for r in reasons if "arm v1 (v1_xgb)" in r]
    assert len(v1) == run.routed["v1"] and all("expected value" in r for r in v1)
    with Session(sqlite_engine) as s:
        report = service.report(s, actor=SYSTEM, key="v1")
    assert report["arms"]["v1"]["exposures"] == run.routed["v1"]
