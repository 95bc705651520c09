"""Under concurrent load the API never holds pooled connections while responses are serialised."""

from __future__ import annotations

import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from leadpilot.api.app import create_app
from leadpilot.auth.security import create_access_token
from leadpilot.config import Settings
from leadpilot.db.engine import make_engine
from tests.conftest import build_org, serve_in_thread


def test_many_concurrent_reads_with_a_tiny_pool(sqlite_template: Path, tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "load.db"
    shutil.copy(sqlite_template, path)
    # Two pooled connections for up to 40 request threads: only works if each request gives its
    # connection back as soon as its endpoint returns.
    engine = make_engine(f"sqlite:///{path}", pool_size=2, max_overflow=0, pool_timeout=5)
    org = build_org(engine)
    token = create_access_token(org.users["admin"], secret=settings.resolved_secret_key(), minutes=5)
    with serve_in_thread(create_app(settings, engine=engine)) as base_url:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:

            def hit(i: int) -> int:
                path = ("/api/v1/leads", "/api/v1/users", "/api/v1/contacts", "/api/v1/events")[i % 4]
                return http.get(path).status_code

            with ThreadPoolExecutor(max_workers=60) as pool:
                statuses = Counter(pool.map(hit, range(600)))
    engine.dispose()
    assert statuses == {200: 600}
