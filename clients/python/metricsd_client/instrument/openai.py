"""``instrument_openai(client)``: metrics for every chat/completions call of an OpenAI client.

Works with ``openai.OpenAI`` and ``openai.AsyncOpenAI`` and any OpenAI-compatible client with
the same shape (``client.chat.completions.create``, ``client.completions.create``); the
``openai`` package itself is never imported here. The client's ``create`` methods are replaced
on the instance by wrappers that time the call and hand one
:class:`~metricsd_client.RequestMetrics` per call to a collector (default: the process-wide
one, which sends to the daemon):

- a plain call: latency, status, input/output/cached/reasoning tokens from ``usage``, finish
  reason, the response id as ``request_id``;
- a streamed call: the returned stream is wrapped; each chunk that carries output is
  timestamped, so the daemon computes time to first token, inter-token latency and token rates;
  the record is made when the stream ends (``completed``), raises (``failed``) or is closed or
  dropped early (``cancelled``). Token counts come from the final ``usage`` chunk when the
  server sends one (pass ``stream_options={"include_usage": True}``, or
  ``include_usage=True`` here to add it and hide that extra chunk from the caller); without
  it, each chunk counts as one token and prompt tokens are unknown (0);
- an exception: its class as ``error_class``, its HTTP status when it has one (``status_code``),
  and the exception is re-raised unchanged.

The API key is hashed in this process (``k_`` + 12 hex digits of SHA-256, the daemon's rule);
only that key_id is sent. Nothing here can raise into the caller: a failure to record is
swallowed (and logged at debug level).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Final

from metricsd_client._keys import hash_key
from metricsd_client.records import RequestMetrics

__all__ = ["instrument_openai", "uninstrument_openai"]

log = logging.getLogger("metricsd_client")

_MARK: Final = "__metricsd_original__"
_RESOURCES: Final = (
    ("chat.completions", "/v1/chat/completions"),
    ("completions", "/v1/completions"),
)
_MAX_MESSAGE: Final = 512
_OWN: Final = frozenset({"_stream", "_call", "_iter"})


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or mapping key (responses may be models or dicts)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def spread(total: int, chunks: int) -> list[int]:
    """``total`` tokens over ``chunks`` chunks as evenly as whole numbers allow (each ≥ 1)."""
    if chunks <= 0:
        return []
    if total < chunks:
        return [1] * chunks
    return [((i + 1) * total) // chunks - (i * total) // chunks for i in range(chunks)]


class _Call:
    """One call being measured; turns into one record when it ends (exactly once)."""

    __slots__ = (
        "chunk_times",
        "collector",
        "done",
        "endpoint",
        "finish_reason",
        "hide_usage",
        "key_id",
        "model",
        "perf0",
        "provider",
        "request_id",
        "stream",
        "usage",
        "user_id",
        "wall0",
    )

    def __init__(
        self,
        collector: Any,
        endpoint: str,
        provider: str | None,
        api_key: Any,
        kwargs: dict[str, Any],
    ) -> None:
        self.wall0 = time.time()
        self.perf0 = time.perf_counter()
        self.collector = collector
        self.endpoint = endpoint
        self.provider = provider
        self.key_id = hash_key(api_key) if isinstance(api_key, str) and api_key else None
        self.model = str(kwargs.get("model") or "")
        self.user_id = kwargs.get("user") if isinstance(kwargs.get("user"), str) else None
        self.stream = bool(kwargs.get("stream"))
        self.hide_usage = False
        self.chunk_times: list[float] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.request_id: str | None = None
        self.done = False

    def _now(self) -> tuple[float, float]:
        """(wall time, ms since start), both from the performance counter."""
        elapsed = time.perf_counter() - self.perf0
        return self.wall0 + elapsed, elapsed * 1000.0

    def _emit(self, record: RequestMetrics) -> None:
        try:
            self.collector.record(record)
        except Exception:
            log.debug("metricsd_client: recording an OpenAI call failed", exc_info=True)

    def _base(self, latency_ms: float, status: int | None) -> RequestMetrics:
        usage = self.usage
        prompt_details = _get(usage, "prompt_tokens_details")
        completion_details = _get(usage, "completion_tokens_details")
        return RequestMetrics(
            model=self.model,
            latency_ms=latency_ms,
            input_tokens=_int(_get(usage, "prompt_tokens")),
            output_tokens=_int(_get(usage, "completion_tokens")),
            cached_tokens=_int(_get(prompt_details, "cached_tokens")),
            reasoning_tokens=_int(_get(completion_details, "reasoning_tokens")),
            provider=self.provider,
            endpoint=self.endpoint,
            status=status,
            finish_reason=self.finish_reason,
            request_id=self.request_id,
            user_id=self.user_id,
            key_id=self.key_id,
            streaming=self.stream,
            timestamp=self.wall0,
        )

    def _learn(self, obj: Any) -> None:
        model = _get(obj, "model")
        if isinstance(model, str) and model:
            self.model = model
        rid = _get(obj, "id")
        if isinstance(rid, str) and rid and self.request_id is None:
            self.request_id = rid
        usage = _get(obj, "usage")
        if usage is not None:
            self.usage = usage
        for choice in _get(obj, "choices") or ():
            reason = _get(choice, "finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason

    # --- plain calls ---------------------------------------------------------------------

    def completed(self, response: Any) -> None:
        if self.done:
            return
        self.done = True
        try:
            _wall, elapsed = self._now()
            self._learn(response)
            self._emit(self._base(elapsed, 200))
        except Exception:
            log.debug("metricsd_client: reading an OpenAI response failed", exc_info=True)

    def failed(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        try:
            _wall, elapsed = self._now()
            status = getattr(exc, "status_code", None)
            record = self._base(elapsed, status if isinstance(status, int) else None)
            record.error_class = type(exc).__name__
            record.error_message = str(exc)[:_MAX_MESSAGE] or None
            if self.stream and self.chunk_times:
                self._stream_fields(record, "failed")
            self._emit(record)
        except Exception:
            log.debug("metricsd_client: recording an OpenAI error failed", exc_info=True)

    # --- streamed calls ------------------------------------------------------------------

    def chunk(self, chunk: Any) -> bool:
        """Note one chunk; False when it is the usage chunk this wrapper asked for (hidden)."""
        try:
            wall, _elapsed = self._now()
            self._learn(chunk)
            choices = _get(chunk, "choices") or ()
            if not choices and self.hide_usage and _get(chunk, "usage") is not None:
                return False
            for choice in choices:
                delta = _get(choice, "delta")
                output = (
                    _get(delta, "content")
                    or _get(delta, "tool_calls")
                    or _get(delta, "refusal")
                    or _get(delta, "reasoning_content")
                    or _get(choice, "text")  # legacy completions
                )
                if output:
                    self.chunk_times.append(wall)
                    break
        except Exception:
            log.debug("metricsd_client: reading an OpenAI chunk failed", exc_info=True)
        return True

    def _stream_fields(self, record: RequestMetrics, status: str) -> None:
        times = self.chunk_times
        record.stream_id = f"oai-{uuid.uuid4().hex}"
        record.stream_status = status
        record.chunk_times = list(times)
        if times:
            record.ttft_ms = (times[0] - self.wall0) * 1000.0
        if self.usage is not None and _get(self.usage, "completion_tokens") is not None:
            record.chunk_tokens = spread(record.output_tokens, len(times))
        else:
            record.output_tokens = len(times)
            record.chunk_tokens = [1] * len(times)

    def ended(self, status: str) -> None:
        """The stream finished (``completed``) or was closed early (``cancelled``)."""
        if self.done:
            return
        self.done = True
        try:
            _wall, elapsed = self._now()
            record = self._base(elapsed, 200 if status == "completed" else 499)
            self._stream_fields(record, status)
            self._emit(record)
        except Exception:
            log.debug("metricsd_client: recording an OpenAI stream failed", exc_info=True)


class _Stream:
    """Wraps a synchronous stream: same iteration, context manager and attributes."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call
        self._iter: Iterator[Any] | None = None

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = iter(self._stream)
        while True:
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._call.ended("completed")
                raise
            except Exception as exc:
                self._call.failed(exc)
                raise
            except BaseException:
                self._call.ended("cancelled")
                raise
            if self._call.chunk(chunk):
                return chunk

    def close(self) -> None:
        self._call.ended("cancelled")
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set yet (a failed __init__): never recurse
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._call.ended("cancelled")


