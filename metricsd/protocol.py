"""The wire protocol's public surface (SPEC §1), for emitters' tests, tools and the daemon.

The work is split along its seams: :mod:`metricsd.decode` (frames → validated batches),
:mod:`metricsd.validate` (value checks and limits), :mod:`metricsd.batch` (the columnar batch
the trackers read) and :mod:`metricsd.keys` (API key hashing). This module re-exports what
callers outside the daemon use, so ``from metricsd.protocol import decode`` keeps working.
"""

from __future__ import annotations

from metricsd.batch import Batch, Cat
from metricsd.decode import PROTOCOL_VERSION, REASONS, TYPED_COLUMNS, Decoder, DecodeResult, decode
from metricsd.keys import hash_key
from metricsd.validate import Limits

__all__ = [
    "PROTOCOL_VERSION",
    "REASONS",
    "TYPED_COLUMNS",
    "Batch",
    "Cat",
    "DecodeResult",
    "Decoder",
    "Limits",
    "decode",
    "hash_key",
]
