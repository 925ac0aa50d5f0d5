"""Message normalisation and fingerprints (SPEC §4.4): each step, their order, truncation."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from metricsd.fingerprint import MAX_NORMALISED, STEPS, fingerprint, normalise

UUID = "550e8400-e29b-41d4-a716-446655440000"


def test_uuid_step_any_case() -> None:
    assert normalise(f"user {UUID} not found") == "user <UUID> not found"
    assert normalise(f"user {UUID.upper()} not found") == "user <UUID> not found"


def test_request_id_step() -> None:
    assert normalise("request req-abc123XYZ failed") == "request <REQUEST_ID> failed"
    # The prefix is case-sensitive, as in the seed tracker.
    assert normalise("REQ-abc") == "REQ-abc"


def test_hex_address_step() -> None:
    assert normalise("segfault at 0x7ffeDEAD12") == "segfault at <ADDR>"


def test_digit_step() -> None:
    assert normalise("Timeout 12.5s") == "Timeout <NUM>.<NUM>s"
    assert normalise("no digits here") == "no digits here"


def test_uuid_before_request_id() -> None:
    # Step 1 turns the id into req-<UUID>; step 2 then no longer matches it.
    assert normalise(f"req-{UUID}") == "req-<UUID>"


def test_uuid_before_digits() -> None:
    # Were digits replaced first, the UUID would be shredded into <NUM> pieces.
    assert normalise(f"id={UUID}") == "id=<UUID>"


def test_request_id_before_digits() -> None:
    assert normalise("req-12345 timed out") == "<REQUEST_ID> timed out"


def test_address_before_digits() -> None:
    assert normalise("at 0x1f") == "at <ADDR>"


def test_all_steps_together() -> None:
    message = f"Request req-abc123 failed: user {UUID.upper()} at 0x7ffe12 after 30s"
    assert normalise(message) == "Request <REQUEST_ID> failed: user <UUID> at <ADDR> after <NUM>s"


def test_truncation_comes_after_the_replacements() -> None:
    assert normalise("x" * 300) == "x" * MAX_NORMALISED
    assert normalise("1" * 300) == "<NUM>"  # replaced first, so nothing to cut
    assert normalise("a" * 198 + "12") == "a" * 198 + "<N"  # cut after replacing


def test_only_ascii_digits_are_numbers() -> None:
    assert normalise("code ٣") == "code ٣"


def test_fingerprint_is_sha256_of_type_endpoint_message() -> None:
    normalised = normalise("upstream 503 after 30s")
    expected = hashlib.sha256(
        f"internal_error:/v1/chat/completions:{normalised}".encode()
    ).hexdigest()[:8]
    fp = fingerprint("internal_error", "/v1/chat/completions", normalised)
    assert fp == expected
    assert len(fp) == 8 and int(fp, 16) >= 0


def test_endpoint_and_type_are_part_of_the_fingerprint() -> None:
    n = normalise("boom")
    assert fingerprint("a", "/x", n) != fingerprint("a", "/y", n)
    assert fingerprint("a", "/x", n) != fingerprint("b", "/x", n)


PIECES = st.sampled_from(
    [UUID, UUID.upper(), UUID[:-1], "req-", "req-ab1", "0x", "0xfF", "-", "12", "é٣", " ", "Zz"]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=12).map("".join))
def test_shortcuts_give_the_same_result_as_every_step_in_order(message: str) -> None:
    expected = message
    for pattern, replacement in STEPS:
        expected = pattern.sub(replacement, expected)
    assert normalise(message) == expected[:MAX_NORMALISED]
