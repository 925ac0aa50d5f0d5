"""Saving and restoring tracker state (SPEC §7, §8): a typed, versioned file that cannot run code.

The file is a magic line and one msgpack map of plain values: numbers, strings, lists, maps,
and numeric arrays as ``{"dtype", "shape", "data": bytes}`` maps. Nothing in it names a class
or a function, and reading it builds nothing but those plain values; each tracker's ``restore``
then checks every value's type and bounds through :class:`Reader`, so a hostile or damaged file
can only be refused (:class:`StateError`), never executed or half-applied.

Three things keep a restore exact and safe:

- **One timeline.** Windows are placed by the daemon's clock (monotonic). The header stores that
  clock and the wall clock at the save; after a restart the daemon's clock continues from the
  saved value plus the wall-clock time that passed (never negative), so windows age correctly
  across a restart and every stored timestamp stays valid. See :class:`Clock`.
- **The live configuration wins.** Only data is saved; caps, buckets and windows come from the
  configuration in force, and a file saved with other window slots, precision or bucket bounds
  is refused whole (its arrays would not line up).
- **Unreadable means moved aside.** A file that does not read, of any kind, is renamed to
  ``<path>.corrupt-<unix time>`` with a warning (or, where it cannot be renamed, named in the
  log and ignored) and the daemon starts empty. Temporary files of interrupted saves are removed
  at start.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from metricsd.config import Config

__all__ = [
    "FORMAT_VERSION",
    "Clock",
    "Reader",
    "StateError",
    "encode",
    "load",
    "move_aside",
    "remove_stale_temps",
    "write_atomic",
]

log = logging.getLogger("metricsd.state")

MAGIC: Final = b"METRICSD-STATE v2\n"
FORMAT_VERSION: Final = 2
#: Numeric dtypes an array in the file may have (little-endian, fixed width).
_DTYPES: Final = frozenset({"<f8", "<i8", "<u8", "<i4", "<u4", "|u1", "|b1", "|i1"})
#: Upper bound of any array or list read (elements): far above any configured cap.
MAX_ITEMS: Final = 1 << 28
#: The largest value of an int64 (for integers that go into int64 arrays or indices).
INT64_MAX: Final = (1 << 63) - 1


class StateError(Exception):
    """The state file cannot be used (corrupt, another version, another layout, wrong types)."""


class Clock:
    """The daemon's clock: monotonic seconds, continued across restarts from a saved state."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def continue_from(self, saved_now: float, saved_wall: float) -> float:
        """Make ``self()`` equal ``saved_now`` + the wall time since the save; returns the gap."""
        gap = max(0.0, time.time() - saved_wall)
        self.offset = saved_now + gap - time.monotonic()
        return gap


