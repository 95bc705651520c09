"""Contacts: people at accounts. Every response carrying a phone or e-mail is audit-logged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from leadpilot.api.deps import (
    CurrentActor,
    IdPath,
    IdQuery,
    PagingDep,
    SessionReleasingRoute,
    SettingsDep,
    WriteDB,
    page_response,
)
from leadpilot.crm import customers
from leadpilot.crm.models import Contact
from leadpilot.crm.schemas import ContactCreate, ContactPublic, ContactUpdate, PageOut

router = APIRouter(prefix="/contacts", tags=["contacts"], route_class=SessionReleasingRoute)


@router.get("", response_model=PageOut[ContactPublic])
def list_contacts(
    actor: CurrentActor,
    db: WriteDB,
    paging: PagingDep,
    settings: SettingsDep,
    account_id: IdQuery = None,
    phone: Annotated[str | None, Query(max_length=40)] = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
    do_not_call: bool | None = None,
) -> Response:
    """List contacts the caller may see."""
    page = customers.list_contacts(
        db,
        actor=actor,
        account_id=account_id,
        phone=phone,
        email=email,
        do_not_call=do_not_call,
        sort=paging.sort or "name",
        cursor=paging.cursor,
        limit=paging.limit,
        default_region=settings.default_phone_region,
    )
    db.commit()
    return page_response(page, ContactPublic)


@router.post("", response_model=ContactPublic, status_code=201)
def create_contact(data: ContactCreate, actor: CurrentActor, db: WriteDB, settings: SettingsDep) -> Contact:
    """Create a contact; the phone is normalised to E.164."""
    contact = customers.create_contact(db, actor=actor, data=data, default_region=settings.default_phone_region)
    db.commit()
    return contact


@router.get("/{contact_id}", response_model=ContactPublic)
def get_contact(contact_id: IdPath, actor: CurrentActor, db: WriteDB) -> Contact:
    """One contact."""
    contact = customers.get_contact(db, actor=actor, contact_id=contact_id)
    db.commit()
    return contact


@router.patch("/{contact_id}", response_model=ContactPublic)
def update_contact(
    contact_id: IdPath, data: ContactUpdate, actor: CurrentActor, db: WriteDB, settings: SettingsDep
) -> Contact:
    """Change a contact."""
    contact = customers.update_contact(
        db, actor=actor, contact_id=contact_id, data=data, default_region=settings.default_phone_region
    )
    db.commit()
    return contact


@router.delete("/{contact_id}", status_code=204)
def delete_contact(contact_id: IdPath, actor: CurrentActor, db: WriteDB) -> Response:
    """Delete a contact (admins)."""
    customers.delete_contact(db, actor=actor, contact_id=contact_id)
    db.commit()
    return Response(status_code=204)
