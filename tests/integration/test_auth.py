"""Login (OAuth2 password flow), tokens, throttling of repeated failures, inactive users."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.api.deps import ActorCache
from leadpilot.auth.security import hash_password, verify_password
from leadpilot.config import Settings
from leadpilot.crm.access import Actor
from leadpilot.crm.models import AuditEntry, Role, User
from tests.conftest import PASSWORD, Org, login


class FakeClock:
    """A clock the test moves by hand (monotonic or Unix time)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _cache_with_fake_clock(client: TestClient) -> FakeClock:
    clock = FakeClock(1000.0)
    client.app.state.actor_cache = ActorCache(monotonic=clock)  # type: ignore[attr-defined]
    return clock


def _change_user_behind_the_apis_back(org: Org, name: str, **values: object) -> None:
    """As another worker process or the CLI would: straight in the database, this app's cache not told."""
    with Session(org.engine) as s:
        user = s.get_one(User, org.users[name].id)
        for key, value in values.items():
            setattr(user, key, value)
        s.commit()


def test_user_deactivated_elsewhere_is_refused_once_the_cache_entry_is_stale(
    client: TestClient, org: Org, auth: dict[str, dict[str, str]]
) -> None:
    clock = _cache_with_fake_clock(client)
    assert client.get("/api/v1/leads", headers=auth["bob"]).status_code == 200
    _change_user_behind_the_apis_back(org, "bob", is_active=False)
    # Within the bound the cached actor may still be used (that is the documented trade-off)...
    clock.now += ActorCache().ttl_seconds - 0.1
    assert client.get("/api/v1/leads", headers=auth["bob"]).status_code == 200
    # ...and never after it.
    clock.now += 0.2
    assert client.get("/api/v1/leads", headers=auth["bob"]).status_code == 401
    assert client.get("/api/v1/leads", headers=auth["alice"]).status_code == 200


def test_role_changed_elsewhere_takes_effect_once_the_cache_entry_is_stale(
    client: TestClient, org: Org, auth: dict[str, dict[str, str]]
) -> None:
    clock = _cache_with_fake_clock(client)
    assert client.get("/api/v1/audit", headers=auth["alice"]).status_code == 403
    _change_user_behind_the_apis_back(org, "alice", role=Role.ADMIN.value)
    clock.now += ActorCache().ttl_seconds + 0.1
    assert client.get("/api/v1/audit", headers=auth["alice"]).status_code == 200
    _change_user_behind_the_apis_back(org, "alice", role=Role.SALES.value)
    clock.now += ActorCache().ttl_seconds + 0.1
    assert client.get("/api/v1/audit", headers=auth["alice"]).status_code == 403


def test_user_and_team_changes_through_the_api_take_effect_at_once(
    client: TestClient, org: Org, auth: dict[str, dict[str, str]]
) -> None:
    _cache_with_fake_clock(client)  # the clock never moves: only the routes' clearing can refresh
    alice = org.users["alice"].id
    assert client.get("/api/v1/audit", headers=auth["alice"]).status_code == 403
    r = client.patch(f"/api/v1/users/{alice}", json={"role": "admin"}, headers=auth["admin"])
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/audit", headers=auth["alice"]).status_code == 200
    # A team moved under sup_east's team widens sup_east's subtree at once.
    sup_east, west = org.actor("sup_east"), org.teams["west"]
    assert client.get(f"/api/v1/leads/{org.leads['wendy']}", headers=auth["sup_east"]).status_code == 404
    r = client.patch(f"/api/v1/teams/{west}", json={"parent_id": sup_east.team_id}, headers=auth["admin"])
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/leads/{org.leads['wendy']}", headers=auth["sup_east"]).status_code == 200


def test_expired_token_is_refused_even_when_its_actor_is_cached(
    client: TestClient, org: Org, settings: Settings
) -> None:
    _cache_with_fake_clock(client)  # frozen: the cache entry itself never goes stale
    expires = int(time.time()) + 2
    token = jwt.encode({"sub": str(org.users["alice"].id), "exp": expires}, settings.resolved_secret_key())
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/leads", headers=headers).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert client.get("/api/v1/leads", headers=headers).status_code == 401


