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
#: ``\d``, which would also match other scripts' digits and make patterns depend on them). The
#: UUID class spells out both cases rather than using IGNORECASE: the same set, matched twice as
#: fast.
UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
REQUEST_ID: Final = re.compile(r"req-[a-zA-Z0-9]+")
ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]+")
NUMBER: Final = re.compile(r"[0-9]+")
STEPS: Final = (
    (UUID, "<UUID>"),
    (REQUEST_ID, "<REQUEST_ID>"),
    (ADDRESS, "<ADDR>"),
    (NUMBER, "<NUM>"),
)


@functools.lru_cache(maxsize=8192)
def normalise(message: str) -> str:
    """The message with ids and numbers replaced (in the order of :data:`STEPS`), ≤ 200 chars.

    A step runs only when the text it needs is present (four hyphens, ``req-``, ``0x``): the
    result is the same, and most messages skip most of the regular expressions.
    """
    if message.count("-") >= 4:
        message = UUID.sub("<UUID>", message)
    if "req-" in message:
        message = REQUEST_ID.sub("<REQUEST_ID>", message)
    if "0x" in message:
        message = ADDRESS.sub("<ADDR>", message)
    return NUMBER.sub("<NUM>", message)[:MAX_NORMALISED]


@functools.lru_cache(maxsize=8192)
def fingerprint(error_type: str, endpoint: str, normalised: str) -> str:
    """First 8 hex chars of SHA-256(``error_type:endpoint:normalised``)."""
    text = f"{error_type}:{endpoint}:{normalised}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
