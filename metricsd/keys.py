"""API keys → key ids (SPEC §1.6): a raw key never goes further than the ingest step."""

from __future__ import annotations

import functools
import hashlib

__all__ = ["hash_key"]


@functools.lru_cache(maxsize=65536)
def hash_key(api_key: str) -> str:
    """``key_id`` for a raw API key: ``k_`` + the first 12 hex chars of its SHA-256."""
    return "k_" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
