"""Errors that carry an HTTP status and a message a CI user can act on."""

from __future__ import annotations


class ApiError(Exception):
    """A request the API refuses; `message` names the field and the fix."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class SourceError(Exception):
    """The executor could not prepare a job's code; the job ends `error` with this text."""
