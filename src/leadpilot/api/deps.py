"""Dependencies shared by the routes: settings, database sessions, the authenticated actor, paging."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.auth.security import decode_access_token
from leadpilot.config import Settings
from leadpilot.crm.access import Actor, actor_for
from leadpilot.crm.listing import Page
from leadpilot.crm.models import User
from leadpilot.crm.schemas import MAX_BIG_ID, MAX_ID, PageOut, UTCTimestamp
from leadpilot.db.engine import read_only_engine

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


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


def current_actor(request: Request, token: Annotated[str, Depends(oauth2_scheme)]) -> Actor:
    """The actor behind the bearer token; 401 when the token is bad or the user inactive."""
    try:
        claims = decode_access_token(token, secret=request.app.state.secret_key)
        user_id = int(claims["sub"])
    except (jwt.InvalidTokenError, ValueError, KeyError):
        raise _UNAUTHORISED from None
    with Session(bind=read_only_engine(get_engine(request))) as session:
        user = session.get(User, user_id)
        if user is None or not user.is_active:
            raise _UNAUTHORISED
        return actor_for(session, user)


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
