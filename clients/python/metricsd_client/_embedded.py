"""``embedded=True``: the daemon's engine, run in this process.

The same engine and trackers as ``metricsd serve`` (:class:`metricsd.embedded.Embedded`), with
no sockets and no HTTP: events are buffered, then encoded by the client's wire encoder, decoded
by the daemon's decoder and applied (every 1 000 events, and before any read or budget change),
with ``time.monotonic()`` as the engine's clock; each read builds a snapshot and returns the
very JSON the daemon's route would serve. So a script or a test without a daemon gets the
numbers a daemon would compute, and every read sees every write before it.

``metricsd.embedded`` is the only part of the daemon used here, imported when an embedded
backend is created, never when ``metricsd_client`` is imported.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metricsd_client import _wire
from metricsd_client._emitter import Emitter
from metricsd_client.http import MetricsdHTTPError

if TYPE_CHECKING:
    from metricsd.config import Config

__all__ = ["EmbeddedBackend", "require_metricsd"]

_Row = tuple[Any, ...]
#: Buffered events are applied in frames of at most this many.
BATCH = 1000
_NEEDS = (
    "embedded=True runs the metricsd daemon's trackers in this process and needs the metricsd "
    "package, which is not installed. Install it (from a metricsd checkout: "
    "pip install -e .), or drop embedded=True to use a running daemon (METRICSD_URL)."
)


def require_metricsd() -> None:
    """Raise a clear ImportError when the daemon package is missing."""
    try:
        import metricsd.embedded  # noqa: F401
    except ImportError as exc:
        raise ImportError(_NEEDS) from exc


class _Applier(deque[_Row]):
    """The emitter's buffer, made to apply each appended row at once (always empty)."""

    def __init__(self, apply: Callable[[_Row], None]) -> None:
        super().__init__()
        self._apply = apply

    def append(self, row: _Row) -> None:
        self._apply(row)


class LocalEmitter(Emitter):
    """An :class:`Emitter` whose events go straight into an embedded engine (no thread, no
    socket). Same methods, same never-raise contract: an event that cannot be applied is
    counted in :attr:`dropped`."""

    def __init__(self, backend: EmbeddedBackend, source: str = "default") -> None:
        self._backend = backend
        super().__init__("inproc://metricsd-embedded", source=source)

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._buf = _Applier(self._apply)
        self._max_buffer = 0 if self._closed else 1 << 62
        self._wake_at = -1  # never wake a flusher: there is none

    def _apply(self, row: _Row) -> None:
        self._backend.add_row(row, self)

    def flush(self, timeout: float = 5.0) -> bool:
        self._backend.apply_pending()
        return True

    def close(self, timeout: float = 5.0) -> bool:
        self._backend.apply_pending()
        self._closed = True
        self._max_buffer = 0
        return True


