"""The one place where domain errors become WebDAV status codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from wsgidav.dav_error import (
    ERROR_DESCRIPTIONS,
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_LOCKED,
    HTTP_MEDIATYPE_NOT_SUPPORTED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    HTTP_UNPROCESSABLE_ENTITY,
    DAVError,
)

from davserver import errors

_STATUS: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidName, HTTP_BAD_REQUEST),
    (errors.BadRequest, HTTP_BAD_REQUEST),
    (errors.Unauthorized, 401),
    (errors.Forbidden, HTTP_FORBIDDEN),
    (errors.NotFound, HTTP_NOT_FOUND),
    (errors.AlreadyExists, HTTP_PRECONDITION_FAILED),
    (errors.Conflict, HTTP_CONFLICT),
    (errors.PreconditionFailed, HTTP_PRECONDITION_FAILED),
    (errors.Locked, HTTP_LOCKED),
    (errors.QuotaExceeded, HTTP_INSUFFICIENT_STORAGE),
    (errors.UploadIncomplete, HTTP_BAD_REQUEST),
    (errors.ChecksumMismatch, HTTP_BAD_REQUEST),
    (errors.UnsupportedMedia, HTTP_MEDIATYPE_NOT_SUPPORTED),
    (errors.Unprocessable, HTTP_UNPROCESSABLE_ENTITY),
    (errors.Unavailable, HTTP_SERVICE_UNAVAILABLE),
]
# WsgiDAV knows no reason phrase for these ("507 Status" otherwise).
for _code, _reason in (
    (HTTP_REQUEST_ENTITY_TOO_LARGE, "Content Too Large"),
    (HTTP_UNPROCESSABLE_ENTITY, "Unprocessable Content"),
    (HTTP_SERVICE_UNAVAILABLE, "Service Unavailable"),
    (HTTP_INSUFFICIENT_STORAGE, "Insufficient Storage"),
):
    ERROR_DESCRIPTIONS.setdefault(_code, f"{_code} {_reason}")


def to_dav_error(exc: errors.DomainError) -> DAVError:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            headers = (
                [("Retry-After", str(exc.retry_after))]
                if isinstance(exc, errors.Unavailable)
                else None
            )
            # The message says what went wrong; the exception's repr would only repeat it.
            return DAVError(status, context_info=str(exc), add_headers=headers)
    return DAVError(500, context_info=str(exc), src_exception=exc)


@contextmanager
def dav_errors() -> Iterator[None]:
    """Run a service call, re-raising its domain errors as DAVError."""
    try:
        yield
    except errors.DomainError as exc:
        raise to_dav_error(exc) from exc
