"""Pure rules: stage transitions, normalisation, cursors."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from leadpilot.crm.errors import Invalid
from leadpilot.crm.listing import decode_cursor, encode_cursor
from leadpilot.crm.models import Stage
from leadpilot.crm.normalise import company_key, normalise_email, normalise_phone
from leadpilot.crm.stages import TERMINAL_STAGES, TRANSITIONS, transition_error


def test_every_stage_has_rules_and_final_stages_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(Stage)
    for stage in TERMINAL_STAGES:
        assert TRANSITIONS[stage] == frozenset()
    # every open stage can be lost
    assert all(Stage.LOST in TRANSITIONS[s] for s in Stage if s not in TERMINAL_STAGES)


def test_happy_path_is_allowed_and_skips_are_not() -> None:
    path = ["new", "screening", "qualified", "assigned", "contacted", "negotiating", "won"]
    for current, target in pairwise(path):
        assert transition_error(current, target) is None
    assert "allowed next stages: lost, screening" in (transition_error("new", "qualified") or "")
    assert "unknown stage" in (transition_error("new", "bogus") or "")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+86 138 1234 5678", "US", "+8613812345678"),
        ("13812345678", "CN", "+8613812345678"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("+39 06 1234 5678", "US", "+390612345678"),
    ],
)
def test_phone_normalised_to_e164(raw: str, region: str, expected: str) -> None:
    assert normalise_phone(raw, region) == expected


@pytest.mark.parametrize("raw", ["12345", "abc", "+1 555", "", "+86 138"])
def test_invalid_phone_is_refused_with_the_field(raw: str) -> None:
    with pytest.raises(Invalid) as info:
        normalise_phone(raw, "US")
    assert info.value.field == "phone"


def test_email_and_company_keys() -> None:
    assert normalise_email("  Alice@Example.COM ") == "alice@example.com"
    for bad in ("alice", "a@b", "a b@c.com", "@x.com"):
        with pytest.raises(Invalid):
            normalise_email(bad)
    assert company_key("ACME, Inc.") == company_key("acme inc") == "acme"
    assert company_key("北京链家有限公司") == company_key("北京链家") == "北京链家"
    assert company_key("Ｈａｒｂｏｒ Realty") == company_key("harbor realty")


def test_cursor_round_trip_and_tampering() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    cursor = encode_cursor("-created_at", [when, 42])
    assert decode_cursor(cursor, "-created_at") == [when, 42]
    with pytest.raises(Invalid):
        decode_cursor(cursor, "id")  # a cursor belongs to one sort order
    with pytest.raises(Invalid):
        decode_cursor("!!not-base64!!", "id")
