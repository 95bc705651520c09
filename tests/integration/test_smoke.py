"""A first end-to-end pass: the org fixture, a token, a list of leads per role."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import Org


def test_health_needs_no_auth(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_sales_sees_own_and_pool(client: TestClient, org: Org, auth: dict[str, dict[str, str]]) -> None:
    r = client.get("/api/v1/leads", headers=auth["alice"])
    assert r.status_code == 200, r.text
    titles = sorted(x["title"] for x in r.json()["items"])
    assert titles == ["alice", "pool", "pool2"]
