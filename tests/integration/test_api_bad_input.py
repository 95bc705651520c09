"""Bad input never causes a 500 or a half-written row: each kind gets a specific 4xx.

Malformed JSON, JSON that is not an object, unknown fields, wrong types, huge strings, oversized bodies
(declared or streamed), unknown sort fields, forged cursors, out-of-range limits and ids, SQL-looking
filter values, NUL bytes, naive or out-of-range datetimes, non-finite numbers, invalid stages, illegal
stage moves, invalid phone numbers and e-mails, unknown time zones and stale versions.

The write routes are taken from the OpenAPI schema, so a new POST or PATCH route is swept automatically.
The client here does not re-raise server errors: a 500 is reported as a status like any other, so one
test can list every input that still crashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.auth.security import create_access_token
from leadpilot.config import Settings
from leadpilot.crm import customers, schemas, tasks
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Account, Base, Contact, Event, Lead, Task, Team, User
from tests.conftest import Org

API = "/api/v1"
JSON = {"content-type": "application/json"}
INJECTIONS = ["'; DROP TABLE leads; --", "' OR 1=1 --", '" OR ""="', "1) OR (1=1", "%' OR '%'='", "\\'; --"]
HUGE = "x" * 100_000
BIG_INTS = [2**31, 2**63, 10**30]
COUNTED = (Lead, Contact, User, Task, Account, Team)


def _openapi() -> dict[str, Any]:
    """The schema of an app that is never started (no database connection is made)."""
    settings = Settings(_env_file=None, environment="test", secret_key="s" * 40, redis_url=None)  # type: ignore[call-arg]
    return create_app(settings, engine=create_engine("sqlite://")).openapi()


SCHEMA = _openapi()
ROUTES = sorted((method.upper(), path) for path, ops in SCHEMA["paths"].items() for method in ops)
WRITE_ROUTES = [(m, p) for m, p in ROUTES if m in ("POST", "PATCH")]
LIST_ROUTES = [
    p
    for m, p in ROUTES
    if m == "GET" and any(q["name"] == "sort" for q in SCHEMA["paths"][p]["get"].get("parameters", []))
]


def body_schema(method: str, path: str) -> tuple[str | None, dict[str, Any]]:
    """The request body's media type and the properties of its schema (none for body-less routes)."""
    body = SCHEMA["paths"][path][method.lower()].get("requestBody")
    if not body:
        return None, {}
    media, content = next(iter(body["content"].items()))
    schema = content["schema"]  # an optional body is anyOf [its schema, null]
    ref = schema.get("$ref") or next(o["$ref"] for o in schema.get("anyOf", []) if "$ref" in o)
    name = ref.rsplit("/", 1)[1]
    return media, SCHEMA["components"]["schemas"][name].get("properties", {})


