"""The web workspace in a real browser: Playwright drives Debian's Chromium against a real uvicorn server.

A temporary SQLite database is seeded with conftest's organisation and served by ``uvicorn --factory
leadpilot.api.app:app_from_env`` in a subprocess. Salesperson, supervisor and admin sign in through the
login form; the salesperson claims a pool lead and moves its stage; a workflow rule escalates the claim
after a (test-clock) delay; the supervisor's dashboard shows the same figures as ``GET /api/v1/dashboard``
and the escalation. Every page is saved as a screenshot under ``test-output/screenshots/``.

Skipped when Playwright or /usr/bin/chromium is missing, except under CI=true where that fails.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.contracts import service as contract_service
from leadpilot.crm.access import SYSTEM
from leadpilot.db import migrate
from leadpilot.db.base import utcnow
from leadpilot.db.engine import make_engine
from leadpilot.experiments import service as experiment_service
from leadpilot.workflow import engine as workflow_engine
from leadpilot.workflow import service as workflow_service
from leadpilot.workflow.rules import parse_rule
from tests.conftest import IN_CI, PASSWORD, Org, build_org

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
SECRET = "browser-test-secret-" + "s" * 32


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    problem = _missing()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}; CI must provide it")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A seeded SQLite database, an escalation rule, and a uvicorn server on it in a subprocess."""
    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder / 'leadpilot.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    org = build_org(engine)
    rule = parse_rule(
        {
            "name": "escalate-claimed-not-called",
            "enabled": True,
            "trigger": "claim",
            "after": "2h",
            "unless": ["call_attempt", "call_completed", "meeting"],
            "actions": [{"notify": {"to": "supervisor", "message": "Lead {lead_id} claimed 2 h ago, no call yet"}}],
        }
    )
    with Session(engine) as s:
        workflow_service.save_rules(s, actor=SYSTEM, rules=[rule])
        arms = [
            {"name": "control", "strategy": "round_robin", "share": 0.5},
            {"name": "busy", "strategy": "least_busy", "share": 0.5},
        ]
        experiment_service.create_experiment(s, actor=SYSTEM, key="ab-browser", unit="lead", arms=arms)
        s.commit()
    workflow_engine.scan_events(engine, settle_seconds=0)  # the cursor starts after the seed events
    port = _free_port()
    env = {
        **os.environ,
        "LEADPILOT_DATABASE_URL": url,
        "LEADPILOT_DATA_DIR": str(folder / "data"),
        "LEADPILOT_SECRET_KEY": SECRET,
        "LEADPILOT_ENVIRONMENT": "test",
    }
    command = [sys.executable, "-m", "uvicorn", "leadpilot.api.app:app_from_env", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the uvicorn server did not start (exit code {server.poll()})")
            time.sleep(0.2)
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield {"base": base, "engine": engine, "org": org}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        engine.dispose()


def sign_in(chromium: Any, base: str, username: str) -> Any:
    """A fresh browser context signed in through the login form; returns its page."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state("load")
    assert "/login" not in page.url, page.content()[:500]
    return page


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot of the current page."""
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def figures(page: Any) -> dict[str, str]:
    """The dashboard's figures as shown: data-figure -> data-value (or the text)."""
    pairs = page.eval_on_selector_all(
        "[data-figure]",
        "els => els.map(e => [e.dataset.figure, e.hasAttribute('data-value') ? e.dataset.value : e.textContent])",
    )
    return {k: v for k, v in pairs}


def api_figures(base: str, username: str, page: Any) -> dict[str, str]:
    """The same figures from ``GET /api/v1/dashboard`` for the page's window, flattened like its data-figure keys."""
    token = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": PASSWORD}).json()
    since = page.input_value("input[name=since]")
    params = {} if since == "all" else {"since": since}
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    summary = httpx.get(f"{base}/api/v1/dashboard", params=params, headers=headers)
    assert summary.status_code == 200, summary.text
    from tests.integration.test_web import _flatten

    return _flatten(summary.json())


def test_roles_claim_move_escalate_and_dashboard(chromium: Any, world: dict[str, Any]) -> None:
    base, engine, org = world["base"], world["engine"], world["org"]
    assert isinstance(engine, Engine) and isinstance(org, Org)
    pool_id, own_id = org.leads["pool"], org.leads["alice"]

    login = chromium.new_page()
    login.goto(f"{base}/login")
    shot(login, "01-login")
    login.fill("input[name=username]", "alice")
    login.fill("input[name=password]", "wrong-password")
    login.click("button[type=submit]")
    assert "Wrong username or password" in login.inner_text("[data-testid=error]")
    assert login.input_value("input[name=username]") == "alice"
    login.close()

    # --- salesperson: queue, pool, one-click claim, stage move, note, search ---
    alice = sign_in(chromium, base, "alice")
    assert alice.url.endswith("/queue")
    assert alice.locator(f"[data-testid=queue] tr[data-lead='{own_id}']").count() == 1
    shot(alice, "02-sales-queue")
    alice.goto(f"{base}/pool")
    shot(alice, "03-sales-pool")
    alice.click(f"[data-testid=pool] [data-claim='{pool_id}']")
    alice.wait_for_url(f"**/leads/{pool_id}?done=claimed")
    assert alice.get_attribute("[data-testid=stage]", "data-value") == "assigned"
    alice.click("[data-stage=contacted]")
    alice.wait_for_url(f"**/leads/{pool_id}?done=stage")
    assert alice.get_attribute("[data-testid=stage]", "data-value") == "contacted"
    alice.fill("textarea[name=text]", "Asked for a quote; call back Friday")
    alice.click("[data-testid=add-note]")
    alice.wait_for_url(f"**/leads/{pool_id}?done=note")
    assert "Asked for a quote" in alice.inner_text("[data-testid=timeline]")
    assert alice.locator("[data-stage=won]").count() == 0  # contacted -> won is not offered
    shot(alice, "04-sales-lead")
    alice.goto(f"{base}/search?q=pool")
    assert alice.locator("[data-testid=hits] tr[data-lead]").count() >= 1
    shot(alice, "05-sales-search")
    alice.goto(f"{base}/dashboard")
    assert figures(alice) == api_figures(base, "alice", alice)
    shot(alice, "06-sales-dashboard")
    response = alice.goto(f"{base}/admin/users")
    assert response is not None and response.status == 403
    shot(alice, "06b-sales-forbidden")
    alice.context.close()

    # --- screener: the screening queue and a lead being screened ---
    screener = sign_in(chromium, base, "screener")
    assert screener.locator(f"[data-testid=queue] tr[data-lead='{org.leads['new']}']").count() == 1
    shot(screener, "06c-screener-queue")
    screener.goto(f"{base}/leads/{org.leads['new']}")
    assert {screener.get_attribute(b, "data-stage") for b in ("[data-stage=screening]", "[data-stage=lost]")} == {
        "screening",
        "lost",
    }
    shot(screener, "06d-screener-lead")
    screener.context.close()

    # --- the workflow engine, on a test clock 3 hours ahead: alice's claim had no call, so it escalates ---
    workflow_engine.scan_events(engine, settle_seconds=0)
    fired = workflow_engine.run_due(engine, now=utcnow() + timedelta(hours=3))
    assert fired.as_dict().get("fired", 0) >= 1, fired.as_dict()

    # --- supervisor: dashboard figures equal the API's, charts drawn, the escalation shown ---
    sup = sign_in(chromium, base, "sup_east")
    assert sup.url.endswith("/dashboard")
    sup.wait_for_selector("[data-chart=funnel] .main-svg")
    shown = figures(sup)
    assert shown == api_figures(base, "sup_east", sup)
    assert shown["escalations.count"] == "1"
    assert f"Lead {pool_id} claimed 2 h ago" in sup.inner_text("[data-testid=escalations]")
    assert shown["funnel.contacted"] == "1"
    shot(sup, "07-supervisor-dashboard")
    for path, name in (
        ("/assignments", "08-supervisor-assignments"),
        ("/admin/rules", "09-supervisor-rules"),
        (f"/leads/{pool_id}", "10-supervisor-lead"),
    ):
        sup.goto(base + path)
        assert sup.locator("h1").count() == 1
        shot(sup, name)
    sup.goto(f"{base}/assignments")
    assert sup.inner_text("[data-figure='assignments.alice.claimed_today']") == "1"
    sup.goto(f"{base}/admin/rules")
    sup.fill("input[name=name]", "typo")
    sup.fill("textarea[name=text]", "budgt > 5 -> priority: high")
    sup.click("[data-testid=save-rule]")
    assert "unknown field 'budgt'" in sup.inner_text("[data-testid=error]")
    assert sup.input_value("textarea[name=text]") == "budgt > 5 -> priority: high"  # nothing lost
    shot(sup, "11-supervisor-rule-error")
    sup.context.close()

    # --- admin: users and teams, models, features, dashboard in Chinese ---
    admin = sign_in(chromium, base, "admin")
    for path, name in (
        ("/admin/users", "12-admin-users"),
        ("/admin/models", "13-admin-models"),
        ("/admin/features", "14-admin-features"),
        ("/assignments", "15-admin-assignments"),
        ("/experiments/ab-browser", "15b-admin-experiment"),
        ("/queue", "15c-admin-queue"),
        ("/pool", "15d-admin-pool"),
    ):
        admin.goto(base + path)
        assert admin.locator("h1").count() == 1
        if path == "/admin/users":
            assert admin.locator("[data-testid=users] tbody tr").count() == len(org.users)
        shot(admin, name)
    admin.goto(f"{base}/dashboard?lang=zh")
    admin.wait_for_selector("[data-chart=funnel] .main-svg")
    assert "公司看板" in admin.inner_text("h1")
    assert figures(admin) == api_figures(base, "admin", admin)
    shot(admin, "16-admin-dashboard-zh")
    # --- admin: the workflow rules editor (a bad rule shows the service's error, text kept) and contracts ---
    admin.goto(f"{base}/admin/workflow?lang=en")
    assert admin.locator('tr[data-rule="escalate-claimed-not-called"]').count() == 1
    shot(admin, "17-admin-workflow")
    bad = "rules:\n  - name: broken\n    trigger: call_complete\n    actions: [notify]\n"
    admin.fill('textarea[data-editor=""]', bad)
    admin.click('#rule-new button[data-op="validate"]')
    assert "unknown event type 'call_complete'" in admin.inner_text("[data-testid=errors]")
    assert admin.input_value('textarea[data-editor=""]') == bad
    shot(admin, "18-admin-workflow-error")
    bob = org.actor("bob")
    with Session(world["engine"]) as s:
        contract_service.create_contract(s, actor=bob, lead_id=org.leads["bob"], amount="2500", currency="CNY")
        s.commit()
    admin.goto(f"{base}/contracts")
    assert admin.locator("[data-testid=contracts] tbody tr").count() == 1
    shot(admin, "19-admin-contracts")
    admin.click("[data-testid=contracts] tbody tr a")
    assert admin.get_attribute("[data-testid=status]", "data-value") == "draft"
    shot(admin, "20-admin-contract")
    admin.context.close()
    assert len(list(SHOTS.glob("*.png"))) >= 22
