"""Structured logs: JSON lines in production, key=value on a terminal. Faust's and aiokafka's stdlib
loggers go through the same formatter, so one worker writes one format, and through the redactor
(pipeline.redact), so no configured secret and no credential-shaped text leaves in a log line.

Fields by convention: `sink`, `topic`, `partition`, `offset`, `event_hash` where they apply. Event
contents never go above DEBUG: a field named like a payload (`PAYLOAD_FIELDS`) in an INFO or higher line
is replaced by its size."""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from pipeline.redact import redact_event

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


PAYLOAD_FIELDS = frozenset({"payload", "body", "value", "event_body", "record", "records"})


def drop_payloads(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace payload-like fields by their size unless the line is DEBUG."""
    if method == "debug" or str(event_dict.get("level", "")).lower() == "debug":
        return event_dict
    for name in PAYLOAD_FIELDS & event_dict.keys():
        value = event_dict[name]
        event_dict[name] = f"<omitted: {len(value)} bytes>" if isinstance(value, bytes | str) else "<omitted>"
    return event_dict


def _renderer(fmt: str) -> Any:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer()


def logging_dict_config(level: str = "INFO", fmt: str = "auto") -> dict[str, Any]:
    """A logging.config.dictConfig dict (Faust's Worker takes one as `logging_config`)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    drop_payloads,
                    redact_event,  # last before rendering: the message, every field, the traceback
                    _renderer(fmt),
                ],
                "foreign_pre_chain": _SHARED,
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "structured",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING" if level == "INFO" else level},
            "mode": {"level": "WARNING" if level == "INFO" else level},
        },
    }


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    import logging.config

    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(logging_dict_config(level, fmt))
    logging.getLogger().setLevel(level)
