"""The one place where domain errors become JSON API responses."""

from __future__ import annotations

from davserver import errors

_STATUS: list[tuple[type[errors.DomainError], int, str]] = [
    (errors.BadRequest, 400, "bad_request"),
    (errors.Unauthorized, 401, "unauthorized"),
    (errors.TooManyRequests, 429, "too_many_requests"),
    (errors.Forbidden, 403, "forbidden"),
    (errors.NotFound, 404, "not_found"),
    (errors.Conflict, 409, "conflict"),
    (errors.PreconditionFailed, 412, "precondition_failed"),
    (errors.Locked, 423, "locked"),
    (errors.QuotaExceeded, 507, "insufficient_storage"),
    (errors.StorageFull, 507, "insufficient_storage"),
    (errors.Unavailable, 503, "unavailable"),
    # A body cut off before its end (a chunked one before its last chunk), as over WebDAV.
    (errors.UploadIncomplete, 400, "bad_request"),
    (errors.ChecksumMismatch, 400, "bad_request"),
    (errors.UnsupportedMedia, 415, "unsupported_media_type"),
    (errors.Unprocessable, 422, "unprocessable"),
]


def status_of(exc: errors.DomainError) -> tuple[int, str]:
    """(HTTP status, error code) for a domain error."""
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"
