"""The leadpilot command line against a real SQLite database in a temporary data dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadpilot.cli.main import app
from leadpilot.config import get_settings
from leadpilot.db.engine import _cached_engine
from leadpilot.features.export import read_feature_map

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data dir and SQLite database for the CLI, with the settings cache cleared around the test."""
    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("LEADPILOT_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    _cached_engine.cache_clear()


def run(*args: str) -> dict | list:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else {}


def test_init_is_idempotent_and_creates_a_private_secret(cli_env: Path) -> None:
    first = run("init", "--json")
    second = run("init", "--json")
    assert first["revision"] == second["revision"] == run("db", "current", "--json")["head"]
    key = cli_env / "data" / "secret_key"
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"


def test_commands_refuse_an_unmigrated_database(cli_env: Path) -> None:
    result = runner.invoke(app, ["users", "list"])
    assert result.exit_code == 1
    assert "leadpilot init" in result.output


def test_teams_and_users(cli_env: Path) -> None:
    run("init")
    run("teams", "create", "Sales", "--kind", "sales", "--json")
    east = run("teams", "create", "East", "--kind", "sales", "--parent", "Sales", "--json")
    user = run(
        "users",
        "create",
        "ann",
        "--role",
        "sales",
        "--password",
        "long-enough-pw",
        "--team",
        "East",
        "--product-line",
        "housing",
        "--region",
        "Beijing",
        "--capacity",
        "12",
        "--json",
    )
    assert user["team_id"] == east["id"] and user["product_lines"] == ["housing"] and user["daily_capacity"] == 12
    users = run("users", "list", "--json")
    assert [u["username"] for u in users] == ["ann"]
    dup = runner.invoke(app, ["users", "create", "ann", "--role", "sales", "--password", "long-enough-pw"])
    assert dup.exit_code == 1 and "taken" in dup.output
    bad_team = runner.invoke(
        app, ["users", "create", "bo", "--role", "sales", "--password", "pw-long-enough", "--team", "Nope"]
    )
    assert bad_team.exit_code == 1 and "does not exist" in bad_team.output


def test_demo_simulates_a_company_and_imports_the_sample(cli_env: Path) -> None:
    data = run("demo", "--scale", "tiny", "--no-serve", "--json")
    assert set(data["logins"]) == {"admin", "sup_all", "sup_01", "sales_0001", "sales_0002", "screener_001"}
    assert data["simulation"]["leads"] > 1000 and data["simulation"]["events"] > 10_000
    summary = data["import"]
    assert summary["rejected"] == 4 and summary["created"] > 40 and summary["merged"] == 2
    assert {e["field"] for e in summary["errors"]} == {"phone", "company", "email", "budget"}
    again = run("demo", "--scale", "tiny", "--no-serve", "--json")  # idempotent: same logins, nothing new
    assert again["logins"] == data["logins"] and again["simulation"] == {}
    assert again["import"]["created"] == 0 and again["import"]["unchanged"] == summary["created"] + 2
    assert data["features"]["values_written"] > 10_000 and data["features"]["derived_features"] >= 1_000
    # The second run copies only the events the first run's scoring wrote (2 models registered and promoted,
    # one score_changed per scored lead); they feed no feature, so nothing changes.
    scoring_events = 4 + data["scoring"]["rescored"]["changed"]
    assert again["features"]["keys_changed"] == 0 and again["features"]["sync"]["events_copied"] == scoring_events
    stats = run("events", "stats", "--json")
    assert stats["lead_created"] == data["simulation"]["leads"] + summary["created"]
    assert stats["assign"] > 0 and stats["contract_signed"] > 0
    # The demo trains and promotes the first scoring models once, and scores the open leads.
    assert {(m["name"], m["status"]) for m in data["scoring"]["trained"]} == {
        ("transfer", "champion"),
        ("convert", "champion"),
    }
    assert data["scoring"]["rescored"]["changed"] > 0 and again["scoring"]["trained"] == []
    # The demo ranks the claim pool for every salesperson with capacity (the convert model as ranker).
    ranked = data["distribution"]
    assert ranked["pool"] > 0 and ranked["ranker"].startswith("convert v1") and ranked["stored"] > 0
    assert ranked["assigned"] == 0
    # The seed's workflow rules are stored once, disabled.
    assert len(data["workflow"]["created"]) >= 2 and again["workflow"]["created"] == []
    rules = run("workflow", "list", "--json")
    assert rules and not any(r["enabled"] for r in rules)
    versions = run("scoring", "models", "list", "--json")
    assert {(v["name"], v["version"], v["status"]) for v in versions} == {
        ("transfer", 1, "champion"),
        ("convert", 1, "champion"),
    }
    assert all(v["metrics"]["auc"] and v["baseline_metrics"]["naive_bayes"]["auc"] for v in versions)
    rule = run("scoring", "rules", "add", "big", "budget > 100000 and page_views_30d >= 1 -> priority: high", "--json")
    assert rule["version"] == 1
    bad = runner.invoke(app, ["scoring", "rules", "add", "typo", "budgt > 1 -> review"])
    assert bad.exit_code == 1 and "unknown field 'budgt'" in bad.output
    ran = run("scoring", "rules", "run", "--json")
    assert ran["leads"] > 0 and "big" in ran["matches"]
    assert run("scoring", "rescore", "--changed", "--json")["changed"] == 0  # rules wrote no feature events
    lead_id = _open_owned_lead()
    explained = run("scoring", "explain", str(lead_id), "--json")
    assert explained["models"]["convert"]["up"] or explained["models"]["convert"]["down"]
    nope = runner.invoke(app, ["scoring", "models", "rollback", "convert"])
    assert nope.exit_code == 1 and "nothing to roll back to" in nope.output


def _open_owned_lead() -> int:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from leadpilot.cli.common import engine
    from leadpilot.crm.models import Lead

    with Session(engine()) as session:
        found = session.scalar(select(Lead.id).where(Lead.stage == "negotiating", Lead.owner_id.is_not(None)).limit(1))
    assert found is not None
    return found


def test_demo_logins_work_against_the_api(cli_env: Path) -> None:
    from fastapi.testclient import TestClient

    from leadpilot.api.app import app_from_env

    data = run("demo", "--scale", "tiny", "--no-serve", "--json")
    with TestClient(app_from_env()) as client:
        seen = {}
        for username, password in data["logins"].items():
            r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
            assert r.status_code == 200, username
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            me = client.get("/api/v1/auth/me", headers=headers).json()
            leads = client.get("/api/v1/leads", headers=headers, params={"limit": 500}).json()["items"]
            seen[username] = (me, leads)
    sales_id = seen["sales_0001"][0]["id"]
    assert seen["sales_0001"][1] and all(
        lead["owner_id"] == sales_id or (lead["owner_id"] is None and lead["stage"] in ("qualified", "recycled"))
        for lead in seen["sales_0001"][1]
    )
    assert all(lead["stage"] in ("new", "screening") for lead in seen["screener_001"][1])
    # A salesperson sees the score of an own lead with the factors behind it.
    own = next(lead for lead in seen["sales_0001"][1] if lead["owner_id"] == sales_id and lead["score"] is not None)
    with TestClient(app_from_env()) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "sales_0001", "password": data["logins"]["sales_0001"]}
        ).json()["access_token"]
        score = client.get(f"/api/v1/leads/{own['id']}/score", headers={"Authorization": f"Bearer {token}"}).json()
    assert score["stored"]["score"] == own["score"]
    assert any(m.get("up") or m.get("down") for m in score["models"].values()), score
    # The demo's distribution gave salespeople a personalised pool (tiny's pool is a lead or two: not everyone's).
    served = 0
    with TestClient(app_from_env()) as client:
        for username in ("sales_0001", "sales_0002"):
            token = client.post(
                "/api/v1/auth/token", data={"username": username, "password": data["logins"][username]}
            ).json()["access_token"]
            recs = client.get("/api/v1/me/recommendations", headers={"Authorization": f"Bearer {token}"}).json()
            assert [r["rank"] for r in recs["items"]] == sorted(r["rank"] for r in recs["items"])
            served += bool(recs["items"])
    assert served >= 1 or data["distribution"]["stored"] == 0
    assert data["distribution"]["stored"] > 0


