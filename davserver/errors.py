"""Domain exceptions, raised by services and translated once per front (WebDAV, API, CLI).

DomainError
 +-- BadRequest           malformed input (an invalid name, a bad header value)
 |    +-- InvalidName     a name that cannot be stored (empty, "..", "/", NUL, too long)
 +-- Unauthorized         no valid credentials
 +-- TooManyRequests      login refused for a while after repeated failures (retry_after)
 +-- Forbidden            authenticated, but not allowed
 +-- NotFound             missing, or hidden from this user
 +-- Conflict             the tree does not allow it (missing parent, file as folder)
 |    +-- AlreadyExists   the name is taken
 +-- PreconditionFailed   If-Match, Overwrite: F and similar
 +-- Locked               a WebDAV lock stands in the way
 +-- QuotaExceeded        the user's quota would be exceeded
 +-- StorageFull          the server's disk has no room left for the bytes
 +-- UploadIncomplete     the body ended before its announced length
 +-- ChecksumMismatch     the body does not match the checksum the client sent
 +-- UnsupportedMedia     content of a kind the operation does not handle (not an image)
 +-- Unprocessable        content that cannot be processed (a truncated or oversized image)
 +-- Unavailable          cannot be done right now (every image worker busy); retry later
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a service raises on purpose."""


class BadRequest(DomainError):
    pass


class InvalidName(BadRequest):
    pass


class Unauthorized(DomainError):
    pass


class TooManyRequests(DomainError):
    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(DomainError):
    pass


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class AlreadyExists(Conflict):
    pass


class PreconditionFailed(DomainError):
    pass


class Locked(DomainError):
    pass


class QuotaExceeded(DomainError):
    pass


class StorageFull(DomainError):
    pass


class UploadIncomplete(DomainError):
    pass


class ChecksumMismatch(DomainError):
    pass


class UnsupportedMedia(DomainError):
    pass


class Unprocessable(DomainError):
    pass


class Unavailable(DomainError):
    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