def wrong_value(prop: dict[str, Any]) -> Any:
    """A value of the wrong type for a property of the schema."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    option = options[0]
    if "$ref" in option:  # an enum
        return "zz-not-a-member"
    if option.get("format") == "date-time":
        return "not-a-date"
    return {
        "string": 12345,
        "integer": "abc",
        "number": "abc",
        "boolean": "maybe",
        "array": {"not": "a list"},
        "object": "not an object",
    }[option["type"]]


# --- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture
def api(engine: Engine, settings: Settings, org: Org) -> Iterator[TestClient]:
    """A client that reports a server error as a 500 response instead of raising it."""
    with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def admin(org: Org, settings: Settings) -> dict[str, str]:
    token = create_access_token(org.users["admin"], secret=settings.resolved_secret_key(), minutes=30)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ids(org: Org, engine: Engine) -> dict[str, int]:
    """An existing target for each path parameter (an account, a contact and a task are added)."""
    with Session(engine) as s:
        account = customers.create_account(s, actor=SYSTEM, data=schemas.AccountCreate(name="Acme"))
        contact = customers.create_contact(
            s, actor=SYSTEM, data=schemas.ContactCreate(name="Carol", phone="+14155550101", email="carol@example.com")
        )
        task = tasks.create_task(
            s, actor=SYSTEM, data=schemas.TaskCreate(title="call", assignee_id=org.users["alice"].id)
        )
        s.commit()
        event_id = s.scalar(select(func.min(Event.id)))
        return {
            "lead_id": org.leads["alice"],
            "user_id": org.users["bob"].id,
            "team_id": org.teams["west"],
            "account_id": account.id,
            "contact_id": contact.id,
            "task_id": task.id,
            "event_id": event_id or 0,
            "contract_id": 999_999,  # none: a body is validated before the route looks the contract up
        }


def url(path: str, ids: dict[str, int], org: Org) -> str:
    """The path with its parameter filled; claims and releases target a pool lead (both refused for admins)."""
    if path.endswith(("/claim", "/release")):
        return path.replace("{lead_id}", str(org.leads["pool"]))
    for name, value in ids.items():
        path = path.replace("{" + name + "}", str(value))
    return path


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) or 0 for m in COUNTED}


def digest(engine: Engine, models: tuple[type, ...] | None = None) -> str:
    """A digest of the contents of the given tables (default: every table)."""
    tables = [m.__table__ for m in models] if models else Base.metadata.sorted_tables  # type: ignore[attr-defined]
    h = hashlib.sha256()
    with engine.connect() as conn:
        for table in tables:
            for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
                h.update(repr(tuple(row)).encode())
            h.update(b"|")
    return h.hexdigest()


def error_fields(response: httpx.Response) -> set[str]:
    """Every field an error response names: the last part of each validation error's loc, or ``field``."""
    body = response.json()
    named = {str(body["field"])} if body.get("field") else set()
    if isinstance(body.get("detail"), list):
        named |= {str(part) for err in body["detail"] for part in err.get("loc", [])[1:]}
    return named


def padded(obj: bytes, size: int) -> bytes:
    """A JSON object padded with whitespace (still valid JSON) to exactly ``size`` bytes."""
    body = obj[:-1] + b" " * (size - len(obj)) + b"}"
    assert len(body) == size
    return body


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# --- body size ------------------------------------------------------------------------------------------------


