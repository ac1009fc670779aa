"""Reaching an S3-compatible store: where it is (``S3Location``), how long to wait for it
(``Patience``: ``QUICK``, ``TRANSFERS``), a boto3 client made to match, and the store's
errors as the exceptions the blob store interface promises (``s3_errors``; see
``davserver.blobstore.s3``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from davserver.errors import StorageFull, Unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("davserver.blobstore.s3")  # one logger for the store, as before

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_FULL = frozenset({"XMinioStorageFull", "QuotaExceeded", "EntityTooLarge", "507"})
_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError", "503"})
# The store refusing the server itself: nothing a client can change, nor a bug here, but the
# operator's to fix (the credentials, the bucket's policy, the bucket). What the client is
# told, by the store's error code; any other 403 is a refusal of access.
_REFUSED = {
    "NoSuchBucket": "the bucket no longer exists",
    "InvalidAccessKeyId": "the blob store refuses the server's credentials",
    "SignatureDoesNotMatch": "the blob store refuses the server's credentials",
    "ExpiredToken": "the blob store refuses the server's credentials",
    "InvalidToken": "the blob store refuses the server's credentials",
    "RequestTimeTooSkewed": "the blob store refuses the server's clock",
    "AccessDenied": "the blob store denies the server access",
    "AllAccessDisabled": "the blob store denies the server access",
}


@dataclass(frozen=True)
class S3Location:
    """Where the blobs live and how to reach them; empty values take boto3's defaults (its
    credential chain: AWS_* variables, ~/.aws, an instance role)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    addressing_style: str = "auto"
    connections: int = 10

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


@dataclass(frozen=True)
class Patience:
    """How long a client waits for the store: ``connect`` seconds for a connection (urllib3
    also sends a request and its body under this timeout), ``read`` seconds for each read of
    the answer, and ``attempts`` tries in all (boto3's standard retries, with backoff)."""

    connect: float
    read: float
    attempts: int

    def longest(self) -> float:
        """The longest one call waits for a store that takes connections and never answers:
        every attempt's read timeout, and the backoff before each retry (at most 2**n s
        before retry n+1 in boto3's standard mode)."""
        backoff = sum(min(2.0**n, 20.0) for n in range(self.attempts - 1))
        return self.attempts * self.read + backoff


# Requests answered with headers alone (HeadBucket, HeadObject, DeleteObject): a store that
# takes seconds over one is not working. The health check and the question whether the bucket
# has an object, asked on the request path, give up after about 7 s.
QUICK = Patience(connect=3, read=3, attempts=2)
# Transfers (PutObject, parts, GetObject, copies) and listings: a store may take a while to
# answer a 64 MiB part or a page of a large listing, so each read waits longer; a call gives
# up after about a minute (3 x 20 s and 3 s of backoff), a download's body after 20 s quiet.
TRANSFERS = Patience(connect=5, read=20, attempts=3)


def make_client(location: S3Location, patience: Patience = TRANSFERS) -> S3Client:
    """A boto3 S3 client for ``location`` that waits for the store as ``patience`` says,
    and sends checksums only where the protocol requires them (newer boto3 adds CRC32
    trailers that some S3-compatible stores refuse; Content-MD5 guards the bytes here)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise OSError("storage.backend s3 needs boto3: pip install 'davserver[s3]'") from None
    config = Config(
        retries={"total_max_attempts": patience.attempts, "mode": "standard"},
        max_pool_connections=location.connections,
        s3={"addressing_style": location.addressing_style},  # type: ignore[arg-type]
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=patience.connect,
        read_timeout=patience.read,
    )
    return boto3.client(
        "s3",
        endpoint_url=location.endpoint_url or None,
        region_name=location.region or None,
        aws_access_key_id=location.access_key_id or None,
        aws_secret_access_key=location.secret_access_key or None,
        config=config,
    )


@contextlib.contextmanager
def s3_errors(operation: str, bucket: str, key: str = "") -> Iterator[None]:
    """The store's answers as the exceptions the blob store interface promises; the
    operator's log names the bucket and the key, the client's message neither."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        where = f"s3://{bucket}/{key}"
        message = f"S3 {operation} {where}: {code or status} {error.get('Message', '')}".strip()
        if code in _NOT_FOUND or (status == "404" and code != "NoSuchBucket"):
            raise FileNotFoundError(message) from None
        if code in _FULL or status == "507":
            raise StorageFull("the server's storage is full") from exc
        if code in _BUSY or status.startswith("5"):
            raise _not_answering(operation, code or status, message) from exc
        if code in _REFUSED or status == "403":
            raise _refused(operation, code or status, message) from exc
        raise OSError(message) from exc
    except BotoCoreError as exc:  # no connection, a timeout, an unreadable answer
        raise _not_answering(operation, type(exc).__name__, f"S3 {operation}: {exc}") from exc


def _not_answering(operation: str, kind: str, detail: str) -> Unavailable:
    """The Unavailable for a store that did not answer: ``detail`` (where, which key) is
    logged for the operator; the message, which the client sees, keeps to the kind."""
    log.warning("the blob store is not answering: %s", detail)
    return Unavailable(f"the blob store is not answering (S3 {operation}: {kind})")


def _refused(operation: str, code: str, detail: str) -> Unavailable:
    """The Unavailable for a store that refuses the server (``_REFUSED``), logged as
    ``_not_answering`` logs; the client is told why in one line."""
    reason = _REFUSED.get(code, _REFUSED["AccessDenied"])
    log.warning("%s: %s", reason, detail)
    return Unavailable(f"{reason} (S3 {operation}: {code})")