def test_relay_needs_redis_configured(cli_env: Path) -> None:
    run("init")
    result = runner.invoke(app, ["events", "relay"])
    assert result.exit_code == 1 and "LEADPILOT_REDIS_URL" in result.output


def test_features_pipeline_from_the_command_line(cli_env: Path) -> None:
    run("init")
    run("simulate", "--scale", "tiny", "--days", "60", "--json")
    listing = run("features", "list", "--json")
    assert listing["derived_total"] >= 1_000 and listing["features"][0]["explanation"]
    derived = run("features", "list", "--derived", "--search", "calls_connected__housing", "--limit", "3", "--json")
    assert len(derived["features"]) == 3 and derived["total"] > 3
    described = run("features", "describe", "calls_connected__housing__count__30d", "--json")
    assert described["id"] == 90_113 and described["source"]["events"] == ["call_connected"]
    computed = run("features", "compute", "--json")
    assert computed["values_written"] > 0 and computed["sync"]["events_copied"] > 0
    day = computed["days"][0]
    again = run("features", "compute", "--date", day, "--json")
    assert again["keys_changed"] == 0 and again["sync"]["events_copied"] == 0
    out = cli_env / "leads.svm"
    exported = run("features", "export", "--format", "libsvm", "--out", str(out), "--json")
    assert exported["rows"] > 0 and out.exists() and (cli_env / "leads.svm.keys.csv").exists()
    first = out.read_text().splitlines()[0].split()
    ids = [int(cell.split(":")[0]) for cell in first[1:]]
    assert first[0] == "0" and ids == sorted(ids)
    lead = (cli_env / "leads.svm.keys.csv").read_text().splitlines()[1].split(",")[0]
    shown = run("features", "show", lead, "--json")
    assert shown["as_of"] == day and shown["total"] == len(first) - 1
    served = run("features", "show", lead, "--online", "--limit", "2000", "--json")
    feature_map = read_feature_map(Path(exported["feature_map"]))
    assert feature_map.index_base == 0 and exported["feature_map"] == str(out) + ".featmap.tsv"
    assert {f["id"] for f in served["features"]} == {feature_map.feature_ids[i] for i in ids}
    assert computed["online"]["lead"] == exported["rows"]
    name = shown["features"][0]["name"]
    hist = run("features", "history", lead, name, "--json")
    assert hist["history"] and hist["history"][-1]["valid_to"] is None
    status = run("features", "status", "--json")
    assert status["last_run"] == day and status["history"]["rows"] > 0


def test_features_errors_are_one_clear_line(cli_env: Path) -> None:
    run("init")
    bad = cli_env / "bad.yaml"
    bad.write_text(
        "buckets: [{code: 0, name: all}]\nfeatures:\n  - {id: 1, name: x, dimension: lead, explanation: x, "
        "source: {events: [a]}, functions: [MEDIAN]}\n"
    )
    result = runner.invoke(app, ["features", "list", "--dictionary", str(bad)])
    assert result.exit_code == 1 and "features[0] (x): unknown function 'MEDIAN'" in result.output
    result = runner.invoke(app, ["features", "compute", "--backfill", "2026-02-01", "2026-01-01"])
    assert result.exit_code == 1 and "wrong order" in result.output
    result = runner.invoke(app, ["features", "show", "1"])
    assert result.exit_code == 1 and "no features computed yet" in result.output
    result = runner.invoke(app, ["features", "export", "--format", "csv", "--out", "x"])
    assert result.exit_code == 1 and "unknown format 'csv'" in result.output