def test_declared_oversized_body_is_413_on_every_write_route(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine, settings: Settings
) -> None:
    limit = settings.max_body_bytes
    body = padded(b'{"title": "x"}', limit + 1)
    before = digest(engine)
    got = {p: api.request(m, url(p, ids, org), content=body, headers={**admin, **JSON}) for m, p in WRITE_ROUTES}
    wrong = {p: (r.status_code, r.text[:100]) for p, r in got.items() if r.status_code != 413}
    assert not wrong
    assert all(r.json()["detail"] == f"request body larger than {limit} bytes" for r in got.values())
    assert digest(engine) == before


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_streamed_oversized_body_is_413(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine, settings: Settings
) -> None:
    """A chunked body (no Content-Length) is cut off at the limit too."""
    before = digest(engine)
    wrong = {}
    for method, path, field in [
        ("POST", "/leads", "title"),
        ("PATCH", "/leads/{lead_id}", "title"),
        ("POST", "/contacts", "name"),
    ]:
        body = json.dumps({field: "x", "zz": "a" * settings.max_body_bytes}).encode()
        r = api.request(method, url(API + path, ids, org), content=chunks(body), headers={**admin, **JSON})
        assert "content-length" not in r.request.headers
        if r.status_code != 413 or r.json()["detail"] != f"request body larger than {settings.max_body_bytes} bytes":
            wrong[f"{method} {path}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert digest(engine) == before


def test_body_of_exactly_the_limit_is_accepted(
    api: TestClient, admin: dict[str, str], engine: Engine, settings: Settings
) -> None:
    """The limit is inclusive, declared or streamed (padding with whitespace keeps the JSON valid)."""
    body = padded(b'{"title": "edge"}', settings.max_body_bytes)
    r = api.post(f"{API}/leads", content=body, headers={**admin, **JSON})
    assert r.status_code == 201, r.text
    r = api.post(f"{API}/leads", content=chunks(body), headers={**admin, **JSON})
    assert r.status_code == 201, r.text
    assert counts(engine)["leads"] == 9


# --- JSON shape, unknown fields, wrong types --------------------------------------------------------------------


MALFORMED_JSON = {
    "truncated": b'{"title": ',
    "single quotes": b"{'title': 'x'}",
    "trailing comma": b'{"title": "x",}',
    "trailing text": b'{"title": "x"} trailing',
    "missing comma": b'{"title": "x" "y": 1}',
}


def test_malformed_json_is_422_json_invalid(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    for name, raw in MALFORMED_JSON.items():
        r = api.post(f"{API}/leads", content=raw, headers={**admin, **JSON})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["detail"][0]["type"] == "json_invalid", (name, r.text)
    assert counts(engine) == before


def test_json_that_is_not_an_object_is_422(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    for raw in (b"[1, 2]", b'"title"', b"42", b"true", b"null", b""):
        r = api.post(f"{API}/leads", content=raw, headers={**admin, **JSON})
        assert r.status_code == 422, (raw, r.text)
        assert r.json()["detail"][0]["loc"] == ["body"], (raw, r.text)
    assert counts(engine) == before


def test_unknown_fields_are_422_naming_them(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine
) -> None:
    before = digest(engine, COUNTED)
    checked = 0
    for method, path in WRITE_ROUTES:
        media, _ = body_schema(method, path)
        if media != "application/json":
            continue
        r = api.request(method, url(path, ids, org), json={"zz_unknown": 1}, headers=admin)
        assert r.status_code == 422, (method, path, r.text)
        errors = [e for e in r.json()["detail"] if e["loc"] == ["body", "zz_unknown"]]
        assert [e["type"] for e in errors] == ["extra_forbidden"], (method, path, r.text)
        checked += 1
    assert checked >= 15
    assert digest(engine, COUNTED) == before


GENERIC_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "not json": (b"not json at all", JSON),
    "not json, text/plain": (b"not json at all", {"content-type": "text/plain"}),
    "array": (b"[1, 2, 3]", JSON),
    "string": (b'"a string"', JSON),
    "number": (b"12345", JSON),
    "null": (b"null", JSON),
    "truncated": (b'{"a": ', JSON),
    "two objects": (b"{}{}", JSON),
    "invalid utf-8": (b'{"title": "\xff\xfe"}', JSON),
    "deep nesting": (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON),
}


@pytest.mark.parametrize("method,path", WRITE_ROUTES, ids=[f"{m} {p.removeprefix(API)}" for m, p in WRITE_ROUTES])
def test_malformed_bodies_never_500_and_never_write(
    method: str, path: str, api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine
) -> None:
    """For every POST/PATCH route: junk bodies, then each field with a wrong type and a huge string.

    A JSON route must answer 422 naming the field; nothing may be written to the main tables.
    """
    target = url(path, ids, org)
    media, props = body_schema(method, path)
    before = digest(engine, COUNTED)
    problems: list[str] = []
    for name, (raw, headers) in GENERIC_BODIES.items():
        r = api.request(method, target, content=raw, headers={**admin, **headers})
        if r.status_code >= 500 or (media and r.status_code < 400):
            problems.append(f"{name}: {r.status_code} {r.text[:120]}")
    if media == "application/json":
        for prop, spec in props.items():
            for label, value in (("wrong type", wrong_value(spec)), ("huge string", HUGE)):
                r = api.request(method, target, json={prop: value}, headers=admin)
                if r.status_code != 422 or prop not in error_fields(r):
                    problems.append(f"{prop} ({label}): {r.status_code} {r.text[:120]}")
    elif media:  # the login form
        r = api.request(method, target, data={"username": HUGE, "password": HUGE})
        if r.status_code >= 500:
            problems.append(f"huge form: {r.status_code} {r.text[:120]}")
    assert not problems, "\n".join(problems)
    assert digest(engine, COUNTED) == before


NOT_NULL_FIELDS = [
    ("/leads/{lead_id}", "title"),
    ("/leads/{lead_id}", "notes"),
    ("/users/{user_id}", "full_name"),
    ("/users/{user_id}", "daily_capacity"),
    ("/users/{user_id}", "product_lines"),
    ("/users/{user_id}", "time_zone"),
    ("/users/{user_id}", "is_active"),
    ("/teams/{team_id}", "name"),
    ("/teams/{team_id}", "kind"),
    ("/accounts/{account_id}", "name"),
    ("/contacts/{contact_id}", "consent"),
    ("/contacts/{contact_id}", "do_not_call"),
    ("/tasks/{task_id}", "title"),
    ("/tasks/{task_id}", "status"),
]


def test_null_for_a_required_column_is_422_naming_it(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine
) -> None:
    """PATCH {"field": null} on a column that cannot be empty is invalid input, not a conflict or a crash."""
    before = digest(engine, COUNTED)
    wrong = {}
    for path, field in NOT_NULL_FIELDS:
        r = api.patch(url(API + path, ids, org), json={field: None}, headers=admin)
        if r.status_code != 422 or field not in error_fields(r):
            wrong[f"{path} {field}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert digest(engine, COUNTED) == before


# --- list parameters: sort, cursor, limit, filters ------------------------------------------------------------


def test_unknown_sort_field_is_422_naming_it(api: TestClient, admin: dict[str, str]) -> None:
    assert len(LIST_ROUTES) >= 8
    for path in LIST_ROUTES:
        for sort in ("bogus", "-bogus", "id; DROP TABLE leads", "name' --"):
            r = api.get(path, params={"sort": sort}, headers=admin)
            assert r.status_code == 422, (path, sort, r.text)
            assert r.json()["field"] == "sort"
            assert repr(sort.lstrip("-")) in r.json()["detail"], (path, r.text)


def test_garbage_cursor_is_422(api: TestClient, admin: dict[str, str], org: Org) -> None:
    """Undecodable, foreign or forged cursors (wrong value types) are refused naming the cursor."""
    r = api.get(f"{API}/leads", params={"sort": "created_at", "limit": 1}, headers=admin)
    other_sort = r.json()["next_cursor"]
    assert other_sort
    cursors = {
        "garbage": "garbage!!",
        "not base64 json": b64("not json"),
        "no sort": b64('{"v": [1, 2]}'),
        "other sort": other_sort,
        "one value": b64('{"s": "id", "v": [1]}'),
        "strings for ids": b64('{"s": "id", "v": ["x", "y"]}'),
        "nulls": b64('{"s": "id", "v": [null, null]}'),
        "containers": b64('{"s": "id", "v": [[1], {"a": 1}]}'),
        "naive date": b64('{"s": "id", "v": [{"dt": "2020-01-01T00:00:00"}, 1]}'),
        "too long": "A" * 501,
    }
    wrong = {}
    for path in LIST_ROUTES:
        for name, cursor in cursors.items():
            r = api.get(path, params={"sort": "id", "cursor": cursor}, headers=admin)
            if r.status_code != 422 or ("cursor" not in error_fields(r) and r.json().get("field") != "cursor"):
                wrong[f"{path} {name}"] = (r.status_code, r.text[:100])
    assert not wrong


def test_limit_out_of_range_is_422(api: TestClient, admin: dict[str, str], settings: Settings) -> None:
    for path in LIST_ROUTES:
        r = api.get(path, params={"limit": settings.page_size_max + 1}, headers=admin)
        assert r.status_code == 422, (path, r.text)
        assert str(settings.page_size_max) in str(r.json()["detail"])
        for limit in (0, -1, "ten", 10**30, 1.5):
            r = api.get(path, params={"limit": limit}, headers=admin)
            assert r.status_code == 422, (path, limit, r.text)
        assert api.get(path, params={"limit": settings.page_size_max}, headers=admin).status_code == 200


TEXT_FILTERS = [
    ("/leads", "q"),
    ("/leads", "product_line"),
    ("/leads", "region"),
    ("/leads", "source"),
    ("/accounts", "q"),
    ("/accounts", "industry"),
    ("/accounts", "region"),
    ("/events", "type"),
    ("/audit", "entity"),
    ("/audit", "action"),
]
TYPED_FILTERS = [
    ("/leads", "stage"),
    ("/leads", "owner_id"),
    ("/leads", "created_after"),
    ("/tasks", "status"),
    ("/teams", "kind"),
    ("/users", "role"),
    ("/accounts", "size"),
    ("/contacts", "phone"),
    ("/contacts", "email"),
]


def test_sql_looking_filter_values_match_nothing(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    for value in INJECTIONS:
        for path, param in TEXT_FILTERS:
            r = api.get(API + path, params={param: value}, headers=admin)
            assert r.status_code == 200, (value, path, param, r.text)
            assert r.json()["items"] == [], (value, path, param)
        for path, param in TYPED_FILTERS:
            r = api.get(API + path, params={param: value}, headers=admin)
            assert r.status_code == 422, (value, path, param, r.text)
            assert param in error_fields(r), (value, path, param, r.text)
    # the tables are intact and whole
    assert counts(engine) == before
    r = api.get(f"{API}/leads", headers=admin)
    assert len(r.json()["items"]) == 7


def test_text_filters_match_literally(api: TestClient, admin: dict[str, str]) -> None:
    """LIKE wildcards in a text filter are plain characters: '%' and '_' match nothing here."""
    for q in ("%", "_", "%%", "a%"):
        r = api.get(f"{API}/leads", params={"q": q}, headers=admin)
        assert r.status_code == 200
        assert r.json()["items"] == [], q
    r = api.get(f"{API}/leads", params={"q": "pool"}, headers=admin)
    assert sorted(x["title"] for x in r.json()["items"]) == ["pool", "pool2"]


# --- ids, NUL bytes, numbers, datetimes ----------------------------------------------------------------------


def test_out_of_range_ids_never_500(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine
) -> None:
    """Ids beyond any integer column, negative or zero: 404 or 422, in paths, filters and bodies."""
    before = digest(engine, COUNTED)
    problems = []
    bodies = {"/stage": {"stage": "lost"}, "/assign": {"owner_id": org.users["bob"].id}}
    for method, path in ROUTES:
        if "{" not in path:
            continue
        body = next((b for suffix, b in bodies.items() if path.endswith(suffix)), {})
        for bad in (*BIG_INTS, -1, 0):
            target = path.split("{")[0] + str(bad) + path.split("}")[1]
            r = api.request(method, target, json=body if method in ("POST", "PATCH") else None, headers=admin)
            if r.status_code not in (403, 404, 422):  # 403: admins never claim, whatever the id
                problems.append(f"{method} {target}: {r.status_code} {r.text[:80]}")
    for path, param in [
        ("/leads", "owner_id"),
        ("/leads", "account_id"),
        ("/tasks", "lead_id"),
        ("/events", "lead_id"),
        ("/audit", "entity_id"),
        ("/users", "team_id"),
        ("/teams", "parent_id"),
        ("/contacts", "account_id"),
    ]:
        for bad in BIG_INTS:
            r = api.get(API + path, params={param: bad}, headers=admin)
            if not (r.status_code == 422 or (r.status_code == 200 and r.json()["items"] == [])):
                problems.append(f"GET {path}?{param}={bad}: {r.status_code} {r.text[:80]}")
    for path, body in [
        ("/leads", {"team_id": 10**30}),
        ("/leads", {"account_id": 2**63}),
        ("/leads", {"contact_id": 2**31}),
        ("/contacts", {"account_id": 10**30}),
        ("/tasks", {"title": "t", "assignee_id": 2**63}),
        ("/tasks", {"title": "t", "lead_id": 2**31}),
        ("/events", {"type": "note", "lead_id": 2**63}),
        ("/users", {"username": "zed", "password": "long-enough", "role": "sales", "team_id": 2**31}),
        ("/teams", {"name": "z", "kind": "sales", "parent_id": 10**30}),
    ]:
        r = api.post(API + path, json=body, headers=admin)
        if r.status_code not in (404, 422):
            problems.append(f"POST {path} {body}: {r.status_code} {r.text[:80]}")
    assert not problems, "\n".join(problems)
    assert digest(engine, COUNTED) == before


def test_nul_bytes_in_text_are_422(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    """PostgreSQL cannot store NUL in text; both backends refuse it the same way, naming the field."""
    before = counts(engine)
    wrong = {}
    for path, body in [
        ("/leads", {"title": "a\x00b"}),
        ("/accounts", {"name": "Acme\x00"}),
        ("/contacts", {"name": "\x00"}),
        ("/tasks", {"title": "call\x00"}),
    ]:
        r = api.post(API + path, json=body, headers=admin)
        if r.status_code != 422 or next(iter(body)) not in error_fields(r):
            wrong[path] = (r.status_code, r.text[:100])
    assert not wrong
    assert counts(engine) == before


def test_nul_bytes_never_500(api: TestClient, admin: dict[str, str], org: Org, engine: Engine) -> None:
    before = digest(engine, COUNTED)
    r = api.post(
        f"{API}/events", json={"type": "note", "lead_id": org.leads["alice"], "payload": {"k": "a\x00"}}, headers=admin
    )
    assert r.status_code in (201, 422), r.text
    for path, param in TEXT_FILTERS:
        r = api.get(API + path, params={param: "a\x00b"}, headers=admin)
        assert r.status_code in (200, 422), (path, param, r.status_code, r.text[:100])
        if r.status_code == 200:
            assert r.json()["items"] == []
    assert digest(engine, COUNTED) == before


def test_non_finite_budget_is_422(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    wrong = {}
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        r = api.post(f"{API}/leads", content=b'{"title": "x", "budget": ' + raw + b"}", headers={**admin, **JSON})
        if r.status_code != 422 or "budget" not in error_fields(r):
            wrong[raw.decode()] = (r.status_code, r.text[:100])
        r = api.get(f"{API}/leads", params={"min_budget": raw.decode(), "max_score": raw.decode()}, headers=admin)
        if r.status_code not in (200, 422):
            wrong[f"filter {raw.decode()}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert counts(engine) == before


NAIVE = "2030-01-01T09:00:00"


def test_naive_datetimes_are_rejected(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], org: Org, engine: Engine
) -> None:
    """A timestamp without a zone is ambiguous: 422 naming it, in bodies and in filters."""
    before = digest(engine, COUNTED)
    cases = [
        ("POST", "/events", {"type": "note", "lead_id": org.leads["alice"], "occurred_at": "2020-01-01T09:00:00"}, {}),
        ("POST", "/tasks", {"title": "call", "due_at": NAIVE}, {}),
        ("PATCH", f"/tasks/{ids['task_id']}", {"due_at": NAIVE}, {}),
        ("GET", "/leads", None, {"created_after": NAIVE}),
        ("GET", "/leads", None, {"created_before": NAIVE}),
        ("GET", "/tasks", None, {"due_before": NAIVE}),
        ("GET", "/events", None, {"after": NAIVE}),
        ("GET", "/events", None, {"before": NAIVE}),
    ]
    wrong = {}
    for method, path, body, params in cases:
        field = next(iter(params or body)) if params else next(k for k in body or {} if k in ("occurred_at", "due_at"))
        r = api.request(method, API + path, json=body, params=params, headers=admin)
        if r.status_code != 422 or field not in error_fields(r):
            wrong[f"{method} {path} {field}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert digest(engine, COUNTED) == before
    # the same instants with a zone are fine
    r = api.post(f"{API}/tasks", json={"title": "call", "due_at": NAIVE + "+08:00"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["due_at"].startswith("2030-01-01T01:00:00")
    assert api.get(f"{API}/leads", params={"created_after": NAIVE + "Z"}, headers=admin).status_code == 200


def test_datetimes_that_do_not_fit_utc_are_422(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    wrong = {}
    for value in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        r = api.post(f"{API}/tasks", json={"title": "call", "due_at": value}, headers=admin)
        if r.status_code != 422 or "due_at" not in error_fields(r):
            wrong[f"due_at {value}"] = (r.status_code, r.text[:100])
        r = api.get(f"{API}/leads", params={"created_after": value}, headers=admin)
        if r.status_code != 422 or "created_after" not in error_fields(r):
            wrong[f"created_after {value}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert counts(engine) == before


# --- domain rules: stages, phones, e-mails, time zones, versions ------------------------------------------------


def test_invalid_stage_value_is_422(api: TestClient, admin: dict[str, str], org: Org, engine: Engine) -> None:
    before = digest(engine)
    for stage in ("bogus", "WON", "", 7, None, ["won"]):
        r = api.post(f"{API}/leads/{org.leads['alice']}/stage", json={"stage": stage}, headers=admin)
        assert r.status_code == 422, (stage, r.text)
        assert "stage" in error_fields(r), (stage, r.text)
        r = api.get(f"{API}/leads", params={"stage": str(stage)}, headers=admin)
        assert r.status_code == 422, (stage, r.text)
        assert "stage" in error_fields(r), (stage, r.text)
    assert digest(engine) == before


def test_illegal_transition_is_409_with_the_reason(
    api: TestClient, admin: dict[str, str], org: Org, engine: Engine
) -> None:
    before = digest(engine)  # every table: no event and no audit row either
    for key, target, allowed in [
        ("new", "won", "lost, screening"),
        ("screening", "contacted", "lost, qualified"),
        ("pool", "negotiating", "assigned, lost"),
        ("alice", "qualified", "contacted, lost, recycled"),
    ]:
        lead_id = org.leads[key]
        current = api.get(f"{API}/leads/{lead_id}", headers=admin).json()["stage"]
        r = api.post(f"{API}/leads/{lead_id}/stage", json={"stage": target}, headers=admin)
        assert r.status_code == 409, r.text
        assert r.json()["detail"] == (
            f"lead {lead_id}: cannot move from {current!r} to {target!r}; allowed next stages: {allowed}"
        )
    assert digest(engine) == before


def test_final_stage_cannot_be_left(api: TestClient, admin: dict[str, str], org: Org) -> None:
    lead_id = org.leads["new"]
    assert api.post(f"{API}/leads/{lead_id}/stage", json={"stage": "lost"}, headers=admin).status_code == 200
    r = api.post(f"{API}/leads/{lead_id}/stage", json={"stage": "screening"}, headers=admin)
    assert r.status_code == 409
    assert r.json()["detail"] == f"lead {lead_id}: lead is 'lost', a final stage; it cannot move to 'screening'"


def test_invalid_phone_is_422_naming_phone(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], engine: Engine
) -> None:
    before = digest(engine, COUNTED)
    for phone in ("12345", "not a phone", "+1 555", "+999 1234567", "+1 415 555 01011234", "☎☎☎"):
        r = api.post(f"{API}/contacts", json={"name": "Dan", "phone": phone}, headers=admin)
        assert (r.status_code, r.json().get("field")) == (422, "phone"), r.text
        assert repr(phone) in r.json()["detail"], r.text
        r = api.patch(f"{API}/contacts/{ids['contact_id']}", json={"phone": phone}, headers=admin)
        assert (r.status_code, r.json().get("field")) == (422, "phone"), r.text
        r = api.get(f"{API}/contacts", params={"phone": phone}, headers=admin)
        assert (r.status_code, r.json().get("field")) == (422, "phone"), r.text
    assert digest(engine, COUNTED) == before


def test_phone_is_normalised_and_bad_email_refused(
    api: TestClient, admin: dict[str, str], ids: dict[str, int], engine: Engine
) -> None:
    r = api.post(f"{API}/contacts", json={"name": "Dan", "phone": "(415) 555-0102"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["phone"] == "+14155550102"
    before = digest(engine, COUNTED)
    for email in ("nope", "a@b", "two@@example.com", "sp ace@example.com", "x" * 250 + "@example.com"):
        r = api.post(f"{API}/contacts", json={"name": "Eve", "email": email}, headers=admin)
        assert r.status_code == 422, (email, r.text)
        assert "email" in error_fields(r), email
        r = api.patch(f"{API}/contacts/{ids['contact_id']}", json={"email": email}, headers=admin)
        assert r.status_code == 422, (email, r.text)
    assert digest(engine, COUNTED) == before


def test_bad_time_zone_is_422(api: TestClient, admin: dict[str, str], ids: dict[str, int], engine: Engine) -> None:
    before = digest(engine, COUNTED)
    wrong = {}
    for zone in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "UTC\x00", "", "x" * 300):
        user = {"username": "newbie", "password": "long-enough-pw", "role": "sales", "time_zone": zone}
        r = api.post(f"{API}/users", json=user, headers=admin)
        if r.status_code != 422 or "time_zone" not in error_fields(r):
            wrong[f"create {zone[:20]!r}"] = (r.status_code, r.text[:100])
        r = api.patch(f"{API}/users/{ids['user_id']}", json={"time_zone": zone}, headers=admin)
        if r.status_code != 422 or "time_zone" not in error_fields(r):
            wrong[f"update {zone[:20]!r}"] = (r.status_code, r.text[:100])
    assert not wrong
    assert digest(engine, COUNTED) == before


def test_bad_working_hours_are_422(api: TestClient, admin: dict[str, str], ids: dict[str, int]) -> None:
    for value in ("25:00", "9:00", "09:60", "noon", "09:00:00"):
        r = api.patch(f"{API}/users/{ids['user_id']}", json={"work_start": value}, headers=admin)
        assert r.status_code == 422, (value, r.text)
        assert "work_start" in error_fields(r)


def test_expected_version_mismatch_is_409(api: TestClient, admin: dict[str, str], org: Org, engine: Engine) -> None:
    lead_id = org.leads["alice"]
    current = api.get(f"{API}/leads/{lead_id}", headers=admin).json()
    version = current["version"]
    before = digest(engine)
    r = api.patch(f"{API}/leads/{lead_id}", json={"notes": "stale", "expected_version": version - 1}, headers=admin)
    assert r.status_code == 409
    assert f"since version {version - 1}" in r.json()["detail"]
    assert digest(engine) == before
    r = api.patch(f"{API}/leads/{lead_id}", json={"notes": "fresh", "expected_version": version}, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["notes"], r.json()["version"]) == ("fresh", version + 1)
    r = api.patch(f"{API}/leads/{lead_id}", json={"notes": "again", "expected_version": version}, headers=admin)
    assert r.status_code == 409
    r = api.patch(f"{API}/leads/{lead_id}", json={"expected_version": "one"}, headers=admin)
    assert r.status_code == 422
    assert "expected_version" in error_fields(r)


def test_duplicates_are_409_naming_the_field(api: TestClient, admin: dict[str, str], engine: Engine) -> None:
    before = counts(engine)
    r = api.post(f"{API}/teams", json={"name": "west", "kind": "sales"}, headers=admin)
    assert (r.status_code, r.json().get("field")) == (409, "name")
    r = api.post(f"{API}/users", json={"username": "bob", "password": "long-enough-pw", "role": "sales"}, headers=admin)
    assert (r.status_code, r.json().get("field")) == (409, "username")
    assert counts(engine) == before
