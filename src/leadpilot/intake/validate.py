"""Validate and normalise one mapped row; every problem is reported with row, field and reason."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields

from leadpilot.crm.errors import Invalid
from leadpilot.crm.models import AccountSize, Consent
from leadpilot.crm.normalise import company_key, normalise_email, normalise_phone
from leadpilot.intake.mapping import Mapping

MAX_LENGTH = {
    "company": 300,
    "contact_name": 200,
    "product_line": 80,
    "source": 80,
    "region": 120,
    "industry": 120,
    "title": 300,
    "notes": 20_000,
    "external_id": 120,
}
# The largest budget the API accepts (LeadCreate.budget), so an imported lead can be saved again.
MAX_AMOUNT = 1e15
_NUMBER_NOISE = re.compile(r"[\s,，_¥￥$€£元]|RMB|CNY|USD|EUR", re.IGNORECASE)
_MULTIPLIERS = {"万": 1e4, "w": 1e4, "亿": 1e8, "k": 1e3, "m": 1e6}
_TRUE = {"1", "true", "yes", "y", "t", "是", "对", "x", "✓"}
_FALSE = {"0", "false", "no", "n", "f", "否", "不", ""}
_CONSENT = {
    "granted": Consent.GRANTED,
    "yes": Consent.GRANTED,
    "y": Consent.GRANTED,
    "1": Consent.GRANTED,
    "true": Consent.GRANTED,
    "opt-in": Consent.GRANTED,
    "是": Consent.GRANTED,
    "同意": Consent.GRANTED,
    "denied": Consent.DENIED,
    "no": Consent.DENIED,
    "n": Consent.DENIED,
    "0": Consent.DENIED,
    "false": Consent.DENIED,
    "opt-out": Consent.DENIED,
    "否": Consent.DENIED,
    "不同意": Consent.DENIED,
    "unknown": Consent.UNKNOWN,
    "": Consent.UNKNOWN,
    "未知": Consent.UNKNOWN,
}
_SIZES = {s.value: s.value for s in AccountSize} | {
    "微型": "micro",
    "小型": "small",
    "中型": "medium",
    "大型": "large",
    "超大型": "enterprise",
}


@dataclass(frozen=True)
class RowError:
    """One problem in one row of the file."""

    row: int
    field: str
    reason: str
    value: str = ""


@dataclass
class CleanRow:
    """A row that passed validation, normalised."""

    row: int
    company: str | None = None
    company_key: str | None = None
    contact_name: str | None = None
    phone: str | None = None
    email: str | None = None
    product_line: str | None = None
    source: str | None = None
    region: str | None = None
    budget: float | None = None
    industry: str | None = None
    company_size: str | None = None
    title: str | None = None
    notes: str | None = None
    external_id: str | None = None
    consent: str = Consent.UNKNOWN.value
    do_not_call: bool = False
    # (folded company name, lower-cased product line): the company + product line de-duplication key.
    company_line: tuple[str, str] | None = None

    def fingerprint(self) -> str:
        """Hash of the normalised values (not the row number): the same row imported twice is a no-op."""
        blob = "\x1f".join("" if (v := getattr(self, name)) is None else str(v) for name in _FINGERPRINT_FIELDS)
        return hashlib.sha256(blob.encode()).hexdigest()


_FINGERPRINT_FIELDS = tuple(f.name for f in fields(CleanRow) if f.name not in ("row", "company_line"))


def parse_amount(text: str) -> float:
    """A non-negative amount from text like '500,000', '¥50万', '1.2k', '3 000 元'."""
    cleaned = _NUMBER_NOISE.sub("", text.strip())
    factor = 1.0
    if cleaned and cleaned[-1].lower() in _MULTIPLIERS:
        factor = _MULTIPLIERS[cleaned[-1].lower()]
        cleaned = cleaned[:-1]
    value = float(cleaned) * factor
    if not 0 <= value <= MAX_AMOUNT:  # also false for NaN
        raise ValueError("negative, not finite or too large")
    return value


def clean_row(number: int, cells: list[str], mapping: Mapping, default_region: str) -> CleanRow | list[RowError]:
    """Validate one row; returns the clean row or every error found in it."""
    raw: dict[str, str] = {}
    for name, index in mapping.columns.items():
        raw[name] = cells[index].strip() if index < len(cells) and cells[index] is not None else ""
    for name, value in mapping.defaults.items():
        if not raw.get(name):
            raw[name] = value
    errors: list[RowError] = []
    row = CleanRow(row=number)
    for name, limit in MAX_LENGTH.items():
        value = raw.get(name, "")
        if len(value) > limit:
            errors.append(RowError(number, name, f"longer than {limit} characters", value[:40] + "…"))
        elif value:
            setattr(row, name, value)
    if not raw.get("company") and not raw.get("contact_name"):
        errors.append(RowError(number, "company", "required: a company or a contact name"))
    if not raw.get("phone") and not raw.get("email"):
        errors.append(RowError(number, "phone", "required: a phone number or an e-mail address"))
    if raw.get("phone"):
        try:
            row.phone = normalise_phone(raw["phone"], default_region)
        except Invalid as exc:
            errors.append(RowError(number, "phone", exc.message, raw["phone"]))
    if raw.get("email"):
        try:
            row.email = normalise_email(raw["email"])
        except Invalid as exc:
            errors.append(RowError(number, "email", exc.message, raw["email"]))
    if raw.get("budget"):
        try:
            row.budget = parse_amount(raw["budget"])
        except ValueError:
            errors.append(RowError(number, "budget", "not a non-negative amount (at most 1e15)", raw["budget"]))
    if raw.get("company_size"):
        size = _SIZES.get(raw["company_size"].lower())
        if size is None:
            allowed = ", ".join(s.value for s in AccountSize)
            errors.append(RowError(number, "company_size", f"unknown size; use one of {allowed}", raw["company_size"]))
        row.company_size = size
    consent = _CONSENT.get(raw.get("consent", "").lower())
    if consent is None:
        errors.append(RowError(number, "consent", "unknown consent; use granted, denied or unknown", raw["consent"]))
    else:
        row.consent = consent.value
    dnc = raw.get("do_not_call", "").lower()
    if dnc in _TRUE:
        row.do_not_call = True
    elif dnc not in _FALSE:
        errors.append(RowError(number, "do_not_call", "not a yes/no value", raw["do_not_call"]))
    if errors:
        return errors
    if row.company:
        row.company_key = company_key(row.company) or None
        if row.company_key:
            row.company_line = (row.company_key, (row.product_line or "").strip().lower())
    return row
