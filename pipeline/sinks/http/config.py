"""Settings of the generic HTTP webhook sink (env prefix of the built-in instance: HTTP_)."""

from __future__ import annotations

from pydantic import Field

from pipeline.sinks.settings import SinkSettings


class HttpSinkSettings(SinkSettings):
    type: str = "http"
    url: str | None = Field(None, description="URL the JSON batches are POSTed to")

    def require_runnable(self) -> None:
        if not self.url:
            raise ValueError("url is required when the sink is enabled")