def layout_fingerprint(config: Config) -> str:
    """What the saved data's shape depends on: window slots, HDR precision, bucket bounds."""
    prom = config.prometheus
    parts = {
        "slot_seconds": config.engine.slot_seconds,
        "significant_figures": config.engine.significant_figures,
        "buckets": [
            list(prom.duration_buckets),
            list(prom.ttft_buckets),
            list(prom.itl_buckets),
            list(prom.token_buckets),
            list(prom.cost_buckets),
            list(prom.tps_buckets),
            list(prom.custom_buckets),
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --- writing ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A tracker's state → msgpack-able plain values (arrays as typed maps)."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # Python ints beyond int64: decimal strings
            return {
                "ints": [str(int(v)) for v in value.ravel().tolist()],
                "shape": list(value.shape),
            }
        arr = np.ascontiguousarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        return {"dtype": dtype.str, "shape": list(arr.shape), "data": arr.astype(dtype).tobytes()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(type(v) is str for v in value):  # label keys: the bulk of a large state
            return list(value)
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return {"int": str(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def pack_state(state: Any) -> bytes:
    """Tracker state as msgpack (what a worker's delta is, ``--workers``)."""
    packed: bytes = msgpack.packb(_plain(state), use_bin_type=True)
    return packed


def unpack_state(data: bytes) -> Any:
    """msgpack as :func:`pack_state` and :func:`encode` write it; raises StateError."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=1 << 31,
            max_str_len=1 << 24,
        )
    except Exception as exc:  # truncated or tampered data: any msgpack error
        raise StateError(f"unreadable state: {type(exc).__name__}") from None


def encode(trackers: dict[str, Any], config: Config, now: float, wall: float) -> bytes:
    """The state file's bytes."""
    body = {
        "format": FORMAT_VERSION,
        "layout": layout_fingerprint(config),
        "saved_now": now,
        "saved_wall": wall,
        "trackers": _plain(trackers),
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return MAGIC + packed


def write_atomic(path: Path, data: bytes) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files left by saves that a crash interrupted (``.<name>.tmp-<pid>``)."""
    target = Path(path)
    removed: list[Path] = []
    try:
        candidates = list(target.parent.glob(f".{target.name}.tmp-*"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError as exc:
            log.warning("could not remove the leftover %s: %s", tmp, exc)
    if removed:
        log.info("removed %d temporary state file(s) of interrupted saves", len(removed))
    return removed


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """A state file's content: the trackers' states and the clock at the save."""

    trackers: dict[str, Any]
    saved_now: float
    saved_wall: float


def load(path: str | os.PathLike[str], config: Config) -> Loaded:
    """Read a state file; raises StateError if it cannot be used."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise StateError("not a metricsd state file (or one of an older format)")
    body = unpack_state(data[len(MAGIC) :])
    r = Reader("state")
    body = r.map(body)
    if body.get("format") != FORMAT_VERSION:
        raise StateError(f"format {body.get('format')!r} is not {FORMAT_VERSION}")
    if body.get("layout") != layout_fingerprint(config):
        raise StateError(
            "saved with other window slots, precision or bucket bounds than configured now"
        )
    return Loaded(
        r.map(body.get("trackers"), "trackers"),
        r.float(body.get("saved_now"), "saved_now"),
        r.float(body.get("saved_wall"), "saved_wall"),
    )


def move_aside(path: str | os.PathLike[str], reason: str) -> Path | None:
    """Rename an unusable state file so it is kept for inspection but never read again; when
    it cannot be renamed (a read-only directory), name it in the log and go on without it."""
    source = Path(path)
    target = source.with_name(f"{source.name}.corrupt-{int(time.time())}")
    try:
        os.replace(source, target)
    except OSError as exc:
        log.warning(
            "state file %s cannot be used (%s) and cannot be moved aside (%s); ignoring it, "
            "starting empty",
            source,
            reason,
            exc,
        )
        return None
    log.warning(
        "state file %s cannot be used (%s); moved to %s, starting empty", source, reason, target
    )
    return target


class Reader:
    """Typed reads of a decoded state: every value checked, anything else a StateError."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str, path: str) -> StateError:
        return StateError(f"{self.where}.{path}: {what}")

    def map(self, value: Any, path: str = "") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail("not a map", path)
        return value

    def list(self, value: Any, path: str, limit: int = MAX_ITEMS) -> list[Any]:
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail("not a list (or too long)", path)
        return value

    def int(self, value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer in [lo, hi] (``hi``: for values that go into int64 arrays or indices;
        totals such as money may exceed 64 bits)."""
        if isinstance(value, dict) and set(value) == {"int"} and isinstance(value["int"], str):
            try:
                value = int(value["int"])
            except ValueError:
                raise self.fail("not an integer", path) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail("not an integer", path)
        if lo is not None and value < lo:
            raise self.fail(f"below {lo}", path)
        if hi is not None and value > hi:
            raise self.fail(f"above {hi}", path)
        return value

    def float(self, value: Any, path: str, finite: bool = True) -> float:
        """A number; NaN and infinities only where ``finite`` is False (no saved single
        number is one: a NaN time or offset would fail every later computation)."""
        if isinstance(value, dict) and set(value) == {"float"}:
            text = value["float"]
            if text not in ("inf", "-inf", "nan"):
                raise self.fail("not a number", path)
            value = float(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail("not a number", path)
        number = float(value)
        if finite and not math.isfinite(number):
            raise self.fail("not a finite number", path)
        return number

    def opt_float(self, value: Any, path: builtins.str) -> builtins.float | None:
        return None if value is None else self.float(value, path)

    def str(self, value: Any, path: builtins.str, limit: builtins.int = 1 << 16) -> builtins.str:
        if not isinstance(value, str) or len(value) > limit:
            raise self.fail("not a string (or too long)", path)
        return value

    def opt_str(self, value: Any, path: builtins.str) -> builtins.str | None:
        return None if value is None else self.str(value, path)

    def bool(self, value: Any, path: builtins.str) -> builtins.bool:
        if not isinstance(value, bool):
            raise self.fail("not a boolean", path)
        return value

    def counts(
        self, value: Any, path: builtins.str, limit: builtins.int = MAX_ITEMS
    ) -> dict[builtins.str, builtins.int]:
        """A map of label → non-negative integer."""
        out: dict[str, int] = {}
        for k, v in self.map(value, path).items():
            out[self.str(k, path)] = self.int(v, f"{path}.{k}", 0)
            if len(out) > limit:
                raise self.fail("too many entries", path)
        return out

    def array(
        self,
        value: Any,
        path: builtins.str,
        dtype: Any,
        tail: tuple[builtins.int, ...] = (),
        exact: builtins.bool = False,
        finite: builtins.bool = False,
    ) -> npt.NDArray[Any]:
        """A numeric array of the given dtype and trailing shape (Python-int arrays are
        allowed where ``exact`` integers may exceed int64; ``finite``: no NaN or infinity,
        for arrays where neither can mean anything, such as counts)."""
        m = self.map(value, path)
        shape_raw = self.list(m.get("shape"), f"{path}.shape", 4)
        shape = tuple(self.int(d, f"{path}.shape", 0) for d in shape_raw)
        if not shape or shape[1:] != tail:
            raise self.fail(f"shape {shape} does not end in {tail}", path)
        size = math.prod(shape)
        if size > MAX_ITEMS:
            raise self.fail("too large", path)
        if "ints" in m:
            if not exact:
                raise self.fail("integers beyond 64 bits where they cannot be", path)
            items = self.list(m["ints"], f"{path}.ints")
            if len(items) != size:
                raise self.fail("wrong number of values", path)
            if not all(type(v) is str and len(v) <= 4096 for v in items):
                raise self.fail("not a string (or too long)", path)
            try:
                values = [int(v) for v in items]
            except ValueError:
                raise self.fail("not an integer", path) from None
            arr = np.empty(size, dtype=object)
            arr[:] = values
            return arr.reshape(shape)
        kind = m.get("dtype")
        data = m.get("data")
        if not isinstance(kind, str) or kind not in _DTYPES or not isinstance(data, bytes):
            raise self.fail("not a numeric array", path)
        dt = np.dtype(kind)
        if len(data) != size * dt.itemsize:
            raise self.fail("data does not match its shape", path)
        arr = np.frombuffer(data, dtype=dt).reshape(shape)
        want = np.dtype(dtype)
        if want.kind == "f" and dt.kind not in "fiu":
            raise self.fail("not a float array", path)
        if want.kind in "iu" and dt.kind not in "iu":
            raise self.fail("not an integer array", path)
        if want.kind == "b" and dt.kind != "b":
            raise self.fail("not a boolean array", path)
        if finite and dt.kind == "f" and not np.isfinite(arr).all():
            raise self.fail("not finite", path)
        if want.kind in "iu" and dt.kind in "iu" and arr.size:
            info = np.iinfo(want)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise self.fail(f"values out of the {want} range", path)
        return arr.astype(want)

    def keys(
        self, value: Any, path: builtins.str, arity: builtins.int
    ) -> builtins.list[tuple[Any, ...]]:
        """Label tuples: lists of ``arity`` strings (every label of a series has a value)."""
        out = []
        for i, key in enumerate(self.list(value, path)):
            # The common case in one test per key (a worker's delta can hold thousands).
            if not (
                type(key) is list
                and len(key) == arity
                and all(type(v) is str and len(v) <= 4096 for v in key)
            ):
                items = self.list(key, f"{path}[{i}]", arity)
                if len(items) != arity:
                    raise self.fail(f"a key of {len(items)} labels, not {arity}", path)
                for v in items:
                    self.str(v, path, 4096)
            out.append(tuple(key))
        return out
