"""Hostile and broken state files against the real daemon (issue 17, rows 1-4; SPEC §8).

- Row 1: a state file whose body is a pickle naming ``numpy.f2py.subprocess.Popen`` and
  ``numpy.ctypeslib.ctypes.CDLL`` through dotted names, built opcode by opcode. The same bytes
  are first shown to run (``pickle.loads`` in a child process touches a marker file); the
  daemon, started on them, runs nothing, moves the file aside and starts empty.
- Row 2: a real state file with one value of the wrong type (or a number no counter can hold)
  in each variant: refused and moved aside, and the daemon serves ``/metrics`` and applies
  frames. ``-m slow`` sweeps every value of a rich state in-process.
- Row 3: an unreadable file in a read-only directory: ignored and named in the log, the daemon
  starts (no restart loop) and never overwrites it.
- Row 4: temporary files of interrupted saves (a half-written one, a large one) are removed
  at start.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd import persist
from metricsd.config import load_config
from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import (
    assert_healthy,
    exposition,
    log_failures,
    sample_lines,
)

OLD_MAGIC = b"METRICSD-STATE\n"  # the pickled format (version 1) of earlier releases


# --- the row 1 payload -----------------------------------------------------------------------


def _text(value: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE."""
    data = value.encode()
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def _global(module: str, dotted: str) -> bytes:
    """STACK_GLOBAL: protocol 4 resolves ``dotted`` attribute by attribute from ``module``."""
    return _text(module) + _text(dotted) + b"\x93"


def hostile_pickle(popen_marker: Path, cdll_marker: Path) -> bytes:
    """``(numpy.f2py.subprocess.Popen(["touch", popen_marker]),
    getattr(numpy.ctypeslib.ctypes.CDLL(None), "system")(b"touch cdll_marker"))``.

    Written in opcodes (PROTO 4, STACK_GLOBAL, REDUCE, TUPLE…): no class of this module is
    involved, exactly what a tampered file would hold."""
    popen = (
        _global("numpy", "f2py.subprocess.Popen")
        + b"("  # MARK
        + _text("touch")
        + _text(str(popen_marker))
        + b"l"  # LIST
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE
    )
    command = f"touch {cdll_marker}".encode()
    system = (
        _global("builtins", "getattr")
        + _global("numpy", "ctypeslib.ctypes.CDLL")
        + b"N"  # NONE: CDLL(None) is the process itself, libc's system() included
        + b"\x85R"
        + _text("system")
        + b"\x86"  # TUPLE2
        + b"R"
        + b"C"  # SHORT_BINBYTES
        + bytes([len(command)])
        + command
        + b"\x85R"
    )
    return b"\x80\x04" + popen + system + b"\x86" + b"."


