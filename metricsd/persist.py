"""Saving and restoring tracker state (SPEC §7).

The state file is a small header and a pickle of each tracker's data attributes, written
atomically (temporary file, fsync, rename, fsync of the directory). Reading it goes through a
restricted unpickler that only builds plain containers, numpy arrays and metricsd's own state
classes: it never calls an arbitrary function, so a tampered file cannot run code.

Three things keep a restore exact and safe:

- **One timeline.** Windows are placed by the daemon's clock (monotonic). The header stores that
  clock and the wall clock at the save; after a restart the daemon's clock continues from the
  saved value plus the wall-clock time that passed (never negative), so windows age correctly
  across a restart and every stored timestamp stays valid. See :class:`Clock`.
- **The live configuration wins.** ``Config``, ``Geometry`` and ``Layout`` objects are written
  as references and resolved to the *current* ones on load; registries keep their factories.
- **Incompatible means moved aside.** A file that does not read, has another format version, or
  was written with a different window geometry or bucket layout is renamed to
  ``<path>.corrupt-<unix time>`` with a warning, and the daemon starts empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from metricsd.config import Config
from metricsd.hist import Layout
from metricsd.series import SeriesRegistry
from metricsd.window import Geometry

__all__ = [
    "FORMAT_VERSION",
    "Clock",
    "StateError",
    "capture",
    "encode",
    "load",
    "move_aside",
    "restore_into",
    "save",
    "write_atomic",
]

log = logging.getLogger("metricsd.state")

MAGIC: Final = b"METRICSD-STATE\n"
FORMAT_VERSION: Final = 1


class StateError(Exception):
    """The state file cannot be used (corrupt, another version, another layout)."""


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


# --- capturing and restoring attributes -------------------------------------------------------


def capture(obj: object, names: Iterable[str]) -> dict[str, Any]:
    """The named data attributes of a tracker, for its ``state()``."""
    return {name: getattr(obj, name) for name in names}


def restore_into(obj: object, state: dict[str, Any]) -> None:
    """Put saved attributes back; a registry adopts the saved series but keeps its factory."""
    for name, value in state.items():
        current = getattr(obj, name, None)
        if isinstance(current, SeriesRegistry) and isinstance(value, SeriesRegistry):
            current.adopt(value)
        else:
            setattr(obj, name, value)


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
            list(getattr(prom, "tps_buckets", ())),
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --- pickling with references to the live configuration ----------------------------------------


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Config):
            return ("config",)
        if isinstance(obj, Geometry):
            return ("geometry",)
        if isinstance(obj, Layout):
            return ("layout", obj.highest, obj.significant_figures, obj.scale, obj.lowest)
        return None


#: Classes a state file may build, by module. Functions are never allowed: an unpickler that
#: can call an arbitrary callable can run arbitrary code.
_BUILTINS: Final = frozenset(
    {"set", "frozenset", "list", "dict", "tuple", "bytearray", "bytes", "complex", "slice", "range"}
)
_ALLOWED: Final = {
    "collections": frozenset({"deque", "Counter", "OrderedDict", "defaultdict"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
}
_STATE_MODULES: Final = (
    "metricsd.hist",
    "metricsd.window",
    "metricsd.series",
    "metricsd.budgets",
    "metricsd.trackers.",
)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, config: Config, geometry: Geometry) -> None:
        super().__init__(io.BytesIO(data))
        self._config = config
        self._geometry = geometry

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        if module == "metricsd.trackers" or module.startswith(_STATE_MODULES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise StateError(f"the state file refers to {module}.{name}, which is not state")

    def persistent_load(self, pid: Any) -> Any:
        if pid == ("config",):
            return self._config
        if pid == ("geometry",):
            return self._geometry
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "layout":
            return Layout(highest=pid[1], significant_figures=pid[2], scale=pid[3], lowest=pid[4])
        raise StateError(f"unknown reference {pid!r} in the state file")


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """A state file's content: the trackers' states and the clock at the save."""

    trackers: dict[str, dict[str, Any]]
    saved_now: float
    saved_wall: float


def save(
    path: str | os.PathLike[str],
    trackers: dict[str, dict[str, Any]],
    config: Config,
    now: float,
    wall: float,
) -> int:
    """Write the state atomically; returns the number of bytes written."""
    return write_atomic(Path(path), encode(trackers, config, now, wall))


def encode(trackers: dict[str, dict[str, Any]], config: Config, now: float, wall: float) -> bytes:
    """The state file's bytes. Runs where the state lives (the event loop): it is a snapshot."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(trackers)
    header = json.dumps(
        {
            "format": FORMAT_VERSION,
            "layout": layout_fingerprint(config),
            "saved_now": now,
            "saved_wall": wall,
        }
    ).encode()
    return MAGIC + len(header).to_bytes(4, "big") + header + buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def load(path: str | os.PathLike[str], config: Config, geometry: Geometry) -> Loaded:
    """Read a state file; raises StateError if it cannot be used."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise StateError("not a metricsd state file")
    try:
        size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
        start = len(MAGIC) + 4
        header = json.loads(data[start : start + size])
        payload = data[start + size :]
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise StateError(
            f"format {header.get('format') if isinstance(header, dict) else '?'} "
            f"is not {FORMAT_VERSION}"
        )
    if header.get("layout") != layout_fingerprint(config):
        raise StateError(
            "saved with other window slots, precision or bucket bounds than configured now"
        )
    try:
        trackers = _Unpickler(payload, config, geometry).load()
    except StateError:
        raise
    except Exception as exc:  # truncated or tampered data: any unpickling error
        raise StateError(f"unreadable state: {type(exc).__name__}") from None
    if not isinstance(trackers, dict):
        raise StateError("unexpected content")
    return Loaded(trackers, float(header["saved_now"]), float(header["saved_wall"]))


def move_aside(path: str | os.PathLike[str], reason: str) -> Path:
    """Rename an unusable state file so it is kept for inspection but never read again."""
    source = Path(path)
    target = source.with_name(f"{source.name}.corrupt-{int(time.time())}")
    os.replace(source, target)
    log.warning(
        "state file %s cannot be used (%s); moved to %s, starting empty", source, reason, target
    )
    return target