_BACKENDS: weakref.WeakSet[EmbeddedBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_BACKENDS):
        backend._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class EmbeddedBackend:
    """An in-process engine with the daemon's five trackers; thread-safe (one lock).

    ``slo_objective`` sets the objective of the single SLO (default: the daemon's default,
    0.999); ``pricing_file`` a price table to use instead of the built-in one; ``config`` a
    whole :class:`metricsd.config.Config` instead of both. ``cost_only`` runs the cost tracker
    alone (the client's local pricing).
    """

    def __init__(
        self,
        *,
        slo_objective: float | None = None,
        pricing_file: str | None = None,
        config: Config | None = None,
        source: str = "default",
        cost_only: bool = False,
    ) -> None:
        require_metricsd()
        from metricsd.embedded import Embedded

        self.core = Embedded(
            config=config,
            slo_objective=slo_objective,
            pricing_file=pricing_file,
            cost_only=cost_only,
        )
        self.config = self.core.config
        self._lock = threading.RLock()
        self._pending: list[tuple[_Row, LocalEmitter]] = []
        self._packer = _wire.new_packer()
        self.emitter: Emitter = LocalEmitter(self, source)
        self.url = "embedded"
        _BACKENDS.add(self)

    def __repr__(self) -> str:
        return f"EmbeddedBackend(events={self.core.events_received})"

    # --- writes ---------------------------------------------------------------------------

    def add_row(self, row: _Row, emitter: LocalEmitter) -> None:
        """Buffer one emitter row; apply the buffer when it holds :data:`BATCH` rows."""
        with self._lock:
            self._pending.append((row, emitter))
            emitter._sent += 1
            if len(self._pending) >= BATCH:
                self.apply_pending()

    def apply_pending(self) -> None:
        """Encode the buffered rows as the client would send them, decode them as the daemon
        does, and apply them. Rows that cannot be encoded are counted as the emitter's drops."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            by_emitter: dict[int, tuple[LocalEmitter, list[_Row]]] = {}
            for row, emitter in pending:
                by_emitter.setdefault(id(emitter), (emitter, []))[1].append(row)
            for emitter, rows in by_emitter.values():
                packed, bad = _wire.encode(rows, emitter.source, self._packer)
                if bad:
                    emitter._sent -= bad
                    emitter._fdropped += bad
                for _n, parts in _wire.assemble(packed):
                    self.core.apply(_wire.frame(parts, None, self._packer))

    def charge(
        self,
        key_id: str | None,
        fields: dict[str, Any],
        user_id: str | None,
        request_id: str | None,
    ) -> float:
        """Apply one ``usage`` event and return what the cost tracker charged for it (USD)."""
        with self._lock:
            self.apply_pending()
            before = self.core.spent()
            self.emitter.usage(key_id=key_id, user_id=user_id, request_id=request_id, **fields)
            self.apply_pending()
            return self.core.usd(self.core.spent() - before)

    def sync(self, timeout: float | None = None) -> bool:
        self.apply_pending()  # every write so far is now in the trackers
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        self.apply_pending()
        return True

    def close(self) -> None:
        self.emitter.close()

    # --- reads ------------------------------------------------------------------------------

    def _view(self, name: str, *args: Any) -> Any:
        with self._lock:
            self.apply_pending()
            return self.core.view(name, *args)

    def streaming(self, model: str | None = None) -> dict[str, Any]:
        return dict(self._view("streaming", model))

    def errors(self) -> dict[str, Any]:
        return dict(self._view("errors"))

    def slo(self) -> dict[str, Any]:
        return dict(self._view("slo"))

    def error_patterns(
        self, min_count: int, recent_only: bool, limit: int | None
    ) -> list[dict[str, Any]]:
        return list(self._view("error_patterns", min_count, recent_only, limit))

    def costs(self) -> dict[str, Any]:
        return dict(self._view("costs"))

    def key_costs(self, key_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.apply_pending()
            view = self.core.wall_view("cost_key", key_id)
            return None if view is None else dict(view)

    def budgets(self) -> dict[str, Any]:
        with self._lock:
            self.apply_pending()
            return dict(self.core.wall_view("budgets"))

    def budget(self, key_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.apply_pending()
            found = self.core.wall_view("budget", key_id)
            return None if found is None else dict(found)

    def put_budget(self, key_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from metricsd.embedded import BudgetError

        with self._lock:
            self.apply_pending()
            try:
                return self.core.put_budget(key_id, body)
            except BudgetError as exc:
                raise MetricsdHTTPError(400, str(exc), "/metrics/budgets/{key}") from None

    def delete_budget(self, key_id: str) -> bool:
        with self._lock:
            self.apply_pending()
            return self.core.delete_budget(key_id)

    def suggestions(self, key_id: str | None) -> list[dict[str, Any]]:
        """Evaluated now (the daemon evaluates on a timer, ``cost.suggestion_interval``)."""
        with self._lock:
            self.apply_pending()
            self.core.refresh_suggestions(key_id)
            return list(self.core.view("suggestions", key_id))

    def summary(self, window_seconds: float) -> dict[str, Any]:
        return dict(self._view("summary", window_seconds))

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._view("recent", limit))

    def prometheus(self) -> str:
        with self._lock:
            self.apply_pending()
            return self.core.prometheus()
