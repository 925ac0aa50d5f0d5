"""A chat service on aiohttp whose LLM calls are measured by metricsd (five lines marked below).

Every call the app makes through its OpenAI client becomes metricsd events: latency, tokens,
cost, errors, and for streamed answers time to first token and inter-token latency. Run::

    metricsd serve &                                   # the daemon (http :9465, ingest :5557)
    OPENAI_API_KEY=... python examples/aiohttp_app.py  # OPENAI_BASE_URL for another server
    curl -d '{"message": "Hello"}' localhost:8080/chat
    curl -d '{"message": "Hello", "stream": true}' localhost:8080/chat
    curl localhost:9465/metrics/streaming

The client finds the daemon through METRICSD_INGEST (events) and METRICSD_URL (reads), and
takes its collection settings (sampling, enable flags, batching) from the environment.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from metricsd_client import MetricsCollector, MetricsConfig, instrument_openai  # metrics 1/5
from openai import AsyncOpenAI

MODEL = os.environ.get("CHAT_MODEL", "gpt-4o-mini")


def make_app(client: Any = None, model: str = MODEL) -> web.Application:
    collector = MetricsCollector(MetricsConfig.from_env())  # metrics 2/5
    llm = instrument_openai(client or AsyncOpenAI(), collector=collector)  # metrics 3/5

    async def flush_metrics(_app: web.Application) -> None:  # metrics 4/5
        await collector.flush()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = [{"role": "user", "content": str(body.get("message", ""))}]
        if not body.get("stream"):
            reply = await llm.chat.completions.create(model=model, messages=messages)
            return web.json_response({"reply": reply.choices[0].message.content})
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        stream = await llm.chat.completions.create(model=model, messages=messages, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                await response.write(chunk.choices[0].delta.content.encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/chat", chat)
    app.on_cleanup.append(flush_metrics)  # metrics 5/5
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
