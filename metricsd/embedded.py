"""The daemon's engine in another process: what the client's ``embedded=True`` mode runs.

The same wiring as ``metricsd serve`` (:func:`metricsd.wiring.build_engine`), no sockets, no
HTTP, no thread: frames are decoded and applied when given, and every read builds a snapshot
and returns exactly the JSON the daemon's route would serve (strict JSON, decoded again). The
client package talks to this class only, never to the trackers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from metricsd.budgets import BudgetError
from metricsd.config import Config, SloConfig
from metricsd.decode import decode
from metricsd.export.prometheus import render_both
from metricsd.jsonutil import dumps
from metricsd.pricing import usd
from metricsd.snapshot import Snapshot
from metricsd.wiring import build_engine

__all__ = ["BudgetError", "Embedded"]


def _json(value: Any) -> Any:
    """What the daemon's route would send: strict JSON, decoded again."""
    return json.loads(dumps(value))


class Embedded:
    """An engine in this process; not thread-safe (the client holds a lock around it).

    ``slo_objective`` sets the objective of the single SLO; ``pricing_file`` a price table to
    use instead of the built-in one; ``config`` a whole :class:`Config` instead of both.
    ``cost_only`` runs the cost tracker alone (the client's local pricing).
    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        slo_objective: float | None = None,
        pricing_file: str | None = None,
        cost_only: bool = False,
    ) -> None:
        if config is None:
            config = Config()
            if slo_objective is not None:
                config = dataclasses.replace(config, slo=(SloConfig(objective=slo_objective),))
            if pricing_file:
                cost = dataclasses.replace(config.cost, pricing_file=pricing_file)
                config = dataclasses.replace(config, cost=cost)
        self.config = config
        only = frozenset({"cost"}) if cost_only else None
        self.engine = build_engine(config, time.monotonic(), time.time(), only)
        self._trackers: dict[str, Any] = {t.name: t for t in self.engine.trackers}

    @property
    def events_received(self) -> int:
        return sum(self.engine.events_received.values())

    # --- writes ---------------------------------------------------------------------------

    def apply(self, frame: bytes) -> None:
        """Decode one frame as the daemon does and apply it."""
        now, wall = time.monotonic(), time.time()
        self.engine.apply(decode(frame, wall, self.engine.limits), now, wall)

    def spent(self) -> int:
        """Lifetime spend of every key, in pUSD (to tell what one event was charged)."""
        return int(self._trackers["cost"].all.total)

    @staticmethod
    def usd(pico: int) -> float:
        return usd(pico)

    def put_budget(self, key_id: str, body: Any) -> dict[str, Any]:
        """Raises :class:`BudgetError` on bad input, like the daemon's 400."""
        cost = self._trackers["cost"]
        result = self.engine.command(lambda: cost.put_budget(key_id, body, time.time()))
        return dict(_json(result))

    def delete_budget(self, key_id: str) -> bool:
        cost = self._trackers["cost"]
        return bool(self.engine.command(lambda: cost.delete_budget(key_id)))

    def refresh_suggestions(self, key_id: str | None) -> None:
        """Evaluate suggestions now (the daemon does it on a timer)."""
        from metricsd.trackers.cost_suggest import refresh

        cost = self._trackers["cost"]
        keys = sorted(cost.keys) if key_id is None else [key_id]
        self.engine.command(lambda: refresh(cost, keys, time.monotonic()))
        cost.dirty = True

    # --- reads ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A fresh snapshot (expiry and idle streams evaluated now)."""
        return self.engine.snapshot(time.monotonic(), time.time())

    def view(self, name: str, *args: Any) -> Any:
        """The JSON of a daemon route, by view name (see :data:`metricsd.views.VIEWS`)."""
        return _json(self.snapshot().view(name, *args))

    def wall_view(self, name: str, *args: Any) -> Any:
        """A view read at the current wall clock (budgets, a key's costs)."""
        return _json(self.snapshot().compute(name, *args, time.time()))

    def prometheus(self) -> str:
        return render_both(self.snapshot().families())[0].decode("utf-8")
