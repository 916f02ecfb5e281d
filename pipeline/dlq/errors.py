"""What a DLQ operation refuses, each with its own exit code for the CLI (and HTTP status for the admin API)."""

from __future__ import annotations


class DlqError(Exception):
    """Base of the errors the DLQ operations raise on purpose; `exit_code` is the CLI's."""

    exit_code = 1


class UnknownSink(DlqError):
    exit_code = 3


class BadTime(DlqError, ValueError):
    exit_code = 4


class NothingMatched(DlqError):
    exit_code = 5


class NotConfirmed(DlqError):
    """Declined at the prompt, or no terminal to ask on and no --yes."""

    exit_code = 6


class MissingTopic(DlqError):
    exit_code = 7


class ReplayFailed(DlqError):
    """Some events could not be re-sent (their transaction was aborted; they stay pending). `summary` is
    the replay's pipeline.dlq.replay.ReplaySummary."""

    exit_code = 1

    def __init__(self, message: str, summary: object = None) -> None:
        super().__init__(message)
        self.summary = summary
