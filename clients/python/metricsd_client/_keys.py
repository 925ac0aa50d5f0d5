"""API keys never leave the process: they are hashed here with the daemon's rule (SPEC §1.6)."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

__all__ = ["hash_key", "key_id_of"]

_KEY_ID: Final = re.compile(r"k_[0-9a-f]{12}\Z")


@functools.lru_cache(maxsize=4096)
def hash_key(api_key: str) -> str:
    """``key_id`` of a raw API key: ``"k_"`` + the first 12 hex digits of its SHA-256."""
    return "k_" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def key_id_of(key: str) -> str:
    """A key as the daemon names it: key_ids and ``*`` (every key) as they are, raw keys hashed."""
    if key == "*" or _KEY_ID.match(key):
        return key
    return hash_key(key)
