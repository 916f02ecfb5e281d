"""Build a sink instance from its settings."""

from __future__ import annotations

from pipeline.sinks.base import Sink
from pipeline.sinks.settings import SinkSettings


def create_sink(settings: SinkSettings) -> Sink:
    if settings.type == "postgres":
        from pipeline.sinks.postgres.config import PostgresSinkSettings
        from pipeline.sinks.postgres.sink import PostgresSink

        assert isinstance(settings, PostgresSinkSettings)
        return PostgresSink(settings)
    if settings.type == "http":
        from pipeline.sinks.http.config import HttpSinkSettings
        from pipeline.sinks.http.sink import HttpSink

        assert isinstance(settings, HttpSinkSettings)
        return HttpSink(settings)
    raise ValueError(f"sink {settings.name!r}: type {settings.type!r} has no implementation in this version")
