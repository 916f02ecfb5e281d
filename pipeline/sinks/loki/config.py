"""Settings of the Grafana Loki sink (env prefix of the built-in instance: LOKI_).

Every field below is also an env variable of the built-in `loki` sink: LOKI_URL, LOKI_TENANT_ID, LOKI_USERNAME,
LOKI_PASSWORD, LOKI_BEARER_TOKEN, LOKI_ENCODING, LOKI_LABEL_KEYS ("source,type"), LOKI_EVENT_LABEL_ALLOWLIST
("deck,unit"), LOKI_MAX_STREAMS, LOKI_MAX_PUSH_BYTES, LOKI_MAX_LINE_BYTES, LOKI_TLS_VERIFY, LOKI_CA_FILE.

Stream labels (see pipeline.sinks.loki.push for the exact rules): the event fields named in `label_keys`
plus the event labels named in `event_label_allowlist`, names sanitised to Loki's `[a-zA-Z_][a-zA-Z0-9_]*`.
`max_streams` = 0 (default): each label set is its own stream. `max_streams` = N: every event goes to one of N
streams `{stream_bucket="<k>"}`, k a hash of its label set: the same stream on every worker, so a redelivered
event is an exact duplicate that Loki drops (the line keeps the whole event, labels included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.sinks.settings import SinkSettings

# Event fields that may become stream labels: the top-level strings of the canonical body.
LABEL_FIELDS = ("source", "type", "id")
# The label of the hash-bucket streams (max_streams > 0); no configured label may use the name.
BUCKET_LABEL = "stream_bucket"
# Loki's default per-tenant limits (limits_config): max_label_names_per_series, max_label_name_length.
LOKI_MAX_LABEL_NAMES = 15
LOKI_MAX_LABEL_NAME_LENGTH = 1024
PUSH_PATH = "/loki/api/v1/push"


def _comma_list(value: Any) -> Any:
    """A list from a comma-separated string (env: "source,type"); lists pass through, items stripped."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() if isinstance(item, str) else item for item in value]
    return value


class LokiSinkSettings(SinkSettings):
    type: str = "loki"
    url: str | None = Field(
        None, description="base URL of Loki, e.g. http://loki:3100 (pushes go to /loki/api/v1/push)"
    )
    tenant_id: str | None = Field(None, description="sent as X-Scope-OrgID (multi-tenant Loki, Grafana Cloud)")
    username: str | None = Field(None, description="basic auth user (with password)")
    password: SecretStr | None = Field(None, description="basic auth password")
    bearer_token: SecretStr | None = Field(None, description="Authorization: Bearer <token> (instead of basic auth)")
    encoding: Literal["protobuf", "json"] = Field(
        "protobuf", description="protobuf = logproto.PushRequest + snappy block; json = JSON + gzip"
    )
    label_keys: list[str] = Field(
        default_factory=lambda: ["source", "type"],
        description='event fields that become stream labels: any of source, type, id (env: "source,type")',
    )
    event_label_allowlist: list[str] = Field(
        default_factory=list,
        description='keys of the event\'s "labels" that become stream labels when present (env: "deck,unit")',
    )
    max_streams: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="0 = each label set is its own stream; N = every event goes to one of N streams "
        '{stream_bucket="<k>"} chosen by a hash of its label set (the same on every worker)',
    )
    max_push_bytes: int = Field(
        1_048_576, ge=1024, description="upper bound of one push body before compression; a batch is split"
    )
    max_line_bytes: int = Field(
        262_144, ge=64, description="Loki's max_line_size: a longer line is a fatal error for that event"
    )
    tls_verify: bool = Field(True, description="verify the server certificate (https)")
    ca_file: Path | None = Field(None, description="CA bundle (PEM) to verify the server certificate with")

    @field_validator("url", "tenant_id", "username", "password", "bearer_token", "ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty env variable (LOKI_TENANT_ID=) means "not set"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError("not a URL; use http(s)://host:port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://loki:3100")
        return value

    @field_validator("label_keys", "event_label_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("label_keys")
    @classmethod
    def _label_keys(cls, value: list[str]) -> list[str]:
        unknown = [key for key in value if key not in LABEL_FIELDS]
        if unknown:
            raise ValueError(f"unknown event field(s) {unknown}: use {', '.join(LABEL_FIELDS)}")
        if len(set(value)) != len(value):
            raise ValueError("lists a field twice")
        if "source" not in value and "type" not in value:
            raise ValueError("must contain source or type (a stream needs at least one label)")
        return value

    @field_validator("event_label_allowlist")
    @classmethod
    def _allowlist(cls, value: list[str]) -> list[str]:
        from pipeline.sinks.loki.push import sanitize_label_name

        seen: dict[str, str] = {}
        for key in value:
            if not key:
                raise ValueError("an empty label key")
            if len(key.encode()) > LOKI_MAX_LABEL_NAME_LENGTH:
                raise ValueError(f"label key {key[:40]!r}... is longer than {LOKI_MAX_LABEL_NAME_LENGTH} bytes")
            name = sanitize_label_name(key)
            if name.startswith("__"):
                raise ValueError(f"label key {key!r} becomes {name!r}: names starting with __ are reserved in Loki")
            if name in seen:
                raise ValueError(f"label keys {seen[name]!r} and {key!r} both become the Loki label {name!r}")
            seen[name] = key
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LokiSinkSettings:
        from pipeline.sinks.loki.push import sanitize_label_name

        names = {sanitize_label_name(key) for key in self.event_label_allowlist}
        clash = sorted(names & ({BUCKET_LABEL} | set(self.label_keys)))
        if clash:
            raise ValueError(
                f"event_label_allowlist: {clash} would clash with the label(s) of label_keys or the reserved "
                f"{BUCKET_LABEL!r} label"
            )
        if len(self.label_keys) + len(self.event_label_allowlist) > LOKI_MAX_LABEL_NAMES:
            raise ValueError(
                f"label_keys and event_label_allowlist name {len(self.label_keys) + len(self.event_label_allowlist)} "
                f"labels; Loki accepts at most {LOKI_MAX_LABEL_NAMES} per stream"
            )
        if self.max_line_bytes > self.max_push_bytes:
            raise ValueError(
                f"max_line_bytes ({self.max_line_bytes}) must not exceed max_push_bytes ({self.max_push_bytes})"
            )
        return self

    def require_runnable(self) -> None:
        if not self.url:
            raise ValueError("url is required when the sink is enabled")
        if self.bearer_token is not None and (self.username or self.password is not None):
            raise ValueError("bearer_token and username/password are both set: use one way to authenticate")
        if self.password is not None and not self.username:
            raise ValueError("username is required with password (basic auth)")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} is not a readable file")

    def push_url(self) -> str:
        """The push endpoint without any user:password@ part (those become basic auth)."""
        assert self.url is not None
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        path = parts.path.rstrip("/")
        if path.endswith(PUSH_PATH):
            path = path[: -len(PUSH_PATH)]
        return parts._replace(netloc=netloc, path=path + PUSH_PATH, query="", fragment="").geturl()

    def base_url(self) -> str:
        """The URL without credentials and without the push path: where /ready lives."""
        return self.push_url()[: -len(PUSH_PATH)]

    def url_credentials(self) -> tuple[str, str] | None:
        """user:password from the URL, if it carries them (used as basic auth unless username is set)."""
        if not self.url:
            return None
        parts = urlsplit(self.url)
        if parts.username is None:
            return None
        from urllib.parse import unquote

        return unquote(parts.username), unquote(parts.password or "")
