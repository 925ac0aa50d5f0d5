"""The record a sink receives for each LLM call: :class:`RequestMetrics`.

Field names follow the steer_llm_sdk guide's metric object (``model``, ``latency_ms``,
``input_tokens``, ``output_tokens``, ``cached_tokens``, ``total_tokens``, ``error_class``,
``request_id``, ``timestamp``); the rest carries what metricsd's wire protocol can take (status,
time to first token, the arrival time of each streamed chunk, the finish reason, the hashed key).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["AgentMetrics", "RequestMetrics", "provider_for"]

#: Model-name prefixes → provider, for records that do not name theirs (the daemon's defaults).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("ft:gpt-", "openai"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("dall-e", "openai"),
    ("tts-", "openai"),
    ("whisper", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("meta-llama/", "meta"),
    ("llama", "meta"),
    ("command", "cohere"),
    ("deepseek", "deepseek"),
)


def provider_for(model: str) -> str:
    """The provider of a model name by its prefix (``"unknown"`` when none matches)."""
    best = ""
    found = "unknown"
    for prefix, provider in _PREFIXES:
        if model.startswith(prefix) and len(prefix) > len(best):
            best, found = prefix, provider
    return found


@dataclass
class RequestMetrics:
    """One LLM call, finished (successfully or not).

    Times: ``timestamp`` is when the call started (Unix seconds); ``latency_ms`` its duration;
    ``ttft_ms`` the time to the first streamed token. ``chunk_times`` (Unix seconds) and
    ``chunk_tokens`` (tokens in each chunk) describe a streamed response, one entry per chunk
    that carried output. ``status`` is the HTTP status, or None when the call failed without
    one (a connection error, a timeout). ``key_id`` is the hashed API key (never the key).
    """

    model: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    provider: str | None = None
    endpoint: str | None = None
    status: int | None = 200
    error_class: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    key_id: str | None = None
    streaming: bool = False
    ttft_ms: float | None = None
    stream_id: str | None = None
    stream_status: str | None = None  # completed | failed | cancelled (streamed calls)
    chunk_times: list[float] | None = field(default=None, repr=False)
    chunk_tokens: list[int] | None = field(default=None, repr=False)
    cost_usd: float | None = None
    timestamp: float = field(default_factory=time.time)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def provider_name(self) -> str:
        """``provider``, or the one the model name implies."""
        return self.provider or provider_for(self.model)

    @property
    def is_error(self) -> bool:
        return (
            self.error_class is not None
            or (self.status is not None and self.status >= 400)
            or self.status is None
            or self.stream_status == "failed"
        )

    @property
    def end_time(self) -> float:
        return self.timestamp + self.latency_ms / 1000.0

    def without_stream_details(self) -> RequestMetrics:
        """The same call without its per-chunk timings (recorded as a plain request)."""
        return replace(self, chunk_times=None, chunk_tokens=None, ttft_ms=None, stream_id=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_tokens"] = self.total_tokens
        return out


#: The steer_llm_sdk name of the same record.
AgentMetrics = RequestMetrics
