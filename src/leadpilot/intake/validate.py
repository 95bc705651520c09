"""Validate and normalise one mapped row; every problem is reported with row, field and reason."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from typing import Any

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
_CONSENT_VALUES = {text: consent.value for text, consent in _CONSENT.items()}
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


@dataclass(slots=True)
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

    def fingerprint(self) -> bytes:
        """Hash of the normalised values (not the row number): the same row imported twice is a no-op."""
        return fingerprint(tuple(getattr(self, name) for name in CLEAN_FIELDS))


# A clean row as a plain tuple, in CleanRow's field order: what the importer's worker processes send
# back (a tuple pickles several times faster than an object).
CleanValues = tuple[Any, ...]
CLEAN_FIELDS = tuple(f.name for f in fields(CleanRow))
# Every field but the row number and company_line (derived), in field order.
_FINGERPRINTED = slice(CLEAN_FIELDS.index("company"), CLEAN_FIELDS.index("do_not_call") + 1)
_TEXT_LIMITS = tuple(MAX_LENGTH.items())


def fingerprint(values: CleanValues) -> bytes:
    """SHA-256 of a clean row's normalised values, row number excluded (the digest is unchanged since the
    first release, which stored it as hex, so a re-run recognises rows imported by earlier versions)."""
    blob = "\x1f".join(["" if v is None else str(v) for v in values[_FINGERPRINTED]])
    return hashlib.sha256(blob.encode()).digest()


def parse_amount(text: str) -> float:
    """A non-negative amount from text like '500,000', '¥50万', '1.2k', '3 000 元'."""
    try:  # the common case, a plain number: what float() reads has no noise or suffix for the rules below
        value = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= value <= MAX_AMOUNT:  # also false for NaN
            raise ValueError("negative, not finite or too large")
        return value
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
    result = clean_values(number, cells, mapping, default_region)
    return result if isinstance(result, list) else CleanRow(*result)


def clean_values(number: int, cells: list[str], mapping: Mapping, default_region: str) -> CleanValues | list[RowError]:
    """Validate one row; returns the clean row as a tuple (CleanRow's field order) or every error in it.

    The importer's hot loop: it runs once per row of a file, so it reads plain locals and a dict
    rather than setting attributes one by one.
    """
    raw: dict[str, str] = {}
    size = len(cells)
    for name, index in mapping.columns.items():
        cell = cells[index] if index < size else None
        raw[name] = "" if cell is None else cell.strip()
    for name, default in mapping.defaults.items():
        if not raw.get(name):
            raw[name] = default
    get = raw.get
    errors: list[RowError] = []
    text: dict[str, str] = {}
    for name, limit in _TEXT_LIMITS:
        value = get(name)
        if value:
            if len(value) > limit:
                errors.append(RowError(number, name, f"longer than {limit} characters", value[:40] + "…"))
            else:
                text[name] = value
    raw_phone = get("phone")
    raw_email = get("email")
    if not get("company") and not get("contact_name"):
        errors.append(RowError(number, "company", "required: a company or a contact name"))
    if not raw_phone and not raw_email:
        errors.append(RowError(number, "phone", "required: a phone number or an e-mail address"))
    phone = email = None
    if raw_phone:
        try:
            phone = normalise_phone(raw_phone, default_region)
        except Invalid as exc:
            errors.append(RowError(number, "phone", exc.message, raw_phone))
    if raw_email:
        try:
            email = normalise_email(raw_email)
        except Invalid as exc:
            errors.append(RowError(number, "email", exc.message, raw_email))
    budget = None
    raw_budget = get("budget")
    if raw_budget:
        try:
            budget = parse_amount(raw_budget)
        except ValueError:
            errors.append(RowError(number, "budget", "not a non-negative amount (at most 1e15)", raw_budget))
    company_size = None
    raw_size = get("company_size")
    if raw_size:
        company_size = _SIZES.get(raw_size.lower())
        if company_size is None:
            allowed = ", ".join(s.value for s in AccountSize)
            errors.append(RowError(number, "company_size", f"unknown size; use one of {allowed}", raw_size))
    raw_consent = get("consent", "")
    consent = _CONSENT_VALUES.get(raw_consent.lower())
    if consent is None:
        errors.append(RowError(number, "consent", "unknown consent; use granted, denied or unknown", raw_consent))
    raw_dnc = get("do_not_call", "")
    dnc = raw_dnc.lower()
    do_not_call = dnc in _TRUE
    if not do_not_call and dnc not in _FALSE:
        errors.append(RowError(number, "do_not_call", "not a yes/no value", raw_dnc))
    if errors:
        return errors
    company = text.get("company")
    product_line = text.get("product_line")
    key = line = None
    if company:
        key = company_key(company) or None
        if key:
            line = (key, (product_line or "").strip().lower())
    return (
        number,
        company,
        key,
        text.get("contact_name"),
        phone,
        email,
        product_line,
        text.get("source"),
        text.get("region"),
        budget,
        text.get("industry"),
        company_size,
        text.get("title"),
        text.get("notes"),
        text.get("external_id"),
        consent,
        do_not_call,
        line,
    )
