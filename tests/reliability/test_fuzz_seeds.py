"""The checked-in fuzz corpus: up to date, and every seed gives what its manifest says.

The manifests (``fuzz/corpus/*.json``) are written by hand in ``fuzz/make_corpus.py``; replaying
them here pins the decoder's reject reasons and the WebSocket session's replies for every
hostile input the fuzzers start from. No atheris needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuzz import targets
from fuzz.targets import NOW, BrokenPromise, decode_target, session_target, split_messages
from metricsd.protocol import Limits, decode
from metricsd.web.stream import PolicyViolation, Session

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def manifest(name: str) -> dict[str, Any]:
    return dict(json.loads((CORPUS / f"{name}.json").read_text()))


DECODE = manifest("decode")
SESSION = manifest("session")


def test_corpus_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "fuzz/make_corpus.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_corpus_covers_every_shape_type_and_reason() -> None:
    from metricsd.protocol import REASONS
    from metricsd.schema import EVENT_TYPES

    names = set(DECODE)
    for t in EVENT_TYPES:
        slug = t.replace(".", "_")
        for shape in ("event", "array", "columnar"):
            assert f"valid-{slug}-{shape}.bin" in names
    reasons = {r for e in DECODE.values() for r in e["rejected"]}
    assert reasons >= set(REASONS) - {"too_large"}  # a 1 MiB seed is left to the live fuzz
    assert len(list((CORPUS / "decode").iterdir())) == len(DECODE)
    assert len(list((CORPUS / "session").iterdir())) == len(SESSION)


@pytest.mark.parametrize("name", sorted(DECODE))
def test_decode_seed(name: str) -> None:
    data = (CORPUS / "decode" / name).read_bytes()
    decode_target(data)  # never raises, always well formed
    result = decode(data, NOW, Limits())
    expected = DECODE[name]
    assert {
        "accepted": result.accepted,
        "rejected": dict(result.rejected),
        "truncated": result.truncated,
    } == expected


def replay_session(data: bytes) -> tuple[list[str], bool]:
    session = Session(connected_at=1000.0)
    clock = 1000.0
    replies: list[str] = []
    for gap, binary, text in split_messages(data):
        clock += gap
        try:
            out = session.receive_binary(clock) if binary else session.receive(text, clock)
        except PolicyViolation:
            return replies, True
        replies.extend(r["type"] for r in out)
    return replies, False


@pytest.mark.parametrize("name", sorted(SESSION))
def test_session_seed(name: str) -> None:
    data = (CORPUS / "session" / name).read_bytes()
    session_target(data)  # no exception but the rate limit's; every reply strict JSON
    replies, closed = replay_session(data)
    assert {"replies": replies, "closed": closed} == SESSION[name]


def test_targets_report_a_broken_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode target fails when decode raises or returns a malformed batch."""
    seed = (CORPUS / "decode" / "valid-request-columnar.bin").read_bytes()

    def raising(frame: bytes, now: float, limits: Limits) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(targets, "decode", raising)
    with pytest.raises(KeyError):
        decode_target(seed)

    def malformed(frame: bytes, now: float, limits: Limits) -> Any:
        result = decode(frame, now, limits)
        result.batches[0].n += 1  # columns no longer match n
        return result

    monkeypatch.setattr(targets, "decode", malformed)
    with pytest.raises(BrokenPromise):
        decode_target(seed)


def test_targets_report_a_broken_session(monkeypatch: pytest.MonkeyPatch) -> None:
    ping = (CORPUS / "session" / "ping.txt").read_bytes()

    def leaky(self: Session, text: str, now: float, wall: float | None = None) -> Any:
        return [{"type": "error", "timestamp": wall, "message": "Traceback (most recent…"}]

    monkeypatch.setattr(Session, "receive", leaky)
    with pytest.raises(BrokenPromise):
        session_target(ping)
