"""Which sink types exist, their settings models, and the sink instances every install has."""

from __future__ import annotations

from pipeline.sinks.http.config import HttpSinkSettings
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.postgres.config import PostgresSinkSettings
from pipeline.sinks.settings import SinkSettings

SINK_TYPES: dict[str, type[SinkSettings]] = {
    "postgres": PostgresSinkSettings,
    "loki": LokiSinkSettings,
    "http": HttpSinkSettings,
}

# name -> (type, enabled by default). The name is also the env prefix: tsdb -> TSDB_ENABLED, TSDB_DSN, ...
BUILTIN_SINKS: dict[str, tuple[str, bool]] = {
    "tsdb": ("postgres", True),
    "loki": ("loki", False),
    "http": ("http", False),
}

# Types whose delivery is implemented in this version of the worker.
IMPLEMENTED_TYPES: frozenset[str] = frozenset({"postgres", "http"})
