"""Every error of the API as ``{"error": ..., "details": [...]}`` with the right status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from engine.access.users import AuthError, PermissionDenied, UserExists, UserNotFound
from engine.errors import ConnectionNotFound, FlowFormatError, FlowmillError, FlowValidationError
from engine.flows.flowstore import FlowConflict, FlowNotFound
from engine.flows.params import ParamError
from engine.queue.calendars import ScheduleError
from engine.queue.jobs import JobError, JobNotFound
from engine.queue.schedules import ScheduleNotFound

__all__ = ["BadRequest", "Refused", "Conflict", "install"]

log = logging.getLogger(__name__)


class Refused(FlowmillError):
    """A request the caller may not make (CSRF, origin): 403."""


class Conflict(FlowmillError):
    """The request does not fit the current state (e.g. a stale flow hash): 409."""

    def __init__(self, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class BadRequest(FlowmillError):
    """The request itself is wrong (not JSON, a field of the wrong type): 400, with one
    ``{field, message}`` detail per problem."""

    def __init__(self, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


STATUS: list[tuple[type[Exception], int]] = [
    (AuthError, 401),
    (PermissionDenied, 403),
    (Refused, 403),
    (JobNotFound, 404),
    (FlowNotFound, 404),
    (UserNotFound, 404),
    (ScheduleNotFound, 404),
    (ConnectionNotFound, 404),
    (FlowValidationError, 422),
    (Conflict, 409),
    (FlowConflict, 409),
    (UserExists, 409),
    (JobError, 409),
    (ParamError, 400),
    (FlowFormatError, 400),
    (FlowmillError, 400),
]


def _body(message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": message, "details": details or []}


def install(app: Flask) -> None:
    @app.errorhandler(FlowmillError)
    def flowmill_error(exc: FlowmillError) -> Any:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        details: list[Any] = []
        if isinstance(exc, FlowValidationError):
            details = [issue.to_dict() for issue in exc.issues]
        elif isinstance(exc, Conflict | BadRequest):
            details = exc.details
        elif isinstance(exc, ScheduleError):
            details = [{"field": exc.field, "message": exc.message}]
        elif isinstance(exc, ParamError):
            details = [{"field": f"params.{exc.name}", "message": exc.message}]

        elif isinstance(exc, FlowConflict):
            details = [{"current_hash": exc.current_hash, "base_hash": exc.base_hash}]
        return jsonify(_body(str(exc), details)), status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        return jsonify(_body(exc.description or exc.name)), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unexpected error in the web app")
        return jsonify(_body("internal error (see the server log)")), 500
