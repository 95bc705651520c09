"""The web workspace (issue #7): pages per role, sign-in, CSRF, actions through the API's services, shared figures.

Runs the real app with FastAPI's TestClient on SQLite against conftest's organisation (screener, alice and bob
in east, wendy in west, sup_east, sup_all, admin; leads new, screening, pool, pool2, alice, bob, wendy).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.config import Settings
from leadpilot.crm import dashboard, leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.events import append_event
from leadpilot.crm.models import AuditEntry, Event, Lead, Stage
from leadpilot.web.routes import CSRF_COOKIE, PAGES, SESSION_COOKIE
from tests.conftest import PASSWORD, Org, build_org

ROLE_OF = {
    "screener": "screener",
    "alice": "sales",
    "sup_east": "supervisor",
    "sup_all": "supervisor",
    "admin": "admin",
}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FIGURE = re.compile(r'data-figure="([^"]+)"(?: data-value="([^"]*)")?')


def enrich(engine: Engine, org: Org) -> Org:
    """Add to the conftest organisation a won lead with a budget and a call (bob's), and a workflow escalation."""
    sup_all, bob = org.actor("sup_all"), org.actor("bob")
    with Session(engine) as s:
        lead = leads.create_lead(
            s, actor=SYSTEM, data=schemas.LeadCreate(title="won deal", product_line="cars", region="north", budget=1200)
        )
        for stage in (Stage.SCREENING, Stage.QUALIFIED):
            leads.change_stage(s, actor=SYSTEM, lead_id=lead.id, stage=stage)
        leads.assign_lead(s, actor=sup_all, lead_id=lead.id, owner_id=org.users["bob"].id)
        append_event(s, "call_attempt", lead_id=lead.id, actor_id=bob.id)
        for stage in (Stage.CONTACTED, Stage.NEGOTIATING, Stage.WON):
            leads.change_stage(s, actor=bob, lead_id=lead.id, stage=stage)
        append_event(
            s,
            "notification",
            lead_id=org.leads["alice"],
            payload={"user_ids": [org.users["sup_east"].id], "message": "no follow-up in 24 h", "rule": "escalate"},
        )
        s.commit()
        org.leads["won"] = lead.id
    return org


@pytest.fixture
def org(sqlite_engine: Engine) -> Org:
    """The enriched organisation on SQLite."""
    return enrich(sqlite_engine, build_org(sqlite_engine))


@pytest.fixture
def app(sqlite_engine: Engine, settings: Settings, org: Org) -> Any:
    return create_app(settings, engine=sqlite_engine)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


class Browser:
    """A TestClient with its own cookie jar, signed in as one user."""

    def __init__(self, app: Any, username: str | None = None) -> None:
        self.client = TestClient(app, follow_redirects=False)
        self.username = username
        if username is not None:
            page = self.client.get("/login")
            response = self.client.post(
                "/login", data={"username": username, "password": PASSWORD, "csrf_token": csrf_of(page.text)}
            )
            assert response.status_code == 303, response.text
            assert SESSION_COOKIE in response.cookies

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def post_form(self, page_url: str, action: str, data: dict[str, Any]) -> Any:
        """Open ``page_url`` (for its CSRF token) and submit ``data`` to ``action`` like the page's form would."""
        page = self.client.get(page_url)
        assert page.status_code == 200, page.text[:300]
        return self.client.post(action, data={**data, "csrf_token": csrf_of(page.text)})


@pytest.fixture
def browser(app: Any) -> Iterator[Callable[[str | None], Browser]]:
    made: list[Browser] = []

    def make(username: str | None) -> Browser:
        made.append(Browser(app, username))
        return made[-1]

    yield make
    for b in made:
        b.client.close()


def test_pages_render_for_allowed_roles_and_refuse_others(browser: Callable[[str | None], Browser]) -> None:
    anonymous = browser(None)
    for name, (path, _roles) in PAGES.items():
        r = anonymous.get(path)
        assert r.status_code == 303, name
        assert r.headers["location"].startswith("/login?next=")
    for username, role in ROLE_OF.items():
        b = browser(username)
        assert b.get("/").status_code == 303
        for name, (path, roles) in PAGES.items():
            r = b.get(path)
            allowed = any(role == r_.value for r_ in roles)
            assert r.status_code == (200 if allowed else 403), f"{username} {path}: {r.status_code}"
            assert "<html" in r.text
            if allowed:
                assert f'data-nav="{name}"' in r.text, f"{username} misses the link to {name}"
            else:
                assert "may not open this page" in r.text


def test_lead_page_shows_visible_leads_only(browser: Callable[[str | None], Browser], org: Org) -> None:
    alice = browser("alice")
    page = alice.get(f"/leads/{org.leads['alice']}")
    assert page.status_code == 200
    assert 'data-event="stage_change"' in page.text and 'data-event="notification"' in page.text
    # legal moves only: assigned -> contacted, lost, recycled (never won, never assigned)
    offered = set(re.findall(r'data-stage="([a-z]+)"', page.text))
    assert offered == {"contacted", "lost", "recycled"}
    assert alice.get(f"/leads/{org.leads['bob']}").status_code == 404
    assert alice.get(f"/leads/{org.leads['pool']}").status_code == 200
    screener = browser("screener")
    assert set(re.findall(r'data-stage="([a-z]+)"', screener.get(f"/leads/{org.leads['new']}").text)) == {
        "screening",
        "lost",
    }


def test_csrf_is_enforced_on_every_form(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    alice = browser("alice")
    pool_id = org.leads["pool"]
    assert alice.client.post(f"/leads/{pool_id}/claim").status_code == 403
    assert alice.client.post(f"/leads/{pool_id}/claim", data={"csrf_token": "forged"}).status_code == 403
    alice.client.cookies.delete(CSRF_COOKIE)
    page = alice.get("/pool")
    token = csrf_of(page.text)
    alice.client.cookies.delete(CSRF_COOKIE)  # token without its cookie: refused too
    assert alice.client.post(f"/leads/{pool_id}/claim", data={"csrf_token": token}).status_code == 403
    for action, data in (
        (f"/leads/{org.leads['alice']}/stage", {"stage": "contacted"}),
        (f"/leads/{org.leads['alice']}/notes", {"text": "hello"}),
        (f"/leads/{org.leads['alice']}/tasks", {"title": "call"}),
        ("/logout", {}),
    ):
        assert alice.client.post(action, data=data).status_code == 403, action
    with Session(sqlite_engine) as s:
        assert s.get_one(Lead, pool_id).owner_id is None
        assert s.get_one(Lead, org.leads["alice"]).stage == "assigned"
    # the login form too
    fresh = browser(None)
    assert fresh.client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403


def _claim_trace(engine: Engine, lead_id: int) -> list[tuple[str, int | None, dict[str, Any]]]:
    with Session(engine) as s:
        events = s.execute(
            select(Event.type, Event.actor_id, Event.payload)
            .where(Event.lead_id == lead_id, Event.type.in_(["claim", "stage_change"]))
            .order_by(Event.id)
        ).all()
        audits = s.scalars(select(AuditEntry.action).where(AuditEntry.entity_id == lead_id)).all()
    return [(t, a, p) for t, a, p in events if t == "claim" or p.get("reason") == "claim"] + [
        ("audit", None, {"action": a}) for a in audits if a == "claim"
    ]


def test_claim_via_web_writes_what_the_api_writes(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine, app: Any
) -> None:
    alice = browser("alice")
    r = alice.post_form("/pool", f"/leads/{org.leads['pool']}/claim", {})
    assert r.status_code == 303 and r.headers["location"] == f"/leads/{org.leads['pool']}?done=claimed"
    assert "Claimed" in alice.get(r.headers["location"]).text
    api = TestClient(app)
    token = api.post("/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}).json()["access_token"]
    assert api.post(
        f"/api/v1/leads/{org.leads['pool2']}/claim", headers={"Authorization": f"Bearer {token}"}
    ).is_success
    web_trace, api_trace = (
        _claim_trace(sqlite_engine, org.leads["pool"]),
        _claim_trace(sqlite_engine, org.leads["pool2"]),
    )
    assert web_trace == api_trace
    assert [t for t, _, _ in web_trace] == ["claim", "stage_change", "audit"]
    assert web_trace[0] == ("claim", org.users["alice"].id, {"owner_id": org.users["alice"].id})
    # claiming it again: a readable conflict on the pool page, not a crash
    again = alice.post_form("/pool", f"/leads/{org.leads['pool']}/claim", {})
    assert again.status_code == 409 and "already yours" in again.text


def test_stage_moves_and_readable_refusals(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    alice = browser("alice")
    url = f"/leads/{org.leads['alice']}"
    moved = alice.post_form(url, f"{url}/stage", {"stage": "contacted", "reason": "phoned"})
    assert moved.status_code == 303
    with Session(sqlite_engine) as s:
        assert s.get_one(Lead, org.leads["alice"]).stage == "contacted"
    illegal = alice.post_form(url, f"{url}/stage", {"stage": "won", "reason": "keep me"})
    assert illegal.status_code == 409
    assert "cannot move from &#39;contacted&#39; to &#39;won&#39;" in illegal.text
    assert 'value="keep me"' in illegal.text  # what was typed stays in the form
    unknown = alice.post_form(url, f"{url}/stage", {"stage": "done"})
    assert unknown.status_code == 422 and "unknown stage" in unknown.text
    assert alice.post_form(url, f"{url}/stage", {"stage": "recycled"}).status_code == 303
    with Session(sqlite_engine) as s:
        lead = s.get_one(Lead, org.leads["alice"])
        assert (lead.stage, lead.owner_id) == ("recycled", None)
        assert s.scalar(select(Event.id).where(Event.lead_id == lead.id, Event.type == "release")) is not None


def test_notes_and_tasks_keep_input_on_errors(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    alice = browser("alice")
    url = f"/leads/{org.leads['alice']}"
    assert alice.post_form(url, f"{url}/notes", {"text": "called, call back Friday"}).status_code == 303
    assert "called, call back Friday" in alice.get(url).text
    empty = alice.post_form(url, f"{url}/notes", {"text": "   "})
    assert empty.status_code == 422 and "write something" in empty.text
    bad_due = alice.post_form(url, f"{url}/tasks", {"title": "send the quote", "due_at": "next friday"})
    assert bad_due.status_code == 422
    assert "is not a date and time" in bad_due.text and 'value="send the quote"' in bad_due.text
    no_title = alice.post_form(url, f"{url}/tasks", {"title": "", "due_at": "2026-12-01T09:00"})
    assert no_title.status_code == 422 and "title" in no_title.text and 'value="2026-12-01T09:00"' in no_title.text
    assert (
        alice.post_form(url, f"{url}/tasks", {"title": "send the quote", "due_at": "2026-12-01T09:00"}).status_code
        == 303
    )
    page = alice.get(url).text
    assert "send the quote" in page and "2026-12-01 09:00" in page
    # bob's lead is not alice's: 404, and nothing written
    other = f"/leads/{org.leads['bob']}"
    assert alice.post_form(url, f"{other}/notes", {"text": "sneaky"}).status_code == 404
    with Session(sqlite_engine) as s:
        assert s.scalar(select(Event.id).where(Event.lead_id == org.leads["bob"], Event.type == "note")) is None


def _flatten(summary: dict[str, Any]) -> dict[str, str]:
    def fmt(value: Any) -> str:
        return "" if value is None else str(value)

    out = {f"funnel.{row['stage']}": fmt(row["leads"]) for row in summary["funnel"]}
    conversion = summary["conversion"]
    for key in (
        "qualified_leads",
        "qualified_won",
        "qualified_to_won",
        "assigned_leads",
        "assigned_won",
        "assigned_to_won",
    ):
        out[f"conversion.{key}"] = fmt(conversion[key])
    for key, value in summary["speed_to_lead"].items():
        out[f"speed.{key}"] = fmt(value)
    for row in summary["leaderboard"]:
        for key in ("leads", "open", "won", "lost", "won_value", "win_rate"):
            out[f"leaderboard.{row['username']}.{key}"] = fmt(row[key])
    for name, rows in (("product_line", summary["by_product_line"]), ("region", summary["by_region"])):
        for row in rows:
            out[f"{name}.{row['key']}.leads"] = fmt(row["leads"])
            out[f"{name}.{row['key']}.won"] = fmt(row["won"])
    out["escalations.count"] = fmt(summary["escalations"]["count"])
    return out


@pytest.mark.parametrize("username", ["alice", "sup_east", "sup_all", "admin"])
def test_dashboard_figures_equal_the_api(browser: Callable[[str | None], Browser], app: Any, username: str) -> None:
    user = browser(username)
    page = user.get("/dashboard")  # the last 30 days by default
    assert page.status_code == 200
    since = re.search(r'name="since" value="([^"]+)"', page.text)
    assert since and since.group(1).endswith("+00:00")
    shown = {key: value for key, value in _FIGURE.findall(page.text)}
    api = TestClient(app)
    token = api.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    summary = api.get("/api/v1/dashboard", params={"since": since.group(1)}, headers=headers).json()
    assert summary["since"] == since.group(1)
    assert shown == _flatten(summary)
    everything = dict(_FIGURE.findall(user.get("/dashboard?since=all").text))
    assert everything == _flatten(api.get("/api/v1/dashboard", headers=headers).json())
    future = dict(_FIGURE.findall(user.get("/dashboard?since=2999-01-01").text))
    assert future["funnel.won"] == "0" and future == _flatten(
        api.get("/api/v1/dashboard", params={"since": "2999-01-01T00:00:00Z"}, headers=headers).json()
    )
    assert user.get("/dashboard?since=yesterday").status_code == 422
    if username in ("sup_all", "admin"):
        assert shown["leaderboard.bob.won"] == "1" and shown["leaderboard.bob.won_value"] == "1200.0"
        assert shown["funnel.won"] == "1" and shown["speed.contacted_leads"] == "1"
    if username == "sup_east":  # the escalation is about alice's lead, in east
        assert shown["escalations.count"] == "1"
    if username == "alice":
        assert set(k.split(".")[1] for k in shown if k.startswith("leaderboard.")) == {"alice"}
    assert '<script src="/static/plotly.min.js">' in page.text and "cdn" not in page.text.lower()
    assert 'id="chart-funnel"' in page.text


def test_dashboard_api_roles(app: Any) -> None:
    api = TestClient(app)

    def status(username: str, path: str) -> int:
        token = api.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD}).json()
        return api.get(path, headers={"Authorization": f"Bearer {token['access_token']}"}).status_code

    assert api.get("/api/v1/dashboard").status_code == 401
    assert [status(u, "/api/v1/dashboard") for u in ROLE_OF] == [403, 200, 200, 200, 200]
    assert [status(u, "/api/v1/dashboard/assignments") for u in ROLE_OF] == [403, 403, 200, 200, 200]
    assert status("admin", "/api/v1/dashboard?since=2020-01-01") == 422  # no time zone


def test_assignment_overview_counts_todays_assignments(browser: Callable[[str | None], Browser]) -> None:
    page = browser("sup_all").get("/assignments")
    shown = {key: value for key, value in _FIGURE.findall(page.text)}
    # conftest assigned one lead each to alice, bob and wendy today; bob also got the won deal
    assert re.search(r'data-figure="assignments.bob.assigned_today">2<', page.text), shown
    assert re.search(r'data-figure="assignments.alice.assigned_today">1<', page.text)
    assert "assignments.wendy.assigned_today" in page.text
    assert "assignments.wendy" not in browser("sup_east").get("/assignments").text


def test_chinese_by_query_cookie_and_header(browser: Callable[[str | None], Browser]) -> None:
    alice = browser("alice")
    zh = alice.get("/queue?lang=zh")
    assert "我的排序队列" in zh.text and 'lang="zh-CN"' in zh.text
    assert alice.get("/pool").text.count("公海池") >= 1  # the cookie remembers the choice
    assert "Claim pool" in alice.get("/pool?lang=en").text
    fresh = browser(None)
    assert "登录" in fresh.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}).text
    assert "Sign in" in fresh.get("/login", headers={"Accept-Language": "fr, en;q=0.5"}).text
    dashboard = browser("admin").get("/dashboard?lang=zh").text
    assert "阶段漏斗" in dashboard and "赢单" in dashboard


def test_login_errors_and_logout(browser: Callable[[str | None], Browser], app: Any) -> None:
    b = browser(None)
    page = b.get("/login?next=/pool")
    wrong = b.client.post(
        "/login", data={"username": "alice", "password": "nope-nope", "csrf_token": csrf_of(page.text), "next": "/pool"}
    )
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text and 'value="alice"' in wrong.text
    for _ in range(3):
        b.client.post("/login", data={"username": "alice", "password": "x" * 9, "csrf_token": csrf_of(page.text)})
    throttled = b.client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    assert throttled.status_code == 429 and throttled.headers["Retry-After"]
    ok = browser("bob")
    assert ok.get("/queue").status_code == 200
    cookie = ok.client.cookies.get(SESSION_COOKIE)
    assert cookie
    out = ok.post_form("/queue", "/logout", {})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert ok.get("/queue").status_code == 303
    evil = browser(None)
    page = evil.get("/login")
    r = evil.client.post(
        "/login",
        data={"username": "bob", "password": PASSWORD, "csrf_token": csrf_of(page.text), "next": "//evil.example"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie


def test_rules_form_shows_errors_and_keeps_input(browser: Callable[[str | None], Browser]) -> None:
    sup = browser("sup_all")
    bad = sup.post_form("/admin/rules", "/admin/rules", {"name": "big", "text": "budgt > 5 -> priority: high"})
    assert bad.status_code == 422
    assert "unknown field &#39;budgt&#39;" in bad.text and "budgt &gt; 5 -&gt; priority: high" in bad.text
    good = sup.post_form("/admin/rules", "/admin/rules", {"name": "big", "text": "budget > 500000 -> priority: high"})
    assert good.status_code == 303
    assert "budget &gt; 500000 -&gt; priority: high" in sup.get("/admin/rules").text


def test_feature_dictionary_is_paginated(browser: Callable[[str | None], Browser]) -> None:
    admin = browser("admin")
    first, second = admin.get("/admin/features").text, admin.get("/admin/features?page=2").text
    ids = re.compile(r'<td class="num">(\d+)</td>')
    assert len(ids.findall(first)) == 50 and ids.findall(first) != ids.findall(second)
    filtered = admin.get("/admin/features?q=zzz-no-such-feature").text
    assert "0 derived features" in filtered


def test_plotly_and_css_are_served_from_the_package(browser: Callable[[str | None], Browser]) -> None:
    anonymous = browser(None)
    js = anonymous.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    assert anonymous.get("/static/app.css").status_code == 200
    assert anonymous.get("/static/charts.js").status_code == 200
    assert anonymous.get("/static/nope.css").status_code == 404


def test_dashboard_service_on_sqlite_and_postgresql(engine: Engine) -> None:
    """The aggregate queries give the same figures on both backends (JSON paths, CASE, GROUP BY)."""
    org = enrich(engine, build_org(engine))
    sup_all, admin, sup_east = org.actor("sup_all"), org.actor("admin"), org.actor("sup_east")
    with Session(engine) as s:
        summary = dashboard.summary(s, actor=sup_all)
        overview = {r["username"]: r for r in dashboard.assignment_overview(s, actor=admin)}
        east = dashboard.summary(s, actor=sup_east)
    assert {r["stage"]: r["leads"] for r in summary["funnel"]}["won"] == 1
    assert summary["conversion"]["qualified_leads"] == 4 and summary["conversion"]["qualified_won"] == 1
    bob = next(r for r in summary["leaderboard"] if r["username"] == "bob")
    assert (bob["won"], bob["won_value"], bob["rank"]) == (1, 1200.0, 1)
    assert summary["speed_to_lead"]["contacted_leads"] == 1 and summary["speed_to_lead"]["median_hours"] is not None
    assert {r["key"]: r["won"] for r in summary["by_product_line"]} == {"housing": 0, "cars": 1}
    assert overview["bob"]["assigned_today"] == 2 and overview["alice"]["claimed_today"] == 0
    assert east["escalations"]["count"] == 1
    assert {r["username"] for r in east["leaderboard"]} == {"alice", "bob"}


def test_experiment_results_page(
    browser: Callable[[str | None], Browser], app: Any, org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.experiments import service as experiment_service

    admin_actor = org.actor("admin")
    with Session(sqlite_engine) as s:
        arms = [
            {"name": "control", "strategy": "round_robin", "share": 0.5},
            {"name": "busy", "strategy": "least_busy", "share": 0.5},
        ]
        experiment_service.create_experiment(s, actor=admin_actor, key="ab-web", unit="lead", arms=arms)
        s.commit()
    sup = browser("sup_all")
    dashboard_page = sup.get("/dashboard").text
    assert 'href="/experiments/ab-web"' in dashboard_page
    page = sup.get("/experiments/ab-web")
    assert page.status_code == 200
    shown = dict(_FIGURE.findall(page.text))
    api = TestClient(app)
    token = api.post("/api/v1/auth/token", data={"username": "sup_all", "password": PASSWORD}).json()["access_token"]
    report = api.get("/api/v1/experiments/ab-web/report", headers={"Authorization": f"Bearer {token}"}).json()
    assert shown["exposures"] == str(report["exposures"])
    for arm, metrics in report["arms"].items():
        assert shown[f"arms.{arm}.exposures"] == str(metrics["exposures"])
        assert shown[f"arms.{arm}.conversions"] == str(metrics["conversions"])
    assert browser("alice").get("/experiments/ab-web").status_code == 403
    assert sup.get("/experiments/nope").status_code == 404


def test_pool_shows_the_personal_ranking_of_the_api(
    browser: Callable[[str | None], Browser], app: Any, org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.db.base import utcnow
    from leadpilot.distribution.tables import Recommendation

    alice_id = org.users["alice"].id
    with Session(sqlite_engine) as s:  # as the last distribution run stored them: pool2 first, then pool
        for rank, (key, p) in enumerate((("pool2", 0.4), ("pool", 0.2)), start=1):
            s.add(
                Recommendation(
                    user_id=alice_id,
                    lead_id=org.leads[key],
                    rank=rank,
                    p_convert=p,
                    value=p * 100,
                    computed_at=utcnow(),
                )
            )
        s.commit()
    alice = browser("alice")
    page = alice.get("/pool").text
    recommended = page[page.index('data-testid="recommended"') : page.index('data-testid="pool"')]
    shown = [int(i) for i in re.findall(r'<tr data-lead="(\d+)">', recommended)]
    api = TestClient(app)
    token = api.post("/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}).json()["access_token"]
    items = api.get("/api/v1/me/recommendations", headers={"Authorization": f"Bearer {token}"}).json()["items"]
    assert shown == [item["lead_id"] for item in items] == [org.leads["pool2"], org.leads["pool"]]
    assert f'data-claim="{org.leads["pool2"]}"' in recommended
    # once claimed it leaves the recommendations (only leads still in the pool are offered)
    assert alice.post_form("/pool", f"/leads/{org.leads['pool2']}/claim", {}).status_code == 303
    page = alice.get("/pool").text
    recommended = page[page.index('data-testid="recommended"') : page.index('data-testid="pool"')]
    assert re.findall(r'<tr data-lead="(\d+)">', recommended) == [str(org.leads["pool"])]


def test_signed_out_and_deactivated_users_are_sent_to_login(
    browser: Callable[[str | None], Browser], app: Any, org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.crm import people

    anonymous = browser(None)
    lead_page = anonymous.get(f"/leads/{org.leads['pool']}")
    assert (
        lead_page.status_code == 303 and lead_page.headers["location"] == f"/login?next=%2Fleads%2F{org.leads['pool']}"
    )
    claim = anonymous.client.post(f"/leads/{org.leads['pool']}/claim", data={"csrf_token": "x"})
    assert claim.status_code == 303 and claim.headers["location"].startswith("/login")
    anonymous.client.cookies.set(SESSION_COOKIE, "not-a-jwt")
    assert anonymous.get("/queue").status_code == 303
    bob = browser("bob")
    assert bob.get("/queue").status_code == 200
    admin_actor = org.actor("admin")
    with Session(sqlite_engine) as s:
        people.deactivate_user(s, actor=admin_actor, user_id=org.users["bob"].id)
        s.commit()
    app.state.actor_cache.clear()  # as the API does after a user change (other workers: within 5 s)
    assert bob.get("/queue").status_code == 303
    with Session(sqlite_engine) as s:
        assert s.get_one(Lead, org.leads["pool"]).owner_id is None


# --- workflow rules editor and contracts (issue #7, second part) ----------------------------------------------

GOOD_RULE = """rules:
  - name: note-ping
    enabled: false
    trigger: note
    actions:
      - notify: {to: owner, message: "Lead {lead_id} has a new note"}
"""


def _stored_rules(engine: Engine) -> dict[str, tuple[int, bool]]:
    from leadpilot.workflow.tables import WorkflowRule

    with Session(engine) as s:
        return {r.name: (r.version, r.enabled) for r in s.scalars(select(WorkflowRule))}


def test_workflow_page_roles(browser: Callable[[str | None], Browser], sqlite_engine: Engine) -> None:
    admin = browser("admin").get("/admin/workflow")
    assert admin.status_code == 200 and 'data-op="save"' in admin.text and 'data-testid="defaults"' in admin.text
    sup = browser("sup_all")
    page = sup.get("/admin/workflow")
    assert page.status_code == 200 and 'data-testid="read-only"' in page.text
    assert 'data-op="save"' not in page.text and "readonly" in page.text
    refused = sup.post_form("/admin/workflow", "/admin/workflow", {"text": GOOD_RULE, "op": "save"})
    assert refused.status_code == 403 and "only admins change them" in refused.text
    assert sup.post_form("/admin/workflow", "/admin/workflow/defaults", {}).status_code == 403
    assert _stored_rules(sqlite_engine) == {}
    assert browser("alice").get("/admin/workflow").status_code == 403
    assert browser("alice").get("/admin/workflow/export").status_code == 403
    zh = browser("admin")
    assert "安装默认规则" in zh.get("/admin/workflow?lang=zh").text and "逾期" in zh.get("/contracts").text


def test_workflow_bad_yaml_shows_the_service_errors_and_saves_nothing(
    browser: Callable[[str | None], Browser], sqlite_engine: Engine
) -> None:
    import html

    from leadpilot.workflow.rules import WorkflowError, load_yaml

    admin = browser("admin")
    bad = GOOD_RULE.replace("trigger: note", "trigger: call_complete").replace("notify:", "notifyy:")
    with pytest.raises(WorkflowError) as expected:
        load_yaml(bad)
    assert len(expected.value.problems) == 2
    for op in ("validate", "save"):
        r = admin.post_form("/admin/workflow", "/admin/workflow", {"text": bad, "rule": "", "op": op})
        assert r.status_code == 422
        shown = re.findall(r'data-editor="">(.*?)</ul>', r.text, re.S)[0]
        assert [html.unescape(m) for m in re.findall(r"<li>(.*?)</li>", shown)] == expected.value.problems
        assert "rule &#39;note-ping&#39;: trigger: unknown event type &#39;call_complete&#39;" in shown
        typed = re.findall(r'<textarea name="text"[^>]*data-editor=""[^>]*>(.*?)</textarea>', r.text, re.S)
        assert [html.unescape(t) for t in typed] == [bad]  # the text as typed stays in the editor
    cycle = """rules:
  - {name: ping, trigger: notification, actions: [{notify: {to: owner, message: ping}}]}
"""
    r = admin.post_form("/admin/workflow", "/admin/workflow", {"text": cycle, "op": "save"})
    assert r.status_code == 422 and "rule cycle ping -&gt; ping" in r.text
    syntax = admin.post_form("/admin/workflow", "/admin/workflow", {"text": "rules: [", "op": "save"})
    assert syntax.status_code == 422 and "YAML syntax error at line" in syntax.text
    assert _stored_rules(sqlite_engine) == {}


def test_workflow_save_versions_enable_disable_export_defaults(
    browser: Callable[[str | None], Browser], sqlite_engine: Engine
) -> None:
    from leadpilot.workflow import service as workflow_service

    admin = browser("admin")
    checked = admin.post_form("/admin/workflow", "/admin/workflow", {"text": GOOD_RULE, "op": "validate"})
    assert checked.status_code == 200 and "Valid: note-ping" in checked.text
    assert _stored_rules(sqlite_engine) == {}
    saved = admin.post_form("/admin/workflow", "/admin/workflow", {"text": GOOD_RULE, "op": "save"})
    assert saved.status_code == 303 and "done=saved" in saved.headers["location"]
    assert _stored_rules(sqlite_engine) == {"note-ping": (1, False)}
    page = admin.get("/admin/workflow").text
    assert re.search(r'<tr data-rule="note-ping">.*?data-field="version">v1<', page, re.S)
    changed = GOOD_RULE.replace("has a new note", "got a note")
    assert admin.post_form("/admin/workflow", "/admin/workflow", {"text": changed, "op": "save"}).status_code == 303
    assert _stored_rules(sqlite_engine) == {"note-ping": (2, False)}
    again = admin.post_form("/admin/workflow", "/admin/workflow", {"text": changed, "op": "save"})
    assert again.status_code == 303 and _stored_rules(sqlite_engine)["note-ping"] == (2, False)  # unchanged
    on = admin.post_form("/admin/workflow", "/admin/workflow/enabled", {"name": "note-ping", "enabled": "1"})
    assert on.status_code == 303 and _stored_rules(sqlite_engine)["note-ping"][1] is True
    assert 'data-disable="note-ping"' in admin.get("/admin/workflow").text
    off = admin.post_form("/admin/workflow", "/admin/workflow/enabled", {"name": "note-ping", "enabled": "0"})
    assert off.status_code == 303 and _stored_rules(sqlite_engine)["note-ping"][1] is False
    missing = admin.post_form("/admin/workflow", "/admin/workflow/enabled", {"name": "nope", "enabled": "1"})
    assert missing.status_code == 404 and "no workflow rule named &#39;nope&#39;" in missing.text
    exported = admin.get("/admin/workflow/export")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    with Session(sqlite_engine) as s:
        assert exported.text == workflow_service.export_yaml(s)
    assert "got a note" in exported.text
    defaults = admin.post_form("/admin/workflow", "/admin/workflow/defaults", {})
    assert defaults.status_code == 303
    stored = _stored_rules(sqlite_engine)
    assert stored["escalate-no-follow-up"] == (1, False) and stored["hot-lead-to-sales"] == (1, False)


CONTRACT_FORM: dict[str, Any] = {
    "amount": "1000",
    "currency": "CNY",
    "title": "yearly listing",
    "product_name": ["listing", ""],
    "product_quantity": ["2", ""],
    "product_unit_price": ["500", ""],
}


def _future(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def test_contract_form_shows_installment_errors_and_keeps_input(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.contracts.tables import Contract

    alice = browser("alice")
    url = f"/leads/{org.leads['alice']}"
    lead_page = alice.get(url).text
    assert 'data-testid="contract-form"' in lead_page
    assert 'data-testid="contract-form"' not in alice.get(f"/leads/{org.leads['pool']}").text  # not hers to contract
    form = {
        **CONTRACT_FORM,
        "installment_due_date": [_future(60), "", _future(30)],
        "installment_amount": ["0", "", "1000"],
    }
    r = alice.post_form(url, f"{url}/contracts", form)
    assert r.status_code == 422
    first = re.findall(r'data-problem="installment.1">(.*?)<', r.text)
    second = re.findall(r'data-problem="installment.2">(.*?)<', r.text)  # the blank row is dropped: row 3 is #2
    assert first == ["installment 1: amount: must be greater than 0, not 0"]
    assert second == [
        f"installment 2: due date {_future(30)} must be after installment 1&#39;s ({_future(60)}); dates go up"
    ]
    short = {**form, "installment_due_date": [_future(30), _future(60)], "installment_amount": ["400", "500"]}
    total = alice.post_form(url, f"{url}/contracts", short)
    assert total.status_code == 422 and re.findall(r'data-problem="installments">(.*?)<', total.text) == [
        "installments add up to 900.00, not the contract amount 1,000.00 (difference 100.00)"
    ]
    assert f'value="{_future(60)}"' in r.text and 'value="yearly listing"' in r.text and 'value="listing"' in r.text
    with Session(sqlite_engine) as s:
        assert s.scalar(select(Contract.id)) is None


def test_contract_created_by_the_form_equals_the_service(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.contracts import service as contract_service

    plan = [(_future(10), "400"), (_future(40), "600")]
    alice = browser("alice")
    url = f"/leads/{org.leads['alice']}"
    form = {**CONTRACT_FORM, "installment_due_date": [d for d, _ in plan], "installment_amount": [a for _, a in plan]}
    r = alice.post_form(url, f"{url}/contracts", form)
    assert r.status_code == 303 and r.headers["location"].endswith("?done=created")
    web_id = int(r.headers["location"].split("/")[2].split("?")[0])
    with Session(sqlite_engine) as s:
        made = contract_service.create_contract(
            s,
            actor=org.actor("bob"),
            lead_id=org.leads["bob"],
            amount="1000",
            currency="CNY",
            title="yearly listing",
            products=[{"name": "listing", "quantity": 2, "unit_price": "500"}],
            installments=[{"due_date": d, "amount": a} for d, a in plan],
        )
        s.commit()
        service_id = made.id

    def trace(contract_id: int) -> tuple[Any, ...]:
        with Session(sqlite_engine) as s:
            contract = contract_service.get_contract(s, actor=org.actor("admin"), contract_id=contract_id)
            data = contract_service.contract_json(s, contract)
            events = s.execute(select(Event.type, Event.payload).where(Event.lead_id == contract.lead_id)).all()
            audits = s.scalars(
                select(AuditEntry.action).where(AuditEntry.entity == "contract", AuditEntry.entity_id == contract_id)
            ).all()
        drop = {"id", "number", "lead_id", "owner_id", "created_at"}
        created = [
            {k: v for k, v in p.items() if k not in ("contract_id", "number")}
            for t, p in events
            if t == "contract_created"
        ]
        return {k: v for k, v in data.items() if k not in drop}, created, list(audits)

    assert trace(web_id) == trace(service_id)
    page = alice.get(r.headers["location"]).text
    assert "Contract created" in page and 'data-event="contract_created"' in page
    assert re.search(r'data-installment="2">.*?' + _future(40), page, re.S)
    lead_page = alice.get(url).text
    assert f'data-contract="{web_id}"' in lead_page and ">2 / 0 / 0<" in lead_page
    assert browser("wendy").get(f"/contracts/{web_id}").status_code == 404


def test_send_and_record_payment_via_the_forms(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine, settings: Settings
) -> None:
    from leadpilot.contracts import service as contract_service
    from leadpilot.contracts.signing import make_provider
    from leadpilot.contracts.tables import Payment

    with Session(sqlite_engine) as s:
        contract = contract_service.create_contract(
            s,
            actor=org.actor("alice"),
            lead_id=org.leads["alice"],
            amount="1000",
            installments=[{"due_date": _future(5), "amount": "300"}, {"due_date": _future(35), "amount": "700"}],
        )
        s.commit()
        cid = contract.id
    alice = browser("alice")
    url = f"/contracts/{cid}"
    assert 'data-testid="payment-form"' not in alice.get(url).text  # a draft takes no payments
    sent = alice.post_form(url, f"{url}/send", {})
    assert sent.status_code == 200 and "shown this once" in sent.text
    link = re.search(r'class="signing-link">([^<]+)<', sent.text)
    assert link and "/api/v1/signing/" in link.group(1)
    assert "signing-link" not in alice.get(url).text  # once only
    token = link.group(1).rsplit("/", 1)[1]
    with Session(sqlite_engine) as s:
        provider = make_provider("local", secret_key=settings.resolved_secret_key(), session=s)
        contract_service.answer_signing(s, provider=provider, token=token, decision="sign", signer="Ms Li")
        s.commit()
    assert 'data-testid="payment-form"' in alice.get(url).text
    too_much = alice.post_form(url, f"{url}/payments", {"amount": "350", "reference": "BANK-1", "installment": "1"})
    assert too_much.status_code == 422 and "350.00 is more than the 300.00 still due on installment 1" in too_much.text
    assert 'value="BANK-1"' in too_much.text
    paid = alice.post_form(url, f"{url}/payments", {"amount": "300", "reference": "BANK-1", "installment": ""})
    assert paid.status_code == 303 and paid.headers["location"].endswith("?done=paid")
    repeat = alice.post_form(url, f"{url}/payments", {"amount": "300", "reference": "BANK-1", "installment": ""})
    assert repeat.headers["location"].endswith("?done=paid_before")
    with Session(sqlite_engine) as s:
        assert s.scalars(select(Payment.reference)).all() == ["BANK-1"]
        payload = s.scalars(select(Event.payload).where(Event.type == "payment")).one()
    assert (payload["amount"], payload["installment"], payload["outstanding"]) == (300.0, 1, 700.0)
    page = alice.get(url).text
    assert 'data-figure="paid" data-value="300.0"' in page and 'data-event="payment"' in page
    assert re.search(r'data-installment="1">.*?data-field="status">paid<', page, re.S)


def test_contracts_list_is_scoped_by_role_and_filters(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine, settings: Settings
) -> None:
    from datetime import UTC, datetime, timedelta

    from leadpilot.contracts import service as contract_service
    from leadpilot.contracts.signing import make_provider

    ids: dict[str, int] = {}
    actors = {who: org.actor(who) for who in ("alice", "bob", "wendy")}
    with Session(sqlite_engine) as s:
        for who, actor in actors.items():
            made = contract_service.create_contract(
                s, actor=actor, lead_id=org.leads[who], amount="100", installments=[]
            )
            ids[who] = made.id
        provider = make_provider("local", secret_key=settings.resolved_secret_key(), session=s)
        _c, envelope = contract_service.send_contract(
            s, actor=actors["wendy"], contract_id=ids["wendy"], provider=provider
        )
        contract_service.answer_signing(s, provider=provider, token=envelope.token, decision="sign", signer="W")
        contract_service.remind(s, now=datetime.now(UTC) + timedelta(days=40))  # wendy's installment is overdue
        s.commit()

    def shown(username: str, query: str = "") -> set[int]:
        page = browser(username).get("/contracts" + query)
        assert page.status_code == 200
        return {int(i) for i in re.findall(r'<tr data-contract="(\d+)">', page.text)}

    assert shown("alice") == {ids["alice"]}
    assert shown("sup_east") == {ids["alice"], ids["bob"]}
    assert shown("sup_all") == shown("admin") == set(ids.values())
    assert shown("admin", "?status=signed") == {ids["wendy"]}
    assert shown("admin", "?status=draft") == {ids["alice"], ids["bob"]}
    assert shown("admin", "?overdue=1") == {ids["wendy"]} and shown("sup_east", "?overdue=1") == set()
    assert browser("admin").get("/contracts?status=nope").status_code == 422
    assert browser("screener").get("/contracts").status_code == 403


def test_new_forms_need_the_csrf_token(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.contracts.tables import Contract

    admin = browser("admin")
    for action, data in (
        ("/admin/workflow", {"text": GOOD_RULE, "op": "save"}),
        ("/admin/workflow/enabled", {"name": "note-ping", "enabled": "1"}),
        ("/admin/workflow/defaults", {}),
        (f"/leads/{org.leads['alice']}/contracts", {"amount": "100"}),
        ("/contracts/1/send", {}),
        ("/contracts/1/payments", {"amount": "1", "reference": "x"}),
    ):
        assert admin.client.post(action, data={**data, "csrf_token": "forged"}).status_code == 403, action
    assert _stored_rules(sqlite_engine) == {}
    with Session(sqlite_engine) as s:
        assert s.scalar(select(Contract.id)) is None


def test_contract_summaries_on_sqlite_and_postgresql(engine: Engine, settings: Settings) -> None:
    """The lead panel's and the list's grouped installment counts and the overdue filter on both backends."""
    from datetime import UTC, datetime, timedelta

    from leadpilot.contracts import service as contract_service
    from leadpilot.contracts.signing import make_provider
    from leadpilot.web.contract_pages import overdue_contracts, plan_summary

    org = build_org(engine)
    alice, admin, sup_east, wendy = (org.actor(u) for u in ("alice", "admin", "sup_east", "wendy"))
    soon, later = (datetime.now(UTC).date() + timedelta(days=d) for d in (5, 35))
    with Session(engine) as s:
        made = contract_service.create_contract(
            s,
            actor=alice,
            lead_id=org.leads["alice"],
            amount="1000",
            installments=[{"due_date": soon, "amount": "300"}, {"due_date": later, "amount": "700"}],
        )
        provider = make_provider("local", secret_key=settings.resolved_secret_key(), session=s)
        _c, envelope = contract_service.send_contract(s, actor=alice, contract_id=made.id, provider=provider)
        contract_service.answer_signing(s, provider=provider, token=envelope.token, decision="sign", signer="Li")
        contract_service.record_payment(s, actor=alice, contract_id=made.id, amount="300", reference="R-1")
        s.commit()
        assert plan_summary(s, [made.id]) == {made.id: {"total": 2, "paid": 1, "due": 1, "overdue": 0}}
        assert overdue_contracts(s, actor=admin) == []
        contract_service.remind(s, now=datetime.now(UTC) + timedelta(days=40))
        s.commit()
        assert plan_summary(s, [made.id])[made.id]["overdue"] == 1
        assert [c.id for c in overdue_contracts(s, actor=sup_east)] == [made.id]
        assert overdue_contracts(s, actor=wendy) == []


# --- admin pages that manage: users and teams, model registry actions (issue #7) -----------------------------


def _user_row(engine: Engine, username: str) -> dict[str, Any] | None:
    from leadpilot.crm.models import User

    with Session(engine) as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            return None
        fields = ("role", "full_name", "email", "team_id", "product_lines", "regions", "daily_capacity")
        return {f: getattr(user, f) for f in (*fields, "work_start", "work_end", "time_zone", "is_active")}


def _audits(engine: Engine, entity: str) -> list[tuple[str, int | None, dict[str, Any]]]:
    with Session(engine) as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.entity == entity).order_by(AuditEntry.id))
        return [(a.action, a.entity_id, a.detail) for a in rows]


def test_user_created_by_the_form_equals_the_service(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.crm import people
    from leadpilot.crm.models import User

    admin = browser("admin")
    east = org.teams["east"]
    form = {
        "username": "carol",
        "password": "long-enough-1",
        "role": "sales",
        "full_name": "Carol Chen",
        "email": "",
        "team_id": str(east),
        "product_lines": "cars, homes",
        "regions": "north",
        "daily_capacity": "35",
        "work_start": "08:30",
        "work_end": "17:30",
        "time_zone": "Asia/Shanghai",
    }
    made = admin.post_form("/admin/users", "/admin/users", form)
    assert made.status_code == 303 and "done=user_created" in made.headers["location"]
    with Session(sqlite_engine) as s:
        people.create_user(
            s,
            actor=org.actor("admin"),
            data=schemas.UserCreate(
                username="dave",
                password="long-enough-1",
                role="sales",
                full_name="Carol Chen",
                team_id=east,
                product_lines=["cars", "homes"],
                regions=["north"],
                daily_capacity=35,
                work_start="08:30",
                work_end="17:30",
                time_zone="Asia/Shanghai",
            ),
        )
        s.commit()
        ids = {u.username: u.id for u in s.scalars(select(User).where(User.username.in_(["carol", "dave"])))}
    assert _user_row(sqlite_engine, "carol") == _user_row(sqlite_engine, "dave")
    trail = {d["username"]: (a, entity_id, d) for a, entity_id, d in _audits(sqlite_engine, "user") if a == "create"}
    assert trail["carol"] == ("create", ids["carol"], {"username": "carol", "role": "sales"})
    assert trail["dave"][0] == "create" and set(trail["dave"][2]) == set(trail["carol"][2])
    page = admin.get(made.headers["location"]).text
    assert "User created: carol" in page and f'data-user="{ids["carol"]}"' in page
    carol = browser(None)  # the new user signs in with the password typed in the form
    login = {"username": "carol", "password": "long-enough-1", "csrf_token": csrf_of(carol.get("/login").text)}
    assert carol.client.post("/login", data=login).status_code == 303
    assert carol.get("/queue").status_code == 200


def test_bad_user_and_team_forms_show_errors_keep_values_and_write_nothing(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    import html

    admin = browser("admin")
    before = len(_audits(sqlite_engine, "user")), len(_audits(sqlite_engine, "team"))
    short = admin.post_form(
        "/admin/users",
        "/admin/users",
        {"username": "erin", "password": "short", "role": "sales", "full_name": "Erin Typed", "time_zone": "UTC"},
    )
    assert short.status_code == 422
    text = html.unescape(short.text)
    assert 'data-error="password"' in text and "at least 8 characters" in text
    assert 'value="erin"' in text and 'value="Erin Typed"' in text
    unknown_team = admin.post_form(
        "/admin/users",
        "/admin/users",
        {"username": "erin", "password": "long-enough-1", "role": "sales", "team_id": "9999"},
    )
    assert unknown_team.status_code == 422
    assert 'data-error="team_id"' in unknown_team.text and "team_id 9999 does not exist" in unknown_team.text
    zone = admin.post_form(
        "/admin/users",
        "/admin/users",
        {"username": "erin", "password": "long-enough-1", "role": "sales", "time_zone": "Mars/Base"},
    )
    assert zone.status_code == 422 and "unknown time zone" in html.unescape(zone.text)
    taken = admin.post_form("/admin/users", "/admin/users", {"username": "alice", "password": "x" * 9, "role": "sales"})
    assert taken.status_code == 409 and 'data-error="username"' in taken.text
    bad_hours = admin.post_form("/admin/users", f"/admin/users/{org.users['bob'].id}", {"work_start": "25:00"})
    assert bad_hours.status_code == 422 and 'data-error="work_start"' in bad_hours.text
    assert 'value="25:00"' in bad_hours.text  # the value as typed, in bob's open edit form
    loop = admin.post_form("/admin/users", f"/admin/teams/{org.teams['sales']}", {"parent_id": str(org.teams["east"])})
    assert loop.status_code == 409 and "cannot be moved under itself" in loop.text
    blank = admin.post_form("/admin/users", "/admin/teams", {"name": "", "kind": "sales"})
    assert blank.status_code == 422 and 'data-error="name"' in blank.text
    assert _user_row(sqlite_engine, "erin") is None
    assert (len(_audits(sqlite_engine, "user")), len(_audits(sqlite_engine, "team"))) == before


def test_edit_deactivate_and_teams_via_the_forms(
    browser: Callable[[str | None], Browser], app: Any, org: Org, sqlite_engine: Engine
) -> None:
    from leadpilot.crm.models import Team

    admin = browser("admin")
    bob_id = org.users["bob"].id
    edited = admin.post_form(
        "/admin/users",
        f"/admin/users/{bob_id}",
        {"team_id": str(org.teams["west"]), "daily_capacity": "7", "regions": "south, west", "role": "sales"},
    )
    assert edited.status_code == 303
    row = _user_row(sqlite_engine, "bob")
    assert row is not None and (row["team_id"], row["daily_capacity"], row["regions"]) == (
        org.teams["west"],
        7,
        ["south", "west"],
    )
    action, entity_id, detail = _audits(sqlite_engine, "user")[-1]
    assert (action, entity_id) == ("update", bob_id) and set(detail) == {"team_id", "daily_capacity", "regions"}
    bob = browser("bob")
    assert bob.get("/queue").status_code == 200
    gone = admin.post_form("/admin/users", f"/admin/users/{bob_id}/deactivate", {})
    assert gone.status_code == 303 and "done=user_deactivated" in gone.headers["location"]
    assert _audits(sqlite_engine, "user")[-1][:2] == ("deactivate", bob_id)
    assert bob.get("/queue").status_code == 303  # the session ends at once (cached actors forgotten)
    self_off = admin.post_form("/admin/users", f"/admin/users/{org.users['admin'].id}/deactivate", {})
    assert self_off.status_code == 409 and "cannot deactivate yourself" in self_off.text

    made = admin.post_form(
        "/admin/users", "/admin/teams", {"name": "north", "kind": "sales", "parent_id": str(org.teams["sales"])}
    )
    assert made.status_code == 303
    with Session(sqlite_engine) as s:
        north = s.scalar(select(Team).where(Team.name == "north"))
        assert north is not None and north.parent_id == org.teams["sales"]
    assert _audits(sqlite_engine, "team")[-1] == ("create", north.id, {"name": "north"})
    moved = admin.post_form(
        "/admin/users",
        f"/admin/teams/{north.id}",
        {"name": "north-2", "kind": "opportunity", "parent_id": "", "fields": "name,kind,parent_id"},
    )
    assert moved.status_code == 303
    with Session(sqlite_engine) as s:
        team = s.get_one(Team, north.id)
        assert (team.name, team.kind, team.parent_id) == ("north-2", "opportunity", None)
    assert _audits(sqlite_engine, "team")[-1][:2] == ("update", north.id)
    assert "新建团队" in admin.get("/admin/users?lang=zh").text


def test_users_page_roles_and_supervisor_limits(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    assert browser("alice").get("/admin/users").status_code == 403
    alice = browser("alice")
    alice.client.cookies.set(CSRF_COOKIE, "t")
    refused = alice.client.post("/admin/users", data={"username": "x1", "password": "y" * 9, "role": "admin"})
    assert refused.status_code == 403  # no token
    assert (
        alice.client.post(
            "/admin/users", data={"username": "x1", "password": "y" * 9, "role": "admin", "csrf_token": "t"}
        ).status_code
        == 403
    )  # right token, wrong role
    sup = browser("sup_east")
    page = sup.get("/admin/users")
    alice_id, wendy_id = org.users["alice"].id, org.users["wendy"].id
    assert page.status_code == 200 and 'data-testid="new-user"' not in page.text
    assert f'data-testid="edit-user-{alice_id}"' in page.text and 'name="role"' not in page.text
    assert 'data-testid="new-team"' not in page.text and "deactivate-" not in page.text
    ok = sup.post_form("/admin/users", f"/admin/users/{alice_id}", {"daily_capacity": "3", "work_end": "16:00"})
    assert ok.status_code == 303
    row = _user_row(sqlite_engine, "alice")
    assert row is not None and (row["daily_capacity"], row["work_end"]) == (3, "16:00")
    role = sup.post_form("/admin/users", f"/admin/users/{alice_id}", {"role": "admin"})
    assert role.status_code == 403 and "only an admin may change role" in role.text
    other = sup.post_form("/admin/users", f"/admin/users/{wendy_id}", {"daily_capacity": "1"})
    assert other.status_code == 404  # outside the subtree: as the API, never revealed
    created = sup.post_form("/admin/users", "/admin/users", {"username": "x2", "password": "y" * 9, "role": "sales"})
    assert created.status_code == 403 and "only an admin may create users" in created.text
    team = sup.post_form("/admin/users", "/admin/teams", {"name": "mine", "kind": "sales"})
    assert team.status_code == 403 and "only an admin may create teams" in team.text
    off = sup.post_form("/admin/users", f"/admin/users/{alice_id}/deactivate", {})
    assert off.status_code == 403
    assert _user_row(sqlite_engine, "x1") is None and _user_row(sqlite_engine, "x2") is None
    row = _user_row(sqlite_engine, "alice")
    assert row is not None and row["role"] == "sales" and row["is_active"]
    admin = browser("admin")
    for action, data in (
        ("/admin/users", {"username": "x3", "password": "y" * 9, "role": "sales"}),
        (f"/admin/users/{alice_id}", {"daily_capacity": "1"}),
        (f"/admin/users/{alice_id}/deactivate", {}),
        ("/admin/teams", {"name": "t", "kind": "sales"}),
        (f"/admin/teams/{org.teams['east']}", {"name": "t"}),
        ("/admin/models/transfer/1/promote", {}),
        ("/admin/models/transfer/rollback", {}),
        ("/admin/models/transfer/1/challenger", {}),
    ):
        assert admin.client.post(action, data={**data, "csrf_token": "forged"}).status_code == 403, action
        assert admin.client.post(action, data=data).status_code == 403, action
    row = _user_row(sqlite_engine, "alice")
    assert row is not None and row["daily_capacity"] == 3 and row["is_active"]


def _register_versions(engine: Engine, settings: Settings, tmp_path: Any, name: str, n: int) -> None:
    from leadpilot.models import registry

    source = tmp_path / f"{name}-model"
    source.mkdir()
    (source / "model.json").write_text("{}")
    with Session(engine) as s:
        for i in range(n):
            meta = {"metrics": {"auc": 0.6 + i / 100}, "data_range": {"n_train": 10, "n_test": 5}}
            registry.register(s, actor=SYSTEM, name=name, source=source, data_dir=settings.data_dir, meta=meta)
        s.commit()


def _statuses(engine: Engine, name: str) -> dict[int, str]:
    from leadpilot.models import registry

    with Session(engine) as s:
        return {v.version: v.status for v in registry.list_versions(s, name=name)}


def test_models_page_promotes_and_rolls_back_like_the_api(
    browser: Callable[[str | None], Browser], app: Any, settings: Settings, sqlite_engine: Engine, tmp_path: Any
) -> None:
    import html

    _register_versions(sqlite_engine, settings, tmp_path, "web_m", 2)
    _register_versions(sqlite_engine, settings, tmp_path, "api_m", 2)
    admin = browser("admin")
    page = admin.get("/admin/models").text
    assert 'data-testid="promote-web_m-1"' in page and 'data-testid="rollback-web_m"' in page
    api = TestClient(app)
    token = api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    nothing = admin.post_form("/admin/models", "/admin/models/web_m/rollback", {})
    assert nothing.status_code == 409 and "has no champion to roll back from" in html.unescape(nothing.text)
    for version in (1, 2):
        r = admin.post_form("/admin/models", f"/admin/models/web_m/{version}/promote", {})
        assert r.status_code == 303 and "done=promote" in r.headers["location"]
        assert api.post(f"/api/v1/scoring/models/api_m/{version}/promote", headers=auth).status_code == 200
    assert _statuses(sqlite_engine, "web_m") == _statuses(sqlite_engine, "api_m") == {2: "champion", 1: "archived"}
    again = admin.post_form("/admin/models", "/admin/models/web_m/2/promote", {})
    assert again.status_code == 409 and "already the champion" in again.text
    back = admin.post_form("/admin/models", "/admin/models/web_m/rollback", {})
    assert back.status_code == 303 and "done=rollback" in back.headers["location"]
    assert api.post("/api/v1/scoring/models/api_m/rollback", headers=auth).status_code == 200
    assert _statuses(sqlite_engine, "web_m") == _statuses(sqlite_engine, "api_m") == {1: "champion", 2: "archived"}
    _register_versions(sqlite_engine, settings, tmp_path, "one_m", 1)
    assert admin.post_form("/admin/models", "/admin/models/one_m/1/promote", {}).status_code == 303
    first = admin.post_form("/admin/models", "/admin/models/one_m/rollback", {})
    assert first.status_code == 409 and "v1 is the first champion: nothing to roll back to" in first.text
    assert 'data-testid="error"' in first.text and _statuses(sqlite_engine, "one_m") == {1: "champion"}
    challenger = admin.post_form("/admin/models", "/admin/models/web_m/2/challenger", {})
    assert challenger.status_code == 303 and _statuses(sqlite_engine, "web_m")[2] == "challenger"
    by_api = api.post("/api/v1/scoring/models/api_m/2/challenger", headers=auth)
    assert by_api.status_code == 200 and by_api.json()["status"] == "challenger"
    assert _statuses(sqlite_engine, "api_m") == {1: "champion", 2: "challenger"}
    champion = api.post("/api/v1/scoring/models/api_m/1/challenger", headers=auth)
    assert champion.status_code == 409 and "cannot also be the challenger" in champion.text
    missing = admin.post_form("/admin/models", "/admin/models/web_m/9/promote", {})
    assert missing.status_code == 404 and "has no version 9" in html.unescape(missing.text)
    with Session(sqlite_engine) as s:
        trail = [
            (a.action, a.detail.get("name"))
            for a in s.scalars(select(AuditEntry).where(AuditEntry.entity == "model_version").order_by(AuditEntry.id))
            if a.action != "create"
        ]
        promoted = [
            (e.payload["model"], e.payload["version"], e.payload["previous"])
            for e in s.scalars(select(Event).where(Event.type == "model_promoted").order_by(Event.id))
        ]
    web_trail = [a for a, n in trail if n == "web_m"]
    assert web_trail == ["promote", "promote", "promote", "challenge"]
    assert [a for a, n in trail if n == "api_m"] == web_trail  # the same audit trail through either door
    assert [p[1:] for p in promoted if p[0] == "web_m"] == [p[1:] for p in promoted if p[0] == "api_m"]
    sup = browser("sup_all")
    read_only = sup.get("/admin/models").text
    assert 'data-testid="read-only"' in read_only and "promote-web_m" not in read_only
    refused = sup.post_form("/admin/models", "/admin/models/web_m/2/promote", {})
    assert refused.status_code == 403 and _statuses(sqlite_engine, "web_m")[1] == "champion"
    assert browser("alice").get("/admin/models").status_code == 403


def test_edit_form_blanks_clear_fields_as_the_page_declares(
    browser: Callable[[str | None], Browser], org: Org, sqlite_engine: Engine
) -> None:
    admin = browser("admin")
    wendy_id = org.users["wendy"].id
    page = admin.get("/admin/users").text
    form = page[page.index(f'data-testid="edit-user-{wendy_id}"') :]
    declared = re.search(r'name="fields" value="([^"]+)"', form)
    assert declared is not None and "team_id" in declared.group(1).split(",")
    data = {"fields": declared.group(1), "team_id": "", "regions": "", "role": "sales", "is_active": "1"}
    data |= {"daily_capacity": "20", "work_start": "09:00", "work_end": "18:00", "time_zone": "UTC"}  # as shown
    assert admin.post_form("/admin/users", f"/admin/users/{wendy_id}", data).status_code == 303
    row = _user_row(sqlite_engine, "wendy")
    assert row is not None and (row["team_id"], row["regions"], row["is_active"]) == (None, [], True)
    sup_page = browser("sup_east").get("/admin/users").text
    sup_fields = re.findall(r'name="fields" value="([^"]+)"', sup_page)
    assert sup_fields and all("role" not in f and "team_id" not in f for f in sup_fields)