class _AsyncStream:
    """Wraps an asynchronous stream: same iteration, context manager and attributes."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call
        self._iter: AsyncIterator[Any] | None = None

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._iter is None:
            self._iter = self._stream.__aiter__()
        while True:
            try:
                chunk = await self._iter.__anext__()
            except StopAsyncIteration:
                self._call.ended("completed")
                raise
            except Exception as exc:
                self._call.failed(exc)
                raise
            except BaseException:
                self._call.ended("cancelled")
                raise
            if self._call.chunk(chunk):
                return chunk

    async def close(self) -> None:
        self._call.ended("cancelled")
        close = getattr(self._stream, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set yet (a failed __init__): never recurse
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._call.ended("cancelled")


def _resource(client: Any, path: str) -> Any:
    obj = client
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _wrap(
    original: Callable[..., Any],
    client: Any,
    endpoint: str,
    collector: Any,
    provider: str | None,
    include_usage: bool,
) -> Callable[..., Any]:
    def start(kwargs: dict[str, Any]) -> _Call:
        call = _Call(collector, endpoint, provider, getattr(client, "api_key", None), kwargs)
        if include_usage and call.stream and kwargs.get("stream_options") is None:
            kwargs["stream_options"] = {"include_usage": True}
            call.hide_usage = True
        return call

    async def finish_async(pending: Any, call: _Call) -> Any:
        try:
            result = await pending
        except BaseException as exc:
            call.failed(exc)
            raise
        if call.stream:
            return _AsyncStream(result, call)
        call.completed(result)
        return result

    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        # One wrapper for both clients: an async client's create returns an awaitable (its
        # method is not always a coroutine function: it may be decorated), finished above.
        call = start(kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            call.failed(exc)
            raise
        if inspect.isawaitable(result):
            return finish_async(result, call)
        if call.stream:
            return _Stream(result, call)
        call.completed(result)
        return result

    setattr(create, _MARK, original)
    return create


def instrument_openai(
    client: Any,
    *,
    collector: Any = None,
    provider: str | None = None,
    include_usage: bool = False,
    endpoints: dict[str, str] | None = None,
) -> Any:
    """Instrument ``client`` in place and return it (idempotent).

    ``collector``: a :class:`~metricsd_client.MetricsCollector` (default: the process-wide
    one). ``provider``: the provider label (default: the daemon derives it from the model
    name). ``include_usage``: ask streamed calls for a final usage chunk (see the module
    docstring). ``endpoints``: the endpoint label per resource, by default
    ``{"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}``.
    """
    if collector is None:
        from metricsd_client.collector import default_collector

        collector = default_collector()
    labels = dict(_RESOURCES)
    labels.update(endpoints or {})
    for path, endpoint in labels.items():
        resource = _resource(client, path)
        original = getattr(resource, "create", None) if resource is not None else None
        if original is None or hasattr(original, _MARK):
            continue
        wrapped = _wrap(original, client, endpoint, collector, provider, include_usage)
        setattr(resource, "create", wrapped)  # noqa: B010 (an instance attribute, on purpose)
    return client


def uninstrument_openai(client: Any) -> Any:
    """Undo :func:`instrument_openai` on ``client``."""
    for path, _endpoint in _RESOURCES:
        resource = _resource(client, path)
        current = getattr(resource, "create", None) if resource is not None else None
        if current is not None and hasattr(current, _MARK):
            try:
                delattr(resource, "create")
            except AttributeError:
                setattr(resource, "create", getattr(current, _MARK))  # noqa: B010
    return client
