"""The one place where domain errors become WebDAV status codes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from wsgidav.dav_error import (
    ERROR_DESCRIPTIONS,
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_LOCKED,
    HTTP_MEDIATYPE_NOT_SUPPORTED,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    HTTP_UNPROCESSABLE_ENTITY,
    DAVError,
    DAVErrorCondition,
)

from davserver import errors


def _condition_repr(condition: DAVErrorCondition) -> str:
    """An error's condition as WsgiDAV writes it into the ``responsedescription`` of a
    PROPPATCH (``DAVError.get_user_info``, with ``repr``): its name and hrefs, where it wrote
    ``<wsgidav.dav_error.DAVErrorCondition object at 0x7fb6b053c850>``."""
    name = str(condition.condition_code).rpartition("}")[2]
    return " ".join([name, *condition.hrefs])


DAVErrorCondition.__repr__ = _condition_repr

Statuses = Sequence[tuple[type[errors.DomainError], int]]
_STATUS: Statuses = [
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
    (errors.StorageFull, HTTP_INSUFFICIENT_STORAGE),
    (errors.UploadIncomplete, HTTP_BAD_REQUEST),
    (errors.ChecksumMismatch, HTTP_BAD_REQUEST),
    (errors.UnsupportedMedia, HTTP_MEDIATYPE_NOT_SUPPORTED),
    (errors.Unprocessable, HTTP_UNPROCESSABLE_ENTITY),
    (errors.Unavailable, HTTP_SERVICE_UNAVAILABLE),
]
# The preconditions of RFC 4331 (6) a 507 names.
QUOTA_NOT_EXCEEDED = "{DAV:}quota-not-exceeded"
_CONDITIONS = [
    (errors.QuotaExceeded, QUOTA_NOT_EXCEEDED),
    (errors.StorageFull, "{DAV:}sufficient-disk-space"),
]
# WsgiDAV knows no reason phrase for these ("507 Status" otherwise).
for _code, _reason in (
    (HTTP_REQUEST_ENTITY_TOO_LARGE, "Content Too Large"),
    (HTTP_UNPROCESSABLE_ENTITY, "Unprocessable Content"),
    (HTTP_SERVICE_UNAVAILABLE, "Service Unavailable"),
    (HTTP_INSUFFICIENT_STORAGE, "Insufficient Storage"),
):
    ERROR_DESCRIPTIONS.setdefault(_code, f"{_code} {_reason}")


# MKCOL on a name that is taken (also when it was taken meanwhile): 405 (RFC 4918, 9.3.1).
MKCOL_STATUS: Statuses = [(errors.AlreadyExists, HTTP_METHOD_NOT_ALLOWED)]


def to_dav_error(exc: errors.DomainError, overrides: Statuses = ()) -> DAVError:
    """The DAVError for a domain error: the first of ``overrides`` (a method's own statuses)
    and then the defaults whose kind it is."""
    for kind, status in [*overrides, *_STATUS]:
        if isinstance(exc, kind):
            headers = (
                [("Retry-After", str(exc.retry_after))]
                if isinstance(exc, errors.Unavailable)
                else None
            )
            # The message says what went wrong; the exception's repr would only repeat it.
            condition = next((c for k, c in _CONDITIONS if isinstance(exc, k)), None)
            return DAVError(
                status, context_info=str(exc), add_headers=headers, err_condition=condition
            )
    return DAVError(500, context_info=str(exc), src_exception=exc)


@contextmanager
def dav_errors(overrides: Statuses = ()) -> Iterator[None]:
    """Run a service call, re-raising its domain errors as DAVError (``to_dav_error``)."""
    try:
        yield
    except errors.DomainError as exc:
        raise to_dav_error(exc, overrides) from exc
