"""Error-message normalisation and fingerprints (SPEC §4.4). Pure functions.

Two messages that differ only in the ids and numbers inside them describe the same failure, so
they should land in the same error pattern. The message is normalised by four substitutions,
applied one after the other (the order matters: a UUID contains digit runs and hex digits, so it
must be replaced before the digit rule sees it), then cut to 200 characters:

1. UUIDs (any case)                           → ``<UUID>``
2. request ids ``req-`` + letters and digits  → ``<REQUEST_ID>``
3. hex addresses ``0x`` + hex digits          → ``<ADDR>``
4. runs of ASCII digits                       → ``<NUM>``

The fingerprint is the first 8 hex characters of SHA-256(``error_type:endpoint:normalised``):
the endpoint is part of it, so the same message on two endpoints is two patterns.

Both functions are memoised with bounded caches: real error traffic repeats the same few
messages, and the same (type, endpoint, normalised) triples, over and over.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

__all__ = ["MAX_NORMALISED", "STEPS", "fingerprint", "normalise"]

MAX_NORMALISED: Final = 200

#: The substitutions, in the order they are applied. Digits are ASCII only (``[0-9]``, not
#: ``\d``, which would also match other scripts' digits and make patterns depend on them).
STEPS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (
        re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE),
        "<UUID>",
    ),
    (re.compile(r"req-[a-zA-Z0-9]+"), "<REQUEST_ID>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<ADDR>"),
    (re.compile(r"[0-9]+"), "<NUM>"),
)


@functools.lru_cache(maxsize=8192)
def normalise(message: str) -> str:
    """The message with ids and numbers replaced (in the order of :data:`STEPS`), ≤ 200 chars."""
    for pattern, replacement in STEPS:
        message = pattern.sub(replacement, message)
    return message[:MAX_NORMALISED]


@functools.lru_cache(maxsize=8192)
def fingerprint(error_type: str, endpoint: str, normalised: str) -> str:
    """First 8 hex chars of SHA-256(``error_type:endpoint:normalised``)."""
    text = f"{error_type}:{endpoint}:{normalised}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
