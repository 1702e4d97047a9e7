"""Domain errors that know their HTTP status; one exception handler in ``app`` maps them."""

from __future__ import annotations

from typing import Any

# The body of every error response (ServingError, validation, shed, 413), for the OpenAPI
# ``responses=`` of the routes: clients and the schemathesis conformance check see what is sent.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                   "errors": {"type": "array", "items": {
                       "type": "object", "properties": {"field": {"type": "string"},
                                                        "msg": {"type": "string"}}}}},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, with ``ERROR_SCHEMA`` bodies."""
    why = {413: "the body is larger than events.max_body_bytes",
           422: "a parameter or the body is invalid (the field is named)",
           503: "not ready, overloaded, or a dependency is down; retry after Retry-After"}
    return {code: {"description": why.get(code, "error"),
                   "content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in codes}


class ServingError(Exception):
    """Base of the errors a client may see: a status, a short code and a readable detail."""

    status_code = 500
    code = "internal_error"
    retry_after_s: int | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status_code}, detail={self.detail!r})"


class InvalidRequest(ServingError):
    """The request is well-formed HTTP but its parameters are out of bounds."""

    status_code = 422
    code = "invalid_request"


class NotReady(ServingError):
    """Models or features are not loaded yet; the balancer should try another replica."""

    status_code = 503
    code = "not_ready"
    retry_after_s = 1


class StreamUnavailable(ServingError):
    """The event stream (Redis) did not store the events; nothing was accepted."""

    status_code = 503
    code = "stream_unavailable"
    retry_after_s = 1


class StreamBacklogFull(ServingError):
    """The event stream holds ``events.max_stream_entries`` entries (the sink is behind or
    down): new events are refused, nothing was stored, before Redis runs out of memory."""

    status_code = 503
    code = "backlog_full"
    retry_after_s = 5


class StageUnavailable(Exception):
    """A remote stage (candidate or ranking service) failed or timed out; the caller degrades."""


class FeatureUnavailable(Exception):
    """The online store did not answer; the recommender degrades instead of failing."""


class ArtifactError(ValueError):
    """A model artifact is missing, corrupt or inconsistent; it must never be served."""
