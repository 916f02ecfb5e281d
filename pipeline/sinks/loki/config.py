"""Settings of the Grafana Loki sink (env prefix of the built-in instance: LOKI_)."""

from __future__ import annotations

from pydantic import Field

from pipeline.sinks.settings import SinkSettings


class LokiSinkSettings(SinkSettings):
    type: str = "loki"
    url: str | None = Field(None, description="base URL of Loki, e.g. http://loki:3100")

    def require_runnable(self) -> None:
        if not self.url:
            raise ValueError("url is required when the sink is enabled")
