"""The phone fast path gives exactly what phonenumbers gives: same E.164, same accept/reject, same message."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import pytest

from leadpilot.crm import normalise
from leadpilot.crm.errors import Invalid

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from leadgen import _cn_landline, _format_cn_mobile, _format_us

US_SEPARATED = [
    lambda a, e, n: f"+1 {a} {e} {n}",
    lambda a, e, n: f"+1({a}){e}-{n}",
    lambda a, e, n: f"001-{a}-{e}-{n}",
    lambda a, e, n: f"001{a}{e}{n}",
    lambda a, e, n: f"+1 ({a} {e}-{n}",  # unbalanced parenthesis: left to phonenumbers
]


def outcome(fn: Callable[[], str]) -> tuple[str, str]:
    """('ok', E.164) or ('invalid', message) for one normalisation."""
    try:
        return "ok", fn()
    except Invalid as exc:
        return "invalid", str(exc)


def assert_same(numbers: Iterable[str], regions: Iterable[str]) -> int:
    """Check both paths agree on every (number, region); return how many the fast path answered itself."""
    fast_hits = 0
    for region in regions:
        for raw in numbers:
            reference = outcome(partial(normalise._phonenumbers_e164, raw, raw.strip(), region))
            got = outcome(partial(normalise.normalise_phone, raw, region))
            assert got == reference, f"{raw!r} in region {region}: fast path {got}, phonenumbers {reference}"
            fast = normalise._fast_e164(raw.strip(), region)
            if fast is not None:
                fast_hits += 1
                assert reference == ("ok", fast)
    return fast_hits


def test_every_chinese_mobile_prefix_in_all_eight_leadgen_formats() -> None:
    rng = random.Random(11)
    numbers = []
    # Every five-digit start 10000-19999 (valid 13x-19x, invalid 10x-12x, 1349 satellite, 1740x, 179xx carrier
    # prefixes, 16x, 14x data-only ...), each in all eight formats with a random subscriber tail.
    for start in range(10_000, 20_000):
        for style in range(8):
            numbers.append(_format_cn_mobile(f"{start}{rng.randrange(1_000_000):06d}", style))
    hits = assert_same(numbers, ["CN"])
    assert hits > 0.5 * len(numbers)  # the fast path really answers the common case
    sample = rng.sample(numbers, 8_000)
    assert_same(sample, ["US", "GB", "HK", "DE"])  # 0086 and bare forms depend on the region: left to phonenumbers


def test_valid_leadgen_mobiles_take_the_fast_path() -> None:
    for style in range(8):
        raw = _format_cn_mobile("13812345678", style)
        assert normalise._fast_e164(raw, "CN") == "+8613812345678", raw
    assert normalise._fast_e164("+86 138 1234 5678", "US") == "+8613812345678"
    assert normalise._fast_e164("13812345678", "US") is None  # a US default reads it differently
    assert normalise._fast_e164("+1 (212) 201-1234", "US") == "+12122011234"


def test_chinese_mobiles_of_the_wrong_length_and_odd_shapes() -> None:
    rng = random.Random(12)
    numbers = []
    for length in (9, 10, 12, 13):
        for _ in range(300):
            digits = "1" + str(rng.randrange(3, 10)) + "".join(str(rng.randrange(10)) for _ in range(length - 2))
            numbers += [digits, f"+86 {digits}", f"0086{digits}", f"(+86) {digits}", f"+86-{digits}"]
    numbers += [
        "138-1234-567",
        "+86 123 4567 8901",
        "138  1234 5678",
        "+86--13812345678",
        "(+86)13812345678",
        "+86 (138) 1234 5678",
        "0086-138-1234-5678",
        "86 13812345678",
        "+86 0138 1234 5678",
        "0138 1234 5678",
        "１３８１２３４５６７８",  # full-width digits
        "+８６ 138 1234 5678",
        "13812345678 ext. 12",
        "138 1234 5678 ",
        "\t+86 138 1234 5678\n",
        "+86 179 5113 8123",
        "17951 13812345678",
        "125 9313 8123 4567",
        "+86 1740 0123 456",
        "+86 1740 6123 456",
        "+86 1349 1234 567",
        "+86 1610 1234 567",
        "+86 1611 1234 567",
        "call me",
        "12345",
    ]
    assert_same(numbers, ["CN", "US"])


def test_nanp_numbers_in_every_area_code() -> None:
    rng = random.Random(13)
    numbers = []
    for area in range(200, 1000):
        for _ in range(6):
            exchange = rng.choice([rng.randrange(200, 1000), rng.randrange(0, 200), 555, 911, 211])
            parts = (f"{area:03d}", f"{exchange:03d}", f"{rng.randrange(10_000):04d}")
            numbers.append(_format_us(parts, rng.randrange(5)))
            numbers.append(rng.choice(US_SEPARATED)(*parts))
    hits = assert_same(numbers, ["CN"])
    assert hits > 0.3 * len(numbers)
    assert_same(rng.sample(numbers, 4_000), ["US", "GB"])


def test_nanp_edge_cases_and_landlines() -> None:
    numbers = [
        "+1 (212) 201-1234",
        "+1 (112) 201-1234",
        "+1 (212) 101-1234",
        "+1 212 201 123",
        "+1 212 201 12345",
        "+1 800 201 1234",
        "+1 900 201 1234",
        "+1 242 201 1234",  # Bahamas (leading digits decide the region)
        "+1 416 201 1234",  # Canada
        "+1 787 201 1234",  # Puerto Rico
        "001 212 201 1234",
        "0011 212 201 1234",
        "+1-212-201-1234",
        "+1 212.201.1234",
        "+12122011234",
        "1 212 201 1234",
        "(212) 201-1234",
        "212-201-1234",
    ]
    numbers += [_cn_landline(i, style) for i in range(60) for style in range(3)]
    assert_same(numbers, ["CN", "US", "GB"])


def test_empty_phone_is_still_refused() -> None:
    with pytest.raises(Invalid, match="phone is empty"):
        normalise.normalise_phone("   ", "CN")
