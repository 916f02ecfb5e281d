"""Settings of the generic HTTP webhook sink (env prefix of the built-in instance: HTTP_).

Every field is also an env variable `<SINK>_<FIELD>` (HTTP_URL, HTTP_HMAC_SECRET, HTTP_SUCCESS_CODES, ...).
Lists and mappings accept a compact string from the environment:

    HTTP_SUCCESS_CODES=200,201,204      or  HTTP_SUCCESS_CODES=2xx
    HTTP_HEADERS=X-Tenant=acme,X-Env=prod   (or a JSON object: HTTP_HEADERS='{"X-Tenant": "a,b"}')

HTTP/2: with `http2` on (the default) the client offers h2 through ALPN on `https://` URLs and uses it when
the server picks it; a plain `http://` URL always speaks HTTP/1.1 (no h2c upgrade, no prior knowledge).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.sinks.settings import SinkSettings

_STATUS_ENTRY = re.compile(r"^(?:[1-5][0-9]{2}|[1-5]xx)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
# Headers whose value the sink computes for every request; a static header must not replace them.
_MANAGED_HEADERS = {"content-type", "content-length", "content-encoding", "host", "transfer-encoding"}


class HttpSinkSettings(SinkSettings):
    type: str = "http"
    url: str | None = Field(None, description="URL the JSON batches are POSTed to (http:// or https://)")
    hmac_secret: SecretStr | None = Field(
        None, description="key of the HMAC-SHA256 request signature; unset = requests are not signed"
    )
    hmac_secret_file: Path | None = Field(
        None, description="file holding the HMAC key (read at open, trailing newline dropped); not with hmac_secret"
    )
    signature_header: str = Field(
        "X-Pipeline-Signature", description='header carrying "sha256=<hex HMAC-SHA256 of the body bytes sent>"'
    )
    idempotency_header: str = Field(
        "Idempotency-Key",
        description="header carrying the request key: sha256 hex of the body's event hashes in order "
        "(names the request, not its events: dedupe events by event_hash)",
    )
    gzip: bool = Field(False, description="gzip the body (Content-Encoding: gzip); the signature covers the gzip")
    success_codes: list[str] = Field(
        default_factory=lambda: ["2xx"],
        description='statuses that mean delivered: codes ("200") or classes ("2xx"); env: "200,201,204" or "2xx"',
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='extra static request headers (values are masked: they often hold API keys); env: "k=v,k2=v2"',
    )
    bearer_token: SecretStr | None = Field(None, description="sent as Authorization: Bearer <token>")
    http2: bool = Field(True, description="offer HTTP/2 via ALPN on https:// (plain http:// stays HTTP/1.1)")
    tls_verify: bool = Field(True, description="verify the server certificate on https://")
    ca_file: Path | None = Field(None, description="PEM bundle of CAs to trust instead of the system store")
    max_connections: int = Field(10, ge=1, le=1000, description="connection pool size of this sink per worker")

    @field_validator("success_codes", mode="before")
    @classmethod
    def _parse_success_codes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list | tuple):
            entries = []
            for item in value:
                if isinstance(item, bool) or not isinstance(item, str | int):
                    raise ValueError(f"success_codes: entry {item!r} must be a status code or class")
                entry = str(item).strip().lower()
                if not entry:
                    continue
                if not _STATUS_ENTRY.match(entry):
                    raise ValueError(
                        f'success_codes: bad entry {entry!r}: use an HTTP status code (e.g. 202) or a class ("2xx")'
                    )
                entries.append(entry)
            if not entries:
                raise ValueError("success_codes: give at least one status code or class")
            return entries
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _parse_headers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("headers: not a valid JSON object") from None
            parsed: dict[str, str] = {}
            for part in text.split(","):
                if not part.strip():
                    continue
                name, sep, header_value = part.partition("=")
                if not sep:
                    # Never echo the part: it may be a credential.
                    raise ValueError('headers: expected "name=value" pairs separated by commas')
                parsed[name.strip()] = header_value.strip()
            return parsed
        if isinstance(value, dict):  # from YAML: numbers become strings (X-Version: 2)
            return {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for k, v in value.items()
            }
        return value

    @field_validator("signature_header", "idempotency_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HttpSinkSettings:
        if self.hmac_secret is not None and self.hmac_secret_file is not None:
            raise ValueError("give hmac_secret or hmac_secret_file, not both")
        if self.hmac_secret is not None and not self.hmac_secret.get_secret_value():
            raise ValueError("hmac_secret must not be empty (leave it unset to send unsigned requests)")
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("ca_file is set but tls_verify is false: drop one of them")
        if self.signature_header.lower() == self.idempotency_header.lower():
            raise ValueError("signature_header and idempotency_header must differ")
        managed = _MANAGED_HEADERS | {self.signature_header.lower(), self.idempotency_header.lower()}
        if self.bearer_token is not None:
            managed.add("authorization")
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers: {name!r} is not a valid HTTP header name")
            if name.lower() in managed:
                raise ValueError(f"headers: {name!r} is set by the sink itself and cannot be overridden")
        return self

    def is_success(self, code: int) -> bool:
        """Whether a response status means the batch was delivered (exact code or its "Nxx" class listed)."""
        exact = str(code)
        klass = f"{exact[0]}xx" if len(exact) == 3 else None
        return any(entry in (exact, klass) for entry in self.success_codes)

    def signing_key(self) -> bytes | None:
        """The HMAC key from hmac_secret or hmac_secret_file (read now), or None when requests are unsigned.
        Raises ValueError naming the setting when the file cannot be read or is empty."""
        if self.hmac_secret is not None:
            return self.hmac_secret.get_secret_value().encode()
        if self.hmac_secret_file is None:
            return None
        try:
            key = self.hmac_secret_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(f"hmac_secret_file {self.hmac_secret_file} cannot be read: {exc.strerror}") from None
        if not key:
            raise ValueError(f"hmac_secret_file {self.hmac_secret_file} is empty")
        return key

    def require_runnable(self) -> None:
        if not self.url:
            raise ValueError("url is required when the sink is enabled")
        if not self.url.lower().startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        self.signing_key()
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
