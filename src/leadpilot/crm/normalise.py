"""Normalisers shared by the API and the importer: phone to E.164, e-mail, company name keys."""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from leadpilot.crm.errors import Invalid

_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]{2,}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_NAME_FOLD = re.compile(r"[\W_]+", re.UNICODE)
# Legal-form suffixes that do not distinguish two companies for de-duplication.
_COMPANY_SUFFIXES = re.compile(
    r"(有限责任公司|股份有限公司|有限公司|公司|\b(inc|llc|ltd|limited|corp|corporation|co|gmbh|sa|plc)\b\.?)$",
    re.IGNORECASE,
)


def normalise_phone(raw: str, default_region: str = "US") -> str:
    """A phone number in E.164 (``+8613812345678``); raises Invalid with the reason."""
    text = raw.strip()
    if not text:
        raise Invalid("phone is empty", field="phone")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise Invalid(f"phone {raw!r} is not a phone number ({exc._msg})", field="phone") from exc
    if not phonenumbers.is_valid_number(number):
        raise Invalid(f"phone {raw!r} is not a valid number for its region", field="phone")
    # E.164 is '+', country code, national significant number (cheaper than format_number).
    return f"+{number.country_code}{phonenumbers.national_significant_number(number)}"


def normalise_email(raw: str) -> str:
    """A lower-cased, trimmed e-mail address; raises Invalid when it is not one."""
    text = raw.strip().lower()
    if not _EMAIL.match(text) or len(text) > 254:
        raise Invalid(f"email {raw!r} is not a valid address", field="email")
    return text


def company_key(name: str) -> str:
    """A folded company name for de-duplication: case, width, punctuation and legal suffix ignored."""
    text = unicodedata.normalize("NFKC", name).strip().lower()
    for _ in range(2):
        text = _COMPANY_SUFFIXES.sub("", text.strip()).strip()
    return _NAME_FOLD.sub("", text)


def is_e164(value: str) -> bool:
    """Whether the string already looks like E.164."""
    return bool(_E164.match(value))
