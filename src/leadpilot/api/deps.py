"""Dependencies shared by the routes: settings, database sessions, the authenticated actor, paging."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import jwt
from fastapi import Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import Engine, Row
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from typing_extensions import TypedDict

from leadpilot.auth.security import decode_access_token
from leadpilot.config import Settings
from leadpilot.crm.access import Actor, actor_for
from leadpilot.crm.listing import Page
from leadpilot.crm.models import User
from leadpilot.crm.schemas import MAX_BIG_ID, MAX_ID, PageOut, UTCTimestamp
from leadpilot.db.engine import read_only_engine

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")
ItemT = TypeVar("ItemT")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


# Sessions connect lazily, so creating one is no I/O: async dependencies, no thread-pool hop. The route
# class below closes them (rolling back anything uncommitted) as soon as the endpoint returns or fails.


async def write_session(request: Request) -> Session:
    """A session for requests that write (including reads that write an audit row); routes commit."""
    return Session(bind=get_engine(request), expire_on_commit=False)


async def read_session(request: Request) -> Session:
    """A session for pure reads (SQLite: a deferred transaction that never waits for writers)."""
    return Session(bind=read_only_engine(get_engine(request)), expire_on_commit=False)


class SessionReleasingRoute(APIRoute):
    """A route that closes its database sessions as soon as the endpoint returns.

    FastAPI tears dependencies down only after the response is serialised, in the same thread pool as
    the endpoints; holding a pooled connection until then lets busy endpoints starve the pool and stall
    the server under load. Results are loaded before the endpoint returns (expire_on_commit is off), so
    closing first is safe.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        @functools.wraps(endpoint)
        def release_after(*args: Any, **kw: Any) -> Any:
            try:
                return endpoint(*args, **kw)
            finally:
                for value in kw.values():
                    if isinstance(value, Session):
                        value.close()

        super().__init__(path, release_after, **kwargs)


async def settings_dependency(request: Request) -> Settings:
    """The app's settings (async: no I/O, so no hop to the thread pool)."""
    return get_settings(request)


SettingsDep = Annotated[Settings, Depends(settings_dependency)]
WriteDB = Annotated[Session, Depends(write_session)]
ReadDB = Annotated[Session, Depends(read_session)]

_UNAUTHORISED = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="not authenticated: send a valid bearer token from POST /api/v1/auth/token",
    headers={"WWW-Authenticate": "Bearer"},
)


# How long a verified token's actor is reused without looking the user up again. A deactivation, role or
# team change made through this worker's API takes effect at once (the routes clear the cache); one made by
# another worker or process (another uvicorn worker, the CLI) within at most this many seconds.
ACTOR_CACHE_SECONDS = 5.0
ACTOR_CACHE_MAX_TOKENS = 10_000