def test_actor_cache_stays_bounded_and_keeps_fresh_entries_until_full() -> None:
    clock = FakeClock(0.0)
    cache = ActorCache(ttl_seconds=5, max_tokens=3, monotonic=clock)
    actor = Actor(id=1, role=Role.SALES)
    far = datetime.now(UTC).timestamp() + 3600
    cache.put("a", actor, far)
    clock.now = 6.0  # "a" is stale now
    cache.put("b", actor, far)
    cache.put("c", actor, far)
    cache.put("d", actor, far)  # full: the stale entry goes, the fresh ones stay
    assert cache.get("a") is None
    assert [cache.get(t) for t in "bcd"] == [actor, actor, actor]
    cache.put("e", actor, far)  # full of fresh entries: starts over instead of growing
    assert len(cache._entries) <= 3 and cache.get("e") == actor
    caching_off = ActorCache(ttl_seconds=0)
    caching_off.put("e", actor, far)
    assert caching_off.get("e") is None


def test_login_returns_a_working_bearer_token(client: TestClient, org: Org) -> None:
    r = client.post("/api/v1/auth/token", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer"
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert "password_hash" not in me.json()


def test_wrong_password_and_unknown_user_get_the_same_401(client: TestClient, org: Org) -> None:
    wrong = client.post("/api/v1/auth/token", data={"username": "alice", "password": "nope-nope"})
    unknown = client.post("/api/v1/auth/token", data={"username": "nobody", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_repeated_failures_are_slowed_down_then_reset_by_success(
    client: TestClient, org: Org, settings: Settings
) -> None:
    for _ in range(settings.login_free_failures):
        assert client.post("/api/v1/auth/token", data={"username": "bob", "password": "bad-pass"}).status_code == 401
    # The next failure sets a wait; during the wait even the right password is refused with 429.
    assert client.post("/api/v1/auth/token", data={"username": "bob", "password": "bad-pass"}).status_code == 401
    r = client.post("/api/v1/auth/token", data={"username": "bob", "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    # Another user is not affected.
    assert client.post("/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}).status_code == 200


def test_failed_and_successful_logins_are_audited(client: TestClient, org: Org) -> None:
    client.post("/api/v1/auth/token", data={"username": "alice", "password": "bad-pass"})
    login(client, "alice")
    with Session(org.engine) as s:
        actions = s.scalars(select(AuditEntry.action).where(AuditEntry.action.in_(["login", "login_failed"]))).all()
    assert sorted(actions) == ["login", "login_failed"]


def test_inactive_user_cannot_log_in_and_old_tokens_stop_working(
    client: TestClient, org: Org, auth: dict[str, dict[str, str]]
) -> None:
    assert client.get("/api/v1/leads", headers=auth["bob"]).status_code == 200  # bob's actor is now cached
    r = client.delete(f"/api/v1/users/{org.users['bob'].id}", headers=auth["admin"])
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert client.post("/api/v1/auth/token", data={"username": "bob", "password": PASSWORD}).status_code == 401
    assert client.get("/api/v1/leads", headers=auth["bob"]).status_code == 401


def test_forged_expired_and_malformed_tokens_are_refused(client: TestClient, org: Org, settings: Settings) -> None:
    user = org.users["alice"]
    now = datetime.now(UTC)
    forged = jwt.encode(
        {"sub": str(user.id), "exp": now + timedelta(minutes=5)}, "another-secret-" + "y" * 32, algorithm="HS256"
    )
    expired = jwt.encode(
        {"sub": str(user.id), "exp": now - timedelta(minutes=1)}, settings.resolved_secret_key(), algorithm="HS256"
    )
    none_alg = jwt.encode({"sub": str(user.id), "exp": now + timedelta(minutes=5)}, None, algorithm="none")
    for token in (forged, expired, none_alg, "not-a-jwt", ""):
        r = client.get("/api/v1/leads", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/api/v1/leads").status_code == 401


def test_passwords_are_stored_as_argon2_hashes(org: Org) -> None:
    with Session(org.engine) as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored is not None and stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert verify_password(stored, PASSWORD) and not verify_password(stored, "wrong-password")
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted
