"""Accounts: the customer companies and merchants."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from leadpilot.api.deps import CurrentActor, IdPath, PagingDep, ReadDB, SessionReleasingRoute, WriteDB, page_response
from leadpilot.crm import customers
from leadpilot.crm.models import Account, AccountSize
from leadpilot.crm.schemas import AccountCreate, AccountPublic, AccountUpdate, PageOut

router = APIRouter(prefix="/accounts", tags=["accounts"], route_class=SessionReleasingRoute)


@router.get("", response_model=PageOut[AccountPublic])
def list_accounts(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    industry: Annotated[str | None, Query(max_length=120)] = None,
    region: Annotated[str | None, Query(max_length=120)] = None,
    size: AccountSize | None = None,
) -> Response:
    """List accounts the caller may see."""
    page = customers.list_accounts(
        db,
        actor=actor,
        q=q,
        industry=industry,
        region=region,
        size=size,
        sort=paging.sort or "name",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, AccountPublic)


@router.post("", response_model=AccountPublic, status_code=201)
def create_account(data: AccountCreate, actor: CurrentActor, db: WriteDB) -> Account:
    """Create an account."""
    account = customers.create_account(db, actor=actor, data=data)
    db.commit()
    return account


@router.get("/{account_id}", response_model=AccountPublic)
def get_account(account_id: IdPath, actor: CurrentActor, db: ReadDB) -> Account:
    """One account."""
    return customers.get_account(db, actor=actor, account_id=account_id)


@router.patch("/{account_id}", response_model=AccountPublic)
def update_account(account_id: IdPath, data: AccountUpdate, actor: CurrentActor, db: WriteDB) -> Account:
    """Change an account."""
    account = customers.update_account(db, actor=actor, account_id=account_id, data=data)
    db.commit()
    return account


@router.delete("/{account_id}", status_code=204)
def delete_account(account_id: IdPath, actor: CurrentActor, db: WriteDB) -> Response:
    """Delete an account (admins)."""
    customers.delete_account(db, actor=actor, account_id=account_id)
    db.commit()
    return Response(status_code=204)
