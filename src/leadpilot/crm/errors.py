"""Domain errors raised by service functions; the API maps each to one HTTP status."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a service function raises on purpose."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    """The thing does not exist, or the actor may not see it (never reveal which)."""

    status_code = 404


class Forbidden(DomainError):
    """The actor may see the thing but not do this to it."""

    status_code = 403


class Conflict(DomainError):
    """The request is valid but clashes with the current state (illegal stage move, lost claim race)."""

    status_code = 409


class Invalid(DomainError):
    """A value is unacceptable; ``field`` names it."""

    status_code = 422
