"""API schemas, kept apart from the table models: Create / Update / Public per entity.

Every input schema forbids unknown fields, so a typo is a 422 naming the field, not a silent no-op.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leadpilot.crm.models import AccountSize, Consent, Role, Stage, TaskKind, TaskStatus, TeamKind

T = TypeVar("T")

Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(max_length=120)]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class Input(BaseModel):
    """Base of request bodies: unknown fields are errors, strings are trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Public(BaseModel):
    """Base of response bodies, read from ORM objects."""

    model_config = ConfigDict(from_attributes=True)


class PageOut(BaseModel, Generic[T]):
    """A page of a list and the cursor to pass for the next one."""

    items: list[T]
    next_cursor: str | None


# --- teams -------------------------------------------------------------------------------------


class TeamCreate(Input):
    name: Name
    kind: TeamKind
    parent_id: int | None = None


class TeamUpdate(Input):
    name: Name | None = None
    kind: TeamKind | None = None
    parent_id: int | None = None


class TeamPublic(Public):
    id: int
    name: str
    kind: str
    parent_id: int | None
    created_at: datetime


# --- users -------------------------------------------------------------------------------------


class _UserFields(Input):
    @field_validator("time_zone", check_fields=False)
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Asia/Shanghai')") from exc
        return value

    @field_validator("work_start", "work_end", check_fields=False)
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError("must be a 24-hour time HH:MM")
        return value


class UserCreate(_UserFields):
    username: Annotated[str, Field(min_length=2, max_length=80, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=200)]
    role: Role
    full_name: Annotated[str, Field(max_length=200)] = ""
    email: Annotated[str, Field(max_length=254)] | None = None
    team_id: int | None = None
    product_lines: list[ShortText] = []
    regions: list[ShortText] = []
    daily_capacity: Annotated[int, Field(ge=0, le=10_000)] = 20
    work_start: str = "09:00"
    work_end: str = "18:00"
    time_zone: str = "UTC"
    is_active: bool = True


class UserUpdate(_UserFields):
    password: Annotated[str, Field(min_length=8, max_length=200)] | None = None
    role: Role | None = None
    full_name: Annotated[str, Field(max_length=200)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    team_id: int | None = None
    product_lines: list[ShortText] | None = None
    regions: list[ShortText] | None = None
    daily_capacity: Annotated[int, Field(ge=0, le=10_000)] | None = None
    work_start: str | None = None
    work_end: str | None = None
    time_zone: str | None = None
    is_active: bool | None = None


class UserPublic(Public):
    id: int
    username: str
    full_name: str
    email: str | None
    role: str
    team_id: int | None
    product_lines: list[str]
    regions: list[str]
    daily_capacity: int
    work_start: str
    work_end: str
    time_zone: str
    is_active: bool


# --- accounts and contacts ---------------------------------------------------------------------


class AccountCreate(Input):
    name: Annotated[str, Field(min_length=1, max_length=300)]
    industry: ShortText | None = None
    region: ShortText | None = None
    size: AccountSize | None = None


class AccountUpdate(Input):
    name: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    industry: ShortText | None = None
    region: ShortText | None = None
    size: AccountSize | None = None


class AccountPublic(Public):
    id: int
    name: str
    industry: str | None
    region: str | None
    size: str | None
    created_at: datetime


class ContactCreate(Input):
    name: Annotated[str, Field(max_length=200)] = ""
    account_id: int | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    consent: Consent = Consent.UNKNOWN
    do_not_call: bool = False


class ContactUpdate(Input):
    name: Annotated[str, Field(max_length=200)] | None = None
    account_id: int | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    consent: Consent | None = None
    do_not_call: bool | None = None


class ContactPublic(Public):
    id: int
    account_id: int | None
    name: str
    phone: str | None
    email: str | None
    consent: str
    do_not_call: bool


# --- leads -------------------------------------------------------------------------------------


class LeadCreate(Input):
    title: Annotated[str, Field(max_length=300)] = ""
    account_id: int | None = None
    contact_id: int | None = None
    product_line: ShortText | None = None
    source: ShortText | None = None
    region: ShortText | None = None
    budget: Annotated[float, Field(ge=0, le=1e15)] | None = None
    team_id: int | None = None
    notes: Annotated[str, Field(max_length=20_000)] = ""
    external_id: ShortText | None = None


class LeadUpdate(Input):
    title: Annotated[str, Field(max_length=300)] | None = None
    account_id: int | None = None
    contact_id: int | None = None
    product_line: ShortText | None = None
    source: ShortText | None = None
    region: ShortText | None = None
    budget: Annotated[float, Field(ge=0, le=1e15)] | None = None
    team_id: int | None = None
    notes: Annotated[str, Field(max_length=20_000)] | None = None
    external_id: ShortText | None = None
    expected_version: int | None = Field(default=None, description="Refuse with 409 if the lead changed since.")


class LeadPublic(Public):
    id: int
    title: str
    account_id: int | None
    contact_id: int | None
    product_line: str | None
    source: str | None
    region: str | None
    budget: float | None
    owner_id: int | None
    team_id: int | None
    stage: str
    stage_changed_at: datetime
    lost_reason: str | None
    score: float | None
    score_transfer: float | None
    score_convert: float | None
    score_updated_at: datetime | None
    notes: str
    external_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class StageChange(Input):
    stage: Stage
    reason: Annotated[str, Field(max_length=300)] | None = None


class AssignRequest(Input):
    owner_id: int
    reason: Annotated[str, Field(max_length=300)] | None = None


# --- tasks -------------------------------------------------------------------------------------


class TaskCreate(Input):
    title: Annotated[str, Field(min_length=1, max_length=300)]
    lead_id: int | None = None
    assignee_id: int | None = None
    kind: TaskKind = TaskKind.FOLLOW_UP
    due_at: datetime | None = None


class TaskUpdate(Input):
    title: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    assignee_id: int | None = None
    kind: TaskKind | None = None
    status: TaskStatus | None = None
    due_at: datetime | None = None


class TaskPublic(Public):
    id: int
    lead_id: int | None
    assignee_id: int
    created_by_id: int | None
    title: str
    kind: str
    status: str
    due_at: datetime | None
    completed_at: datetime | None
    created_at: datetime


# --- events ------------------------------------------------------------------------------------


class EventCreate(Input):
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,39}$")]
    lead_id: int
    occurred_at: datetime | None = None
    payload: dict[str, Any] = {}


class EventPublic(Public):
    id: int
    type: str
    lead_id: int | None
    actor_id: int | None
    occurred_at: datetime
    recorded_at: datetime
    payload: dict[str, Any]


class AuditPublic(Public):
    id: int
    at: datetime
    actor_id: int | None
    action: str
    entity: str
    entity_id: int | None
    detail: dict[str, Any]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
