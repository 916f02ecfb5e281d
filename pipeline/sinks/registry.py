"""Which sink types exist: their settings model and their implementation, built in or registered by
third-party packages through the `pipeline.sinks` entry point group (see docs/writing-a-sink.md)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from pipeline.sinks.base import Sink
from pipeline.sinks.http.config import HttpSinkSettings
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.postgres.config import PostgresSinkSettings
from pipeline.sinks.settings import SinkSettings

ENTRY_POINT_GROUP = "pipeline.sinks"


@dataclass(frozen=True)
class SinkType:
    """A sink type: `settings` validates its config; `implementation` ("module:Class") builds it from
    those settings. The class is imported only when a sink of this type is enabled."""

    name: str
    settings: type[SinkSettings]
    implementation: str

    def load(self) -> type[Sink]:
        module, _, attr = self.implementation.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise TypeError(f"sink type {self.name!r}: {self.implementation} is not a pipeline Sink")
        return cls


BUILTIN_TYPES: tuple[SinkType, ...] = (
    SinkType("postgres", PostgresSinkSettings, "pipeline.sinks.postgres.sink:PostgresSink"),
    SinkType("http", HttpSinkSettings, "pipeline.sinks.http.sink:HttpSink"),
    SinkType("loki", LokiSinkSettings, "pipeline.sinks.loki.sink:LokiSink"),
)


@cache
def sink_types() -> dict[str, SinkType]:
    """Built-in types plus those registered under the `pipeline.sinks` entry point group. An entry point
    names a `SinkType` object; a name clash with a built-in type is an error."""
    types = {t.name: t for t in BUILTIN_TYPES}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        sink_type = ep.load()
        if not isinstance(sink_type, SinkType):
            raise TypeError(f"entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP} must be a SinkType")
        if sink_type.name in types:
            raise ValueError(f"entry point {ep.value} registers sink type {sink_type.name!r}, which exists already")
        types[sink_type.name] = sink_type
    return types


# name -> (type, enabled by default). The name is also the env prefix: tsdb -> TSDB_ENABLED, TSDB_DSN, ...
BUILTIN_SINKS: dict[str, tuple[str, bool]] = {
    "tsdb": ("postgres", True),
    "loki": ("loki", False),
    "http": ("http", False),
}


def create_sink(settings: SinkSettings) -> Sink:
    cls = sink_types()[settings.type].load()
    return cls(settings)
