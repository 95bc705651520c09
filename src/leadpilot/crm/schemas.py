"""API schemas, kept apart from the table models: Create / Update / Public per entity.

Every input schema forbids unknown fields, so a typo is a 422 naming the field, not a silent no-op.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from leadpilot.crm.models import AccountSize, Consent, Role, Stage, TaskKind, TaskStatus, TeamKind

T = TypeVar("T")
# Largest id of an ordinary table (PostgreSQL INTEGER) and of the event and audit logs (BIGINT).
MAX_ID = 2**31 - 1
MAX_BIG_ID = 2**63 - 1
RefId = Annotated[int, Field(ge=1, le=MAX_ID)]


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("datetime is out of range once converted to UTC") from exc


# A timestamp with a time zone (a naive one is refused: whose 9 o'clock?), converted to UTC.
UTCTimestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]

Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(max_length=120)]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


class Input(BaseModel):
    """Base of request bodies: unknown fields are errors, strings are trimmed, NUL characters refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    # PATCH bodies: fields whose column cannot be empty; omitting them leaves them alone, null is an error.
    not_null: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _checked(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.not_null:
            raise ValueError(f"{info.field_name} cannot be null; omit it to leave it unchanged")
        if _has_nul(value):
            raise ValueError("text must not contain NUL characters")
        return value


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
    parent_id: RefId | None = None


class TeamUpdate(Input):
    not_null = frozenset({"name", "kind"})
    name: Name | None = None
    kind: TeamKind | None = None
    parent_id: RefId | None = None


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
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
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
    team_id: RefId | None = None
    product_lines: list[ShortText] = []
    regions: list[ShortText] = []
    daily_capacity: Annotated[int, Field(ge=0, le=10_000)] = 20
    work_start: str = "09:00"
    work_end: str = "18:00"
    time_zone: Annotated[str, Field(max_length=64)] = "UTC"
    is_active: bool = True


class UserUpdate(_UserFields):
    not_null = frozenset(
        {
            "password",
            "role",
            "full_name",
            "product_lines",
            "regions",
            "daily_capacity",
            "work_start",
            "work_end",
            "time_zone",
            "is_active",
        }
    )
    password: Annotated[str, Field(min_length=8, max_length=200)] | None = None
    role: Role | None = None
    full_name: Annotated[str, Field(max_length=200)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    team_id: RefId | None = None
    product_lines: list[ShortText] | None = None
    regions: list[ShortText] | None = None
    daily_capacity: Annotated[int, Field(ge=0, le=10_000)] | None = None
    work_start: str | None = None
    work_end: str | None = None
    time_zone: Annotated[str, Field(max_length=64)] | None = None
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
    not_null = frozenset({"name"})
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
    account_id: RefId | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=254)] | None = None
    consent: Consent = Consent.UNKNOWN
    do_not_call: bool = False


class ContactUpdate(Input):
    not_null = frozenset({"name", "consent", "do_not_call"})
    name: Annotated[str, Field(max_length=200)] | None = None
    account_id: RefId | None = None
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
    account_id: RefId | None = None
    contact_id: RefId | None = None
    product_line: ShortText | None = None
    source: ShortText | None = None
    region: ShortText | None = None
    budget: Annotated[float, Field(ge=0, le=1e15)] | None = None
    team_id: RefId | None = None
    notes: Annotated[str, Field(max_length=20_000)] = ""
    external_id: ShortText | None = None


class LeadUpdate(Input):
    not_null = frozenset({"title", "notes"})
    title: Annotated[str, Field(max_length=300)] | None = None
    account_id: RefId | None = None
    contact_id: RefId | None = None
    product_line: ShortText | None = None
    source: ShortText | None = None
    region: ShortText | None = None
    budget: Annotated[float, Field(ge=0, le=1e15)] | None = None
    team_id: RefId | None = None
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
    priority: str | None
    notes: str
    external_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class StageChange(Input):
    stage: Stage
    reason: Annotated[str, Field(max_length=300)] | None = None


class AssignRequest(Input):
    owner_id: RefId
    reason: Annotated[str, Field(max_length=300)] | None = None


# --- tasks -------------------------------------------------------------------------------------


class TaskCreate(Input):
    title: Annotated[str, Field(min_length=1, max_length=300)]
    lead_id: RefId | None = None
    assignee_id: RefId | None = None
    kind: TaskKind = TaskKind.FOLLOW_UP
    due_at: UTCTimestamp | None = None


class TaskUpdate(Input):
    not_null = frozenset({"title", "assignee_id", "kind", "status"})
    title: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    assignee_id: RefId | None = None
    kind: TaskKind | None = None
    status: TaskStatus | None = None
    due_at: UTCTimestamp | None = None


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
    lead_id: RefId
    occurred_at: UTCTimestamp | None = None
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
