"""Login: OAuth2 password flow returning a bearer JWT, with throttling of repeated failures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm

from leadpilot.api.deps import CurrentActor, ReadDB, SessionReleasingRoute, SettingsDep, WriteDB
from leadpilot.auth.security import authenticate, create_access_token
from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.models import User
from leadpilot.crm.schemas import Token, UserPublic

router = APIRouter(prefix="/auth", tags=["auth"], route_class=SessionReleasingRoute)


@router.post("/token", response_model=Token)
def login(
    request: Request, db: WriteDB, settings: SettingsDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Token:
    """Exchange a username and password for a bearer token."""
    result = authenticate(
        db,
        form.username,
        form.password,
        free_failures=settings.login_free_failures,
        max_delay=settings.login_max_delay_seconds,
    )
    if result.retry_after:
        db.commit()
        raise HTTPException(
            429,
            detail=f"too many failed logins; try again in {result.retry_after} s",
            headers={"Retry-After": str(result.retry_after)},
        )
    if result.user is None:
        audit(db, SYSTEM, "login_failed", "user", None, {"username": form.username[:80]})
        db.commit()
        raise HTTPException(401, detail="wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    user = result.user
    audit(db, Actor(id=user.id, role=SYSTEM.role), "login", "user", user.id)
    db.commit()
    token = create_access_token(user, secret=request.app.state.secret_key, minutes=settings.access_token_minutes)
    return Token(access_token=token)


@router.get("/me", response_model=UserPublic)
def me(actor: CurrentActor, db: ReadDB) -> User:
    """The signed-in user."""
    return db.get_one(User, actor.id)
