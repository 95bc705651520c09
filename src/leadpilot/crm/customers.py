"""Service functions for accounts (customer companies) and their contacts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm import schemas
from leadpilot.crm.access import Actor, account_scope, contact_scope
from leadpilot.crm.audit import audit, audit_pii_read
from leadpilot.crm.common import apply_changes, get_visible, redact, require_visible
from leadpilot.crm.errors import Forbidden
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import Account, Contact
from leadpilot.crm.normalise import company_key, normalise_email, normalise_phone

ACCOUNT_SORT = sort_keys(Account.id, Account.name, Account.created_at)
CONTACT_SORT = sort_keys(Contact.id, Contact.name, Contact.created_at)
PII_FIELDS = frozenset({"phone", "email"})


# --- accounts ----------------------------------------------------------------------------------


def list_accounts(
    session: Session,
    *,
    actor: Actor,
    q: str | None = None,
    industry: str | None = None,
    region: str | None = None,
    size: str | None = None,
    sort: str = "name",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Account]:
    """Accounts the actor may see (those of visible leads; admins all)."""
    stmt = select(Account).where(account_scope(actor))
    if q:
        stmt = stmt.where(Account.name_key.contains(company_key(q)))
    if industry:
        stmt = stmt.where(Account.industry == industry)
    if region:
        stmt = stmt.where(Account.region == region)
    if size:
        stmt = stmt.where(Account.size == size)
    return paginate(session, stmt, model=Account, sortable=ACCOUNT_SORT, sort=sort, cursor=cursor, limit=limit)


def get_account(session: Session, *, actor: Actor, account_id: int) -> Account:
    """One account the actor may see."""
    return get_visible(session, Account, account_id, account_scope(actor))


def create_account(session: Session, *, actor: Actor, data: schemas.AccountCreate) -> Account:
    """Create an account."""
    fields = data.model_dump()
    fields["size"] = data.size.value if data.size else None
    account = Account(name_key=company_key(data.name), created_by_id=actor.id, **fields)
    session.add(account)
    session.flush()
    audit(session, actor, "create", "account", account.id, {"name": account.name})
    return account


def update_account(session: Session, *, actor: Actor, account_id: int, data: schemas.AccountUpdate) -> Account:
    """Change an account the actor may see."""
    account = get_account(session, actor=actor, account_id=account_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("name"):
        changes["name_key"] = company_key(changes["name"])
    diff = apply_changes(account, changes)
    if diff:
        audit(session, actor, "update", "account", account.id, diff)
    return account


def delete_account(session: Session, *, actor: Actor, account_id: int) -> None:
    """Delete an account (admins); its leads and contacts keep existing without it."""
    account = get_account(session, actor=actor, account_id=account_id)  # 404 before 403: never reveal rows
    if not actor.is_admin:
        raise Forbidden("only an admin may delete accounts")
    session.delete(account)
    audit(session, actor, "delete", "account", account_id)


# --- contacts ----------------------------------------------------------------------------------


def _normalised_contact_fields(changes: dict[str, object], default_region: str) -> dict[str, object]:
    if changes.get("phone"):
        changes["phone"] = normalise_phone(str(changes["phone"]), default_region)
    if changes.get("email"):
        changes["email"] = normalise_email(str(changes["email"]))
    for key in ("phone", "email"):
        if key in changes and changes[key] == "":
            changes[key] = None
    return changes


def list_contacts(
    session: Session,
    *,
    actor: Actor,
    account_id: int | None = None,
    phone: str | None = None,
    email: str | None = None,
    do_not_call: bool | None = None,
    sort: str = "name",
    cursor: str | None = None,
    limit: int = 50,
    default_region: str = "US",
) -> Page[Contact]:
    """Contacts the actor may see; returning their phone/email is audit-logged."""
    stmt = select(Contact).where(contact_scope(actor))
    if account_id is not None:
        stmt = stmt.where(Contact.account_id == account_id)
    if phone:
        stmt = stmt.where(Contact.phone == normalise_phone(phone, default_region))
    if email:
        stmt = stmt.where(Contact.email == normalise_email(email))
    if do_not_call is not None:
        stmt = stmt.where(Contact.do_not_call == do_not_call)
    page = paginate(session, stmt, model=Contact, sortable=CONTACT_SORT, sort=sort, cursor=cursor, limit=limit)
    audit_pii_read(session, actor, [c.id for c in page.items if c.phone or c.email], ["phone", "email"])
    return page


def get_contact(session: Session, *, actor: Actor, contact_id: int) -> Contact:
    """One contact the actor may see; the read of its phone/email is audit-logged."""
    contact = get_visible(session, Contact, contact_id, contact_scope(actor))
    if contact.phone or contact.email:
        audit_pii_read(session, actor, [contact.id], ["phone", "email"])
    return contact


def create_contact(
    session: Session, *, actor: Actor, data: schemas.ContactCreate, default_region: str = "US"
) -> Contact:
    """Create a contact; the phone is normalised to E.164 and the e-mail checked."""
    fields = _normalised_contact_fields(data.model_dump(), default_region)
    fields["consent"] = data.consent.value
    if fields.get("account_id") is not None:
        require_visible(session, Account, fields["account_id"], account_scope(actor), "account_id")
    contact = Contact(created_by_id=actor.id, **fields)
    session.add(contact)
    session.flush()
    audit(session, actor, "create", "contact", contact.id, {"fields": sorted(k for k, v in fields.items() if v)})
    return contact


def update_contact(
    session: Session, *, actor: Actor, contact_id: int, data: schemas.ContactUpdate, default_region: str = "US"
) -> Contact:
    """Change a contact the actor may see."""
    contact = get_visible(session, Contact, contact_id, contact_scope(actor))
    changes = _normalised_contact_fields(data.model_dump(exclude_unset=True), default_region)
    if changes.get("account_id") is not None:
        require_visible(session, Account, changes["account_id"], account_scope(actor), "account_id")
    diff = apply_changes(contact, changes)
    if diff:
        audit(session, actor, "update", "contact", contact.id, redact(diff, PII_FIELDS))
    return contact


def delete_contact(session: Session, *, actor: Actor, contact_id: int) -> None:
    """Delete a contact (admins), e.g. on an erasure request."""
    contact = get_visible(session, Contact, contact_id, contact_scope(actor))
    if not actor.is_admin:
        raise Forbidden("only an admin may delete contacts")
    session.delete(contact)
    audit(session, actor, "delete", "contact", contact_id)
