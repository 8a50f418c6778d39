"""Errors the pipeline raises, each saying whether another attempt could succeed.

Messages must never carry report content: they end up in job documents, logs and webhooks.
"""

from __future__ import annotations


class JobError(Exception):
    """Base of pipeline failures; `retryable` decides between backoff and failing at once."""

    retryable = False
    kind = "job_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds, when the remote side said so


class RetryableError(JobError):
    """A passing fault: timeout, lost connection, 429 or 5xx."""

    retryable = True
    kind = "temporary_error"


class PermanentError(JobError):
    """Another attempt would fail the same way: a bad request, an unreadable file, invalid output."""

    kind = "permanent_error"


class StorageUnavailable(RetryableError):
    kind = "storage_unavailable"


class FileMissing(PermanentError):
    kind = "file_missing"


class ParserUnavailable(RetryableError):
    kind = "parser_unavailable"


class ParserRejected(PermanentError):
    kind = "parser_rejected"


class UnreadableFile(PermanentError):
    kind = "unreadable_file"


class InvalidModelOutput(PermanentError):
    kind = "invalid_model_output"


class LeaseLost(Exception):
    """Another worker owns the job now; this one must drop it without writing."""


class ApiError(Exception):
    """A request the API turns down, answered as JSON `{"success": false, "error": {code, message}}`."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
