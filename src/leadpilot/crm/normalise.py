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


# Fast path for the common shapes (issue #2): Chinese mobiles and NANP numbers written with their country
# code (+86 / (+86) / +1 anywhere; 0086 / 001 and bare 11-digit mobiles when the default region is CN).
# It accepts only what it can prove valid with phonenumbers' own metadata and the same rules its parse and
# is_valid_number apply; everything else (every rejection included) goes through phonenumbers, so results
# and error messages are identical (tests/unit/test_phone_fast_path.py checks both paths agree).
# ASCII digits only: phonenumbers also reads other scripts' digits, which the fast path leaves to it.
_FAST_CN_MOBILE = re.compile(r"(?:(\+86|\(\+86\)|0086)[ -]?)?(1[3-9][0-9])[ -]?([0-9]{4})[ -]?([0-9]{4})")
_FAST_NANP = re.compile(r"(\+1|001)[ .-]?(?:\(([2-9][0-9]{2})\)|([2-9][0-9]{2}))[ .-]?([2-9][0-9]{2})[ .-]?([0-9]{4})")
# Number types whose patterns make a number valid; any one match will do, so the likeliest come first.
_DESC_NAMES = (
    "mobile",
    "fixed_line",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


class _RegionRules:
    """One region's compiled validity patterns, as phonenumbers' number-type check applies them."""

    def __init__(self, region: str) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise ValueError(f"no phone metadata for region {region}")
        self.leading_digits = re.compile(metadata.leading_digits) if metadata.leading_digits else None
        self.general = self._desc(metadata.general_desc)
        self.types = [d for d in (self._desc(getattr(metadata, name)) for name in _DESC_NAMES) if d is not None]
        self.national_prefix = (
            re.compile(metadata.national_prefix_for_parsing) if metadata.national_prefix_for_parsing else None
        )
        self.idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None

    @staticmethod
    def _desc(desc: object) -> tuple[frozenset[int], re.Pattern[str]] | None:
        """(possible lengths, full pattern) of a number description; None where it matches nothing."""
        pattern = getattr(desc, "national_number_pattern", None)
        if desc is None or not pattern:
            return None
        return frozenset(getattr(desc, "possible_length", ()) or ()), re.compile(pattern)

    @staticmethod
    def _matches(nsn: str, desc: tuple[frozenset[int], re.Pattern[str]] | None) -> bool:
        """Whether the national number fits the description's lengths and pattern (whole string)."""
        if desc is None:
            return False
        lengths, pattern = desc
        return (not lengths or len(nsn) in lengths) and pattern.fullmatch(nsn) is not None

    def has_type(self, nsn: str) -> bool:
        """Whether the number has a known type here (phonenumbers' is_valid_number_for_region)."""
        return self._matches(nsn, self.general) and any(self._matches(nsn, desc) for desc in self.types)


_FAST_RULES: dict[str, _RegionRules] = {}


def _rules(region: str) -> _RegionRules:
    """Compiled rules for a region, built once."""
    rules = _FAST_RULES.get(region)
    if rules is None:
        rules = _FAST_RULES[region] = _RegionRules(region)
    return rules


def _fast_cn_mobile(nsn: str) -> str | None:
    """E.164 of a Chinese national number that parse keeps whole and that is valid, else None."""
    cn = _rules("CN")
    if cn.national_prefix is not None and cn.national_prefix.match(nsn):
        return None  # parse might strip a carrier prefix: leave it to phonenumbers
    return "+86" + nsn if cn.has_type(nsn) else None


def _fast_nanp(nsn: str) -> str | None:
    """E.164 of a NANP national number when it is valid in the region phonenumbers assigns it to, else None."""
    main = _rules("US")
    if main.national_prefix is not None and main.national_prefix.match(nsn):
        return None  # parse would strip a national prefix: leave it to phonenumbers
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        rules = _rules(region)
        if rules.leading_digits is not None:
            if rules.leading_digits.match(nsn):
                return "+1" + nsn if rules.has_type(nsn) else None
        elif rules.has_type(nsn):
            return "+1" + nsn
    return None


def _fast_e164(text: str, default_region: str) -> str | None:
    """The E.164 form when the fast path can prove the number valid; None means: ask phonenumbers."""
    if len(text) > 24:
        return None
    match = _FAST_CN_MOBILE.fullmatch(text)
    if match is not None:
        prefix, nsn = match.group(1), match.group(2) + match.group(3) + match.group(4)
        if prefix is None or prefix == "0086":  # national or IDD form: only where the defaults are CN's
            if default_region != "CN":
                return None
            idd = _rules("CN").idd
            if prefix is None and idd is not None and idd.match(nsn):
                return None  # the digits could be read as an international prefix
        return _fast_cn_mobile(nsn)
    match = _FAST_NANP.fullmatch(text)
    if match is not None:
        if match.group(1) == "001" and default_region != "CN":
            return None
        return _fast_nanp((match.group(2) or match.group(3)) + match.group(4) + match.group(5))
    return None


def normalise_phone(raw: str, default_region: str = "US") -> str:
    """A phone number in E.164 (``+8613812345678``); raises Invalid with the reason."""
    text = raw.strip()
    if not text:
        raise Invalid("phone is empty", field="phone")
    fast = _fast_e164(text, default_region)
    if fast is not None:
        return fast
    return _phonenumbers_e164(raw, text, default_region)


def _phonenumbers_e164(raw: str, text: str, default_region: str) -> str:
    """E.164 through phonenumbers' parse and is_valid_number (the general path); raises Invalid."""
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
