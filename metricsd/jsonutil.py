"""Strict JSON for every surface: NaN and infinities become null, never invalid JSON."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    try:  # the common case, every float finite: one pass in C
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a NaN or an infinity somewhere: walk the value and replace it
        return json.dumps(finite(value), allow_nan=False, separators=(",", ":"))