class ActorCache:
    """Bearer token -> Actor for a few seconds, so most requests skip the JWT check and the user lookup.

    Only tokens that verified and whose user was active are stored; an entry is dropped when it is older
    than ``ttl_seconds`` or its token has expired, whichever comes first. Lookups take no lock (one dict
    read); writes and clears do.
    """

    def __init__(
        self,
        ttl_seconds: float = ACTOR_CACHE_SECONDS,
        *,
        max_tokens: int = ACTOR_CACHE_MAX_TOKENS,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_tokens = max_tokens
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        # token -> (actor, monotonic time the entry goes stale, token expiry as a Unix time)
        self._entries: dict[str, tuple[Actor, float, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Actor | None:
        """The cached actor for a token, or None when there is no fresh entry."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        actor, stale_at, token_expires_at = entry
        if self._monotonic() >= stale_at or self._wall_clock() >= token_expires_at:
            self._entries.pop(token, None)
            return None
        return actor

    def put(self, token: str, actor: Actor, token_expires_at: float) -> None:
        """Remember a verified token's actor (no-op when caching is off)."""
        if self.ttl_seconds <= 0:
            return
        now = self._monotonic()
        with self._lock:
            if len(self._entries) >= self.max_tokens:
                live = {k: v for k, v in self._entries.items() if v[1] > now}
                # Still full of fresh entries (many clients): start over rather than grow without bound.
                self._entries = live if len(live) < self.max_tokens else {}
            self._entries[token] = (actor, now + self.ttl_seconds, token_expires_at)

    def clear(self) -> None:
        """Forget every entry: a user, role or team changed, so any actor may be out of date."""
        with self._lock:
            self._entries = {}


def _resolve_actor(request: Request, token: str) -> tuple[Actor, float]:
    """Verify the token and load its user: (actor, token expiry as a Unix time); 401 when not allowed."""
    try:
        claims = decode_access_token(token, secret=request.app.state.secret_key)
        user_id = int(claims["sub"])
        expires_at = float(claims["exp"])
    except (jwt.InvalidTokenError, ValueError, KeyError, TypeError):
        raise _UNAUTHORISED from None
    with Session(bind=read_only_engine(get_engine(request))) as session:
        user = session.get(User, user_id)
        if user is None or not user.is_active:
            raise _UNAUTHORISED
        return actor_for(session, user), expires_at


async def current_actor(request: Request, token: Annotated[str, Depends(oauth2_scheme)]) -> Actor:
    """The actor behind the bearer token; 401 when the token is bad or the user inactive.

    Async so that a cached token costs no hop to the thread pool; only a miss verifies the token and
    reads the user there. See ``ActorCache`` for how stale a cached actor can be.
    """
    cache: ActorCache = request.app.state.actor_cache
    cached = cache.get(token)
    if cached is not None:
        return cached
    actor, expires_at = await run_in_threadpool(_resolve_actor, request, token)
    cache.put(token, actor, expires_at)
    return actor


def forget_cached_actors(request: Request) -> None:
    """Call after changing a user or a team: this worker's cached actors may no longer be right."""
    request.app.state.actor_cache.clear()


CurrentActor = Annotated[Actor, Depends(current_actor)]


@dataclass(frozen=True)
class Paging:
    """Cursor, page size and sort order of a list request."""

    cursor: str | None
    limit: int
    sort: str | None


async def paging(
    request: Request,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size (default 50, at most 500)")] = None,
    sort: Annotated[str | None, Query(max_length=40, description="field, '-' prefix for descending")] = None,
) -> Paging:
    """The paging parameters (async: no I/O, so no hop to the thread pool)."""
    settings = get_settings(request)
    if limit is not None and limit > settings.page_size_max:
        raise HTTPException(422, detail=f"limit must be at most {settings.page_size_max}")
    return Paging(cursor, limit or settings.page_size_default, sort)


PagingDep = Annotated[Paging, Depends(paging)]

# Bounded ids and aware timestamps: an id PostgreSQL cannot hold or a naive time is a 422, never a 500.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
BigIdPath = Annotated[int, Path(ge=1, le=MAX_BIG_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
TimeQuery = Annotated[UTCTimestamp | None, Query(description="ISO 8601 with a time zone")]


def page_response(page: Page[Any], schema: type[BaseModel]) -> Response:
    """A page of results as JSON, serialised once by pydantic (FastAPI's generic encoder costs ~30x more)."""
    body = PageOut[schema](  # type: ignore[valid-type]
        items=[schema.model_validate(item) for item in page.items], next_cursor=page.next_cursor
    )
    return Response(body.model_dump_json(), media_type="application/json")


class RowPage(TypedDict, Generic[ItemT]):
    """The JSON shape of a page (``PageOut``) for items given as dicts."""

    items: list[ItemT]
    next_cursor: str | None


@functools.cache
def _row_page_adapter(schema: type[BaseModel]) -> TypeAdapter[Any]:
    """A serialiser for {"items": [row dicts], "next_cursor": ...} with the JSON form of ``PageOut[schema]``.

    The item type is a TypedDict with the schema's fields and types, so pydantic-core writes the rows
    straight to JSON (same formats: ISO 8601 timestamps, floats, nulls) without building 50 models first.
    """
    fields = {name: field.annotation for name, field in schema.model_fields.items()}
    item = TypedDict(f"{schema.__name__}Row", fields)  # type: ignore[misc]  # fields known at runtime only
    return TypeAdapter(RowPage[item])


def row_page_response(page: Page[Row[Any]], schema: type[BaseModel]) -> Response:
    """A page of plain rows (columns named like ``schema``'s fields) as the JSON of ``PageOut[schema]``."""
    items: list[dict[str, Any]] = []
    if page.items:
        names = page.items[0]._fields
        missing = set(schema.model_fields) - set(names)
        if missing:
            raise RuntimeError(f"rows lack fields of {schema.__name__}: {sorted(missing)}")
        items = [dict(zip(names, row, strict=True)) for row in page.items]
    body = _row_page_adapter(schema).dump_json({"items": items, "next_cursor": page.next_cursor})
    return Response(body, media_type="application/json")
