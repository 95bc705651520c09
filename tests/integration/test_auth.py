"""Login (OAuth2 password flow), tokens, throttling of repeated failures, inactive users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.auth.security import hash_password, verify_password
from leadpilot.config import Settings
from leadpilot.crm.models import AuditEntry, User
from tests.conftest import PASSWORD, Org, login


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
