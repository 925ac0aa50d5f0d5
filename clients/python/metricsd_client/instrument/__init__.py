"""Automatic instrumentation of LLM client libraries."""

from metricsd_client.instrument.openai import instrument_openai, uninstrument_openai

__all__ = ["instrument_openai", "uninstrument_openai"]
