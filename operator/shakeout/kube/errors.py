"""One error vocabulary for every request to the API server, typed or raw.

Callers catch what they mean (`NotFound`, `Conflict`, ...) and never look at HTTP status
codes or at the kubernetes client's own exception: a 409 is a `Conflict` whichever path
sent the request.
"""

from __future__ import annotations


class KubeError(Exception):
    """A request to the API server failed; `status` is the HTTP status (0: no answer)."""

    status: int = 0

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(KubeError):  # noqa: N818  (named after the HTTP status, as kopf's are)
    """The object (or its namespace) does not exist (404)."""

    status = 404


class Conflict(KubeError):  # noqa: N818
    """A write lost an optimistic-concurrency race, the object exists already, or a JSON
    Patch's test failed (409; 422 for a failed test)."""

    status = 409


class Invalid(KubeError):  # noqa: N818
    """The API server refused the request as malformed or invalid (400, 422)."""

    status = 422


class Forbidden(KubeError):  # noqa: N818
    """Not authenticated or not authorized (401, 403)."""

    status = 403


class Unavailable(KubeError):  # noqa: N818
    """No usable answer: a timeout, a broken connection, throttling or a server error
    (429, 5xx); worth retrying later."""

    status = 503


def error_for(status: int, message: str, *, json_patch: bool = False) -> KubeError:
    """The error of an HTTP status (for a JSON Patch, a 422 is its failed test)."""
    if status == 404:
        return NotFound(message, status)
    if status == 409 or (json_patch and status == 422):
        return Conflict(message, status)
    if status in (400, 422):
        return Invalid(message, status)
    if status in (401, 403):
        return Forbidden(message, status)
    if status == 429 or status >= 500 or status == 0:
        return Unavailable(message, status)
    return KubeError(message, status)
