"""One redactor for every output: logs, exception text, sink error messages, DLQ headers, `config show`.

A `Redactor` masks two kinds of things:

* every configured secret, exactly, of any length: each `SecretStr` of the settings (passwords, tokens,
  HMAC keys, static HTTP header values, DSNs), what the `*_file` settings hold, the password, query
  secrets and token-like path segments of every configured URL and DSN, and the forms they travel in:
  URL-encoded, JSON- and repr-escaped, and `base64(user:password)` as in `Authorization: Basic`;
* credentials recognisable by shape, configured or not: `Authorization:` header values, `Bearer <token>`,
  `Basic <base64 of user:password>`, `user:password@` in URLs, `password=`/`token=`/`api_key=`/... values,
  and token-like path segments of URLs.

False positives, the trade-off: a secret of 8 characters or more is masked wherever it appears, even
inside a longer word; a shorter one (a 3-character password is still a password) only where it stands
alone, not inside a longer run of letters and digits, so that a secret "42" leaves "1420" alone. A short
non-secret value placed in a secret setting (HTTP_HEADERS X-Version=2) is masked where it stands alone;
`config show` leaves numbers and booleans as they are.

The worker and every CLI command install the redactor built from their settings once (`install`);
`redact` applies it. A sink also builds one from its own settings, so it works when embedded without it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

MASK = "********"
#: Secrets shorter than this are masked only where they stand alone (see the module docstring).
SHORT_SECRET = 8
_MAX_SECRET_FILE = 65_536

# Setting names whose string values are secrets even when not typed SecretStr (third-party sinks).
_SECRET_NAMES = ("password", "secret", "token", "api_key", "apikey", "credential")
_USER_NAMES = ("username", "user", "sasl_username")
_QUERY_SECRETS = (
    "password|passwd|pwd|sslpassword|secret|client_secret|token|access_token|refresh_token|id_token|"
    "api[_-]?key|apikey|auth|sig|signature|x-amz-signature|x-goog-signature"
)
_PATH_KEYWORDS = frozenset({"token", "tokens", "key", "keys", "secret", "secrets", "apikey", "api_key", "auth"})

# `Authorization: <anything>` (also JSON "authorization": "...", Python 'authorization': '...').
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token)([\"']?\s*[:=]\s*[\"']?)([^\"'\r\n,;}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)([A-Za-z0-9._~+/-]{8,}=*)")
_BASIC = re.compile(r"(?i)\b(basic)(\s+)([A-Za-z0-9+/]{4,}=*)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@\"'<>]*):([^@\s/\"'<>]*)@")
_PARAM = re.compile(rf"(?i)(?<![A-Za-z0-9_])((?:{_QUERY_SECRETS})=)([^\s&#\"'<>,;]+)")
_QUERY_KEY = re.compile(r"(?i)([?&;]key=)([^\s&#\"'<>,;]+)")
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+")
_TOKEN_SEGMENT = re.compile(r"^[A-Za-z0-9_\-.~+=:]+$")


class Redactor:
    """Masks the given secrets (exactly, with their encoded forms) and credentials recognised by shape."""

    def __init__(self, secrets: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.secrets: frozenset[str] = frozenset(s for s in secrets if s)
        self.pairs: frozenset[tuple[str, str]] = frozenset((u, p) for u, p in pairs if u or p)
        forms = {form for secret in self.secrets for form in _forms(secret)}
        forms.update(form for user, password in self.pairs for form in _basic_forms(user, password))
        self._pattern = _exact_pattern(forms)

    @classmethod
    def from_models(cls, *models: Any, secrets: Iterable[str] = ()) -> Redactor:
        """Every secret in these settings models (walked recursively: a Settings, a sink's settings)."""
        found: set[str] = set(secrets)
        pairs: set[tuple[str, str]] = set()
        for model in models:
            _collect(model, found, pairs)
        return cls(found, pairs)

    def union(self, other: Redactor) -> Redactor:
        return Redactor(self.secrets | other.secrets, self.pairs | other.pairs)

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return redact_shapes(text)


def redact_shapes(text: str) -> str:
    """Mask what looks like a credential whoever configured it: auth headers, URL passwords, secret
    parameters, token-like URL path segments."""
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + MASK if _token_like(m.group(3)) else m.group(0), text)
    text = _BASIC.sub(lambda m: m.group(1) + m.group(2) + MASK if _is_basic(m.group(3)) else m.group(0), text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    text = _PARAM.sub(lambda m: m.group(1) + MASK, text)
    text = _QUERY_KEY.sub(lambda m: m.group(1) + MASK, text)
    return _URL.sub(lambda m: _mask_path(m.group(0)), text)


def mask_url(url: str) -> str:
    """A URL or DSN for display: the password, secret query parameters and token-like path segments
    masked (postgresql://user:********@host/db?password=********). Anything unparsable is masked whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or not (parts.netloc or parts.query):
        return MASK
    if parts.password is not None:  # the last @ ends the userinfo: a password may hold an unencoded @
        host = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))
    return redact_shapes(url)


# --------------------------------------------------------------------------------------------------
# The process-wide redactor


def install(redactor: Redactor) -> None:
    """Make `redactor` the one `redact` applies (once per process, from the settings)."""
    global _installed
    _installed = redactor


def current() -> Redactor:
    return _installed


def remember(*secrets: str) -> None:
    """Add secrets learned at run time (a password file read at open) to the installed redactor."""
    new = {s for s in secrets if s} - _installed.secrets
    if new:
        install(_installed.union(Redactor(new)))


def redact(text: str) -> str:
    return _installed(text)


def redact_value(value: Any) -> Any:
    """`value` with every string in it redacted (dicts, lists and tuples walked); other objects become
    their redacted text, so that a renderer's repr cannot bring a secret back."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return redact(str(value) if isinstance(value, BaseException) else repr(value))


# Fields structlog itself adds: they never hold a secret, and a short secret must not garble them.
_LOG_META = frozenset({"timestamp", "level", "logger"})


def redact_event(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every value of the event (message, exception text, fields) redacted."""
    for key, value in event_dict.items():
        if key not in _LOG_META:
            event_dict[key] = redact_value(value)
    return event_dict


# --------------------------------------------------------------------------------------------------
# Finding secrets in settings


def _collect(model: Any, found: set[str], pairs: set[tuple[str, str]]) -> None:
    if isinstance(model, Mapping):
        for value in model.values():
            _collect(value, found, pairs)
        return
    if not isinstance(model, BaseModel):
        return
    users: list[str] = []
    passwords: list[str] = []
    for name, value in _fields(model):
        if isinstance(value, BaseModel | Mapping) and not _is_secret_map(value):
            _collect(value, found, pairs)
            continue
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.add(secret)
            if name.endswith("password"):
                passwords.append(secret)
            if "://" in secret:
                _collect_url(secret, found, pairs)
        elif _is_secret_map(value):
            found.update(v.get_secret_value() for v in value.values() if isinstance(v, SecretStr))
        elif isinstance(value, str):
            if name.endswith(("url", "dsn")):
                _collect_url(value, found, pairs)
            elif name in _USER_NAMES:
                users.append(value)
            elif any(word in name for word in _SECRET_NAMES):
                found.add(value)
                passwords.append(value)
        elif isinstance(value, Path) and name.endswith("_file") and any(w in name for w in _SECRET_NAMES):
            content = _read_secret_file(value)
            if content:
                found.add(content)
                passwords.append(content)
    pairs.update((user, password) for user in users for password in passwords)


def _fields(model: BaseModel) -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        yield name, getattr(model, name)


def _is_secret_map(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, SecretStr) for v in value.values())


def _collect_url(url: str, found: set[str], pairs: set[tuple[str, str]]) -> None:
    try:
        parts = urlsplit(url.strip())
        user, password = parts.username, parts.password
    except ValueError:
        return
    query = dict(parse_qsl(parts.query))
    if password:
        found.update({password, unquote(password)})
    query_password = next((v for k, v in query.items() if re.fullmatch(_QUERY_SECRETS, k, re.I)), None)
    for key, value in query.items():
        if re.fullmatch(_QUERY_SECRETS, key, re.I) or key.lower() == "key":
            found.add(value)
    user = unquote(user) if user else query.get("user")
    for secret in (unquote(password) if password else None, query_password):
        if user and secret:
            pairs.add((user, secret))
    segments = [s for s in parts.path.split("/") if s]
    found.update(s for i, s in enumerate(segments) if _secret_segment(s, segments[i - 1] if i else ""))


def _read_secret_file(path: Path) -> str | None:
    try:
        if path.stat().st_size > _MAX_SECRET_FILE:
            return None
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------------------------------
# Matching


def _forms(secret: str) -> set[str]:
    """The secret as configured and as it shows up once URL-encoded or escaped in JSON or a repr."""
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
    }


def _basic_forms(user: str, password: str) -> set[str]:
    forms: set[str] = set()
    for encoding in ("utf-8", "latin-1"):
        try:
            raw = f"{user}:{password}".encode(encoding)
        except UnicodeEncodeError:
            continue
        encoded = base64.b64encode(raw).decode()
        forms.update({encoded, encoded.rstrip("=")})
    return forms


def _exact_pattern(forms: set[str]) -> re.Pattern[str] | None:
    if not forms:
        return None
    alternatives = []
    for form in sorted(forms, key=len, reverse=True):
        escaped = re.escape(form)
        alternatives.append(escaped if len(form) >= SHORT_SECRET else rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])")
    return re.compile("|".join(alternatives))


def _token_like(token: str) -> bool:
    """A bearer token has a digit or punctuation; "Bearer authentication" is prose."""
    return any(not c.isalpha() for c in token)


def _is_basic(token: str) -> bool:
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _secret_segment(segment: str, previous: str) -> bool:
    """A URL path segment that is a credential: after /token/, /key/, ..., or long, mixed and token-shaped
    (Slack and Discord webhook keys, Telegram bot tokens)."""
    if previous.lower() in _PATH_KEYWORDS and segment:
        return True
    if len(segment) < 16 or not _TOKEN_SEGMENT.match(segment):
        return False
    return (any(c.isdigit() for c in segment) and any(c.isalpha() for c in segment)) or len(segment) >= 24


def _mask_path(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    segments = parts.path.split("/")
    masked = [
        MASK if segment and MASK not in segment and _secret_segment(segment, segments[i - 1] if i else "") else segment
        for i, segment in enumerate(segments)
    ]
    if masked == segments:
        return url
    return urlunsplit(parts._replace(path="/".join(masked)))


_installed = Redactor()  # until `install`: the shapes only