def assert_payload_runs(tmp_path: Path) -> None:
    """The payload is live: plain ``pickle.loads`` runs both commands."""
    popen, cdll = tmp_path / "control-popen", tmp_path / "control-cdll"
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=hostile_pickle(popen, cdll),
        check=True,
        timeout=30,
        capture_output=True,
    )
    deadline = time.monotonic() + 5.0  # Popen does not wait for its child
    while not (popen.exists() and cdll.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert popen.exists() and cdll.exists(), "the crafted pickle does not run: the test is void"


def config_layout() -> str:
    """The layout fingerprint of the daemon the tests start (defaults: same windows, buckets)."""
    return persist.layout_fingerprint(load_config(environ={}))


def v1_file(payload: bytes) -> bytes:
    """The earlier pickled format byte for byte: magic, header length, JSON header, pickle."""
    header = json.dumps(
        {"format": 1, "layout": config_layout(), "saved_now": 100.0, "saved_wall": time.time()}
    ).encode()
    return OLD_MAGIC + len(header).to_bytes(4, "big") + header + payload


def v2_body(trackers: Any) -> bytes:
    body = {
        "format": persist.FORMAT_VERSION,
        "layout": config_layout(),
        "saved_now": 100.0,
        "saved_wall": time.time(),
        "trackers": trackers,
    }
    return persist.MAGIC + msgpack.packb(body, use_bin_type=True)


def moved_aside(state: Path) -> list[Path]:
    return sorted(state.parent.glob(state.name + ".corrupt-*"))


def serves_from_empty(d: Daemon) -> None:
    """Started empty (no event counted), and it works: a frame is applied and shown."""
    assert d.get_json("/readyz") == {"status": "ready"}
    assert d.value("metricsd_frames_received_total") == 0
    d.send({"type": "request", "model": "gpt-4o", "endpoint": "/v1/x", "duration_ms": 5.0})
    assert d.wait_for("metricsd_events_received_total", 1, type="request") == 1
    lines = sample_lines(exposition(d), "llm_requests_total")
    assert lines == [
        'llm_requests_total{provider="openai",endpoint="/v1/x",model="gpt-4o",status="200"} 1'
    ], lines


# --- row 1 -----------------------------------------------------------------------------------


PLACEMENTS: dict[str, Callable[[bytes], bytes]] = {
    # The earlier format exactly: its header, then the pickle its reader unpickled.
    "v1 header + pickle": v1_file,
    # The current header with the pickle where the msgpack body belongs.
    "v2 header + pickle": lambda payload: persist.MAGIC + payload,
    # A well-formed current file (right format and layout) with the pickle as tracker state.
    "v2 body holding pickles": lambda payload: v2_body({"engine": payload, "requests": payload}),
}


def test_pickle_state_file_runs_nothing_and_is_moved_aside(tmp_path: Path) -> None:
    """Issue 17 row 1, in three placements (each its own daemon, started at once): nothing
    executed, the file moved aside and kept, the daemon starts empty and serves, and its
    shutdown save writes a typed file."""
    assert_payload_runs(tmp_path)
    cases = {}
    for i, (placement, place) in enumerate(PLACEMENTS.items()):
        where = tmp_path / f"case-{i}"
        where.mkdir()
        markers = (where / "ran-popen", where / "ran-cdll")
        data = place(hostile_pickle(*markers))
        (where / "state.bin").write_bytes(data)
        cases[placement] = (where, markers, data)
    daemons = start_concurrently(
        {
            name: (where, ("--state", str(where / "state.bin")))
            for name, (where, _, _) in cases.items()
        }
    )
    try:
        for name, d in daemons.items():
            where, markers, data = cases[name]
            state = where / "state.bin"
            serves_from_empty(d)
            aside = moved_aside(state)
            assert len(aside) == 1 and aside[0].read_bytes() == data, name
            log = d.log_path.read_text()
            assert f"state file {state} cannot be used" in log, name
            assert f"moved to {aside[0]}" in log and "state restored" not in log, name
            assert log_failures(d) == [], name
        time.sleep(0.3)  # a Popen'd touch would have run by now
        for name, (_, markers, _) in cases.items():
            assert not any(m.exists() for m in markers), name
    finally:
        codes = stop_concurrently(daemons)
    assert codes == dict.fromkeys(cases, 0)
    for name, (where, markers, data) in cases.items():
        # The shutdown save wrote a typed file; the hostile bytes stay only in the copy aside.
        assert (where / "state.bin").read_bytes().startswith(persist.MAGIC), name
        assert moved_aside(where / "state.bin")[0].read_bytes() == data, name
        assert not any(m.exists() for m in markers), name


def start_concurrently(specs: dict[str, tuple[Path, tuple[str, ...]]]) -> dict[str, Daemon]:
    """Start several daemons at once ({name: (directory, arguments)}): each start mostly
    waits for an interpreter to import, so together they take far less than one by one."""
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = {
            name: pool.submit(start_daemon, where, *args) for name, (where, args) in specs.items()
        }
        started: dict[str, Daemon] = {}
        failure: BaseException | None = None
        for name, future in futures.items():
            try:
                started[name] = future.result()
            except BaseException as exc:  # stop the others before failing
                failure = exc
    if failure is not None:
        stop_concurrently(started)
        raise failure
    return started


def stop_concurrently(daemons: dict[str, Daemon]) -> dict[str, int]:
    """SIGTERM every daemon at once; their exit codes."""
    with ThreadPoolExecutor(max_workers=max(1, len(daemons))) as pool:
        futures = {name: pool.submit(d.stop) for name, d in daemons.items()}
        return {name: future.result() for name, future in futures.items()}


# --- row 2 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A state file from a real daemon with every tracker holding data, decoded."""
    tmp = tmp_path_factory.mktemp("real-state")
    state = tmp / "state.bin"
    d = start_daemon(tmp, "--state", str(state))
    try:
        feed_every_tracker(d)
    finally:
        assert d.stop() == 0
    body = msgpack.unpackb(state.read_bytes()[len(persist.MAGIC) :], raw=False)
    assert isinstance(body, dict)
    return body


def feed_every_tracker(d: Daemon) -> None:
    now = time.time()
    d.send(
        {
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": "/v1/chat", "api_key": "sk-state"},
            "cols": {
                "duration_ms": [10.0, 20.0, 900.0],
                "status": [200, 429, 503],
                "input_tokens": [5, 6, 7],
                "output_tokens": [1, 2, 3],
                "finish_reason": ["stop", "length", "stop"],
                "queue_ms": [1.0, 2.0, 3.0],
                "error_type": ["", "rate", "upstream"],
                "error_message": ["", "slow down 12", "boom 0x1f"],
            },
        }
    )
    d.send({"type": "cache", "hit": True, "total_tokens": 10, "matched_tokens": 5})
    d.send({"type": "queue", "depth": 3, "queue": "q1", "capacity": 10})
    for sid, end in (("s1", True), ("s2", False)):
        d.send({"type": "stream.start", "stream_id": sid, "model": "gpt-4o", "ts": now})
        d.send({"type": "stream.token", "stream_id": sid, "n": 2, "ts": now + 0.1})
        d.send({"type": "stream.token", "stream_id": sid, "n": 2, "ts": now + 0.2})
        if end:
            d.send({"type": "stream.end", "stream_id": sid, "ts": now + 0.3})
    d.send({"type": "usage", "prompt_tokens": 100, "completion_tokens": 9, "model": "gpt-4o"})
    d.send({"type": "client", "dropped": 3, "source": "worker-1"})
    d.send({"type": "metric", "name": "jobs", "kind": "counter", "value": 2.0})
    assert d.wait_for("metricsd_events_received_total", 3, type="request") == 3
    assert d.wait_for("metricsd_events_received_total", 1, type="metric") == 1
    status, _, _ = d.request("/metrics/budgets/sk-state", "PUT", b'{"limit_usd": 1.0}')
    assert status == 201


def _array(value: Any, data: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {**value, "dtype": data.dtype.str, "data": data.tobytes()}


def _filled(value: Any, fill: float) -> dict[str, Any]:
    """A saved float array with every element replaced by ``fill``."""
    old = np.frombuffer(value["data"], dtype=value["dtype"])
    return _array(value, np.full(old.shape, fill, dtype="<f8"))


#: (where, what to put there): each variant changes one value of the real state: wrong types,
#: then well-typed values that no label or counter can hold, which the reader used to accept
#: and every later scrape, view or frame then failed on (``-m slow`` tries every value).
BROKEN: dict[str, tuple[tuple[Any, ...], Callable[[Any], Any]]] = {
    "counter as text": (("engine", "frames_received"), lambda v: "lots"),
    "int array as floats": (
        ("requests", "series", "arrays", "tokens"),
        lambda v: _array(v, np.frombuffer(v["data"], "<i8").astype("<f8")),
    ),
    "label missing": (("requests", "statuses", "keys", 0, 0), lambda v: None),
    "NaN count in a window": (
        ("requests", "window", "short", 0, "values"),
        lambda v: _filled(v, np.nan),
    ),
    "token count beyond 64 bits": (
        ("requests", "recent", 0, "tokens"),
        lambda v: {"int": str(2**70)},
    ),
}


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        root = root[key]
    return root


def broken_file(
    body: dict[str, Any], where: tuple[Any, ...], change: Callable[[Any], Any]
) -> bytes:
    out = copy.deepcopy(body)
    parent = _at(out["trackers"], where[:-1])
    parent[where[-1]] = change(parent[where[-1]])
    return persist.MAGIC + msgpack.packb(out, use_bin_type=True)


def test_wrong_typed_state_is_moved_aside_and_the_daemon_serves(
    tmp_path: Path, real_state: dict[str, Any]
) -> None:
    """Issue 17 row 2, one daemon per variant (started at once): each file is refused and
    moved aside; ``/metrics`` and the JSON views answer 200 and frames apply. The control, the
    unchanged file, is restored."""
    control = persist.MAGIC + msgpack.packb(real_state, use_bin_type=True)
    files = {"unchanged (control)": control}
    for variant, (where, change) in BROKEN.items():
        files[variant] = broken_file(real_state, where, change)
    dirs = {}
    for i, (variant, data) in enumerate(files.items()):
        dirs[variant] = tmp_path / f"case-{i}"
        dirs[variant].mkdir()
        (dirs[variant] / "state.bin").write_bytes(data)
    daemons = start_concurrently(
        {name: (where, ("--state", str(where / "state.bin"))) for name, where in dirs.items()}
    )
    try:
        for variant, d in daemons.items():
            state, data = dirs[variant] / "state.bin", files[variant]
            log = d.log_path.read_text()
            if data is control:
                assert d.value("metricsd_events_received_total", type="request") == 3
                assert moved_aside(state) == [] and "state restored from" in log
                continue
            serves_from_empty(d)
            for path in ("/metrics/json", "/metrics/streaming", "/metrics/errors"):
                status, _, body = d.request(path)
                assert status == 200, (variant, path, status, body[:200])
            aside = moved_aside(state)
            assert len(aside) == 1 and aside[0].read_bytes() == data, variant
            assert "cannot be used" in log, variant
            assert log_failures(d) == [], variant
    finally:
        codes = stop_concurrently(daemons)
    assert codes == dict.fromkeys(files, 0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_value_of_a_state_changed_in_turn(real_state: dict[str, Any], tmp_path: Path) -> None:
    """In-process sweep (row 2, exhaustive): every value of the real state replaced by a
    wrong type or an impossible number, one at a time. Each file is either refused or restored
    to a state that renders, serves every view, applies frames and saves again."""
    from metricsd.app import Daemon as Running
    from metricsd.decode import Decoder
    from metricsd.export.prometheus import RenderCache, render_both

    logging.disable(logging.CRITICAL)
    config = load_config(environ={})
    frame = msgpack.packb(
        [
            {"type": "request", "model": "gpt-4o", "endpoint": "/v1/chat", "duration_ms": 5.0},
            {"type": "stream.token", "stream_id": "s2", "n": 1},
            {"type": "stream.end", "stream_id": "s2"},
            {"type": "client", "dropped": 1, "source": "worker-1"},
        ]
    )
    state = tmp_path / "state.bin"
    refused = restored = 0
    try:
        for where, replacement in _mutations(real_state["trackers"]):
            body = copy.deepcopy(real_state)
            parent = _at(body["trackers"], where[:-1])
            parent[where[-1]] = replacement
            state.write_bytes(persist.MAGIC + msgpack.packb(body, use_bin_type=True))
            daemon = Running(config)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    daemon._restore(str(state))
                    if not state.exists():
                        refused += 1
                        for aside in moved_aside(state):
                            aside.unlink()
                        continue
                    restored += 1
                    engine, now, wall = daemon.engine, daemon.clock(), time.time()
                    decoder = Decoder(wall, engine.limits)
                    decoder.add(frame)
                    engine.apply(decoder.finish(), now + 1, wall, frames=1)
                    snap = engine.snapshot(now + 2, wall + 2)
                    render_both(snap.families(), RenderCache())
                    snap.view("json")
                    snap.view("streaming", None)
                    snap.view("histograms", "", 3600.0)  # native code: a crash ends the run
                    engine.snapshot(now + 4000, wall + 4000)
                    daemon.capture()
            except Exception as exc:
                pytest.fail(f"{where} = {str(replacement)[:60]}: {exc!r}")
            finally:
                daemon.ingest.close()
                daemon.context.term()
    finally:
        logging.disable(logging.NOTSET)
    print(f"{refused} refused, {restored} restored and working")
    assert refused and restored


def _mutations(root: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, replacement) for every value under ``root`` (the first items of lists)."""

    def walk(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
        if isinstance(value, dict) and {"dtype", "data"} <= set(value):
            yield path, "x"
            yield path, {**value, "shape": [n + 1 for n in value["shape"]]}
            if value["dtype"] == "<f8" and value["data"]:
                for fill in (np.nan, np.inf, -1e300):
                    yield path, _filled(value, fill)
            elif value["data"]:
                yield path, _array(value, np.frombuffer(value["data"], value["dtype"]) * 0 - 5)
            return
        if isinstance(value, dict):
            if path:
                yield path, [1]
            for key, item in value.items():
                yield from walk(item, (*path, key))
            return
        if isinstance(value, list):
            yield path, {"a": 1}
            for i, item in enumerate(value[:2]):
                yield from walk(item, (*path, i))
            return
        replacements: list[Any] = ["x", None, {"int": str(2**70)}, -1, float("nan"), 1e300]
        if isinstance(value, str):
            replacements = [5, None, "y" * 70_000]
        for replacement in replacements:
            yield path, replacement

    yield from walk(root, ())


# --- row 3 -----------------------------------------------------------------------------------


def without_dac_override() -> list[str] | None:
    """A command prefix under which permissions apply even to root (no capabilities), or None
    when the tests can rely on plain permissions, or cannot drop them (then: skip)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


def test_unreadable_state_in_a_read_only_directory_is_ignored(tmp_path: Path) -> None:
    """Issue 17 row 3: the daemon starts (twice: no restart loop), names the file, serves, and
    leaves the file as it was."""
    wrapper = without_dac_override()
    if wrapper is None:
        pytest.skip("running as root without setpriv: a read-only directory is writable")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = state_dir / "state.bin"
    data = persist.MAGIC + b"\x93\x01\x02 not msgpack at all"
    state.write_bytes(data)
    state_dir.chmod(0o555)
    try:
        probe = subprocess.run(
            [
                *wrapper,
                sys.executable,
                "-c",
                f"import os; print(os.access({str(state_dir)!r}, os.W_OK))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.stdout.strip() != "False":
            pytest.skip("the directory stays writable here (permissions are not enforced)")
        for _ in range(2):
            d = start_daemon(tmp_path, "--state", str(state), wrapper=wrapper)
            try:
                serves_from_empty(d)
                log = d.log_path.read_text()
                assert f"state file {state} cannot be used" in log
                assert "cannot be moved aside" in log and "ignoring it, starting empty" in log
            finally:
                code = d.stop()
            assert code == 0
            # The shutdown save cannot write there: it says so, and the file is untouched.
            assert "could not save the state at shutdown" in d.log_path.read_text()
            assert state.read_bytes() == data and moved_aside(state) == []
            assert sorted(p.name for p in state_dir.iterdir()) == ["state.bin"]
    finally:
        state_dir.chmod(0o755)


# --- row 4 -----------------------------------------------------------------------------------


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    """Issue 17 row 4: ``.state.bin.tmp-<pid>`` files of saves a kill -9 interrupted are
    removed at start; the state file itself is restored; other files are left alone."""
    state = tmp_path / "state.bin"
    d = start_daemon(tmp_path, "--state", str(state))
    try:
        d.send({"type": "request", "model": "gpt-4o", "duration_ms": 5.0})
        assert d.wait_for("metricsd_events_received_total", 1, type="request") == 1
    finally:
        assert d.stop() == 0
    saved = state.read_bytes()
    leftovers = [tmp_path / f".state.bin.tmp-{pid}" for pid in (4_000_001, 4_000_002)]
    leftovers[0].write_bytes(saved[: len(saved) // 2])  # a save cut short
    with leftovers[1].open("wb") as fh:  # a large one (sparse: costs no disk)
        fh.truncate(176 << 20)
    unrelated = [tmp_path / ".other.bin.tmp-4000003", tmp_path / "state.bin.tmp-notes"]
    for path in unrelated:
        path.write_bytes(b"not ours")
    d = start_daemon(tmp_path, "--state", str(state))
    try:
        assert d.value("metricsd_events_received_total", type="request") == 1  # restored
        assert not any(path.exists() for path in leftovers)
        assert all(path.read_bytes() == b"not ours" for path in unrelated)
        assert "removed 2 temporary state file(s) of interrupted saves" in d.log_path.read_text()
        assert_healthy(d)
    finally:
        assert d.stop() == 0
