"""Blobs in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW), keyed by hash.

Keys are the file-system store's (``<prefix>ab/abcd…``), so one ``is_storage_key`` rule serves
gc for both. An upload waits in a local temp folder while it is hashed, since its SHA-256 names
the object; ``finish`` keeps it there as the write's spare (see ``davserver.blobstore.base``)
and sends nothing. ``ensure_stored`` sends it: in one PUT with its Content-MD5 (the store
checks the bytes it got), or as a multipart upload when it is large. Bytes already stored are
not sent again, except small ones, which are sent without asking first. As a
``RemoteBlobStore``, its ``ensure_stored`` runs before the transaction that references a blob,
once the blob's row exists (``davserver.services.blob_refs``): that one call is the upload,
and the proof that the bytes are in place. The temp file goes at ``release``.

An object store has no rename: gc sets a blob aside by copying it to ``<prefix>aside/<token>``
on the server and deleting the key; restore copies it back. Set-aside objects are listed with
the temp files, so gc's sweep of old temp files also removes those a crashed gc left.
A large upload cut off half-way (the store out of reach, so that the abort fails too, or the
server killed) leaves an unfinished multipart upload, whose parts the store keeps; gc aborts
those older than its grace period (``iter_partial_uploads``, ``abort_upload``).

Errors (``davserver.blobstore.s3_client.s3_errors``): a missing object is FileNotFoundError;
an unreachable store, one that does not answer in time (``QUICK``, ``TRANSFERS``), or one
answering 5xx or "slow down" after boto3's retries, is Unavailable (503 with Retry-After),
logged at WARNING with boto3's account of it; so is a store refusing the server (its
credentials, its access, a bucket gone), which the operator must fix; a full one is
StorageFull (507); any other error is an OSError naming the operation and the store's error
code. The 503's message goes to
the client, so it names the operation and the kind of failure only: boto3's text holds the
store's internal URL, the object's key and an upload's id.

boto3 is imported only when this store is configured (the ``s3`` extra). A client is made per
process: ``davserver serve`` forks its workers after building the store, and a connection pool
must not be shared across a fork.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from davserver.blobstore.base import (
    OWNER_KEY,
    QUARANTINE,
    BlobFile,
    PartialUpload,
    SeekableReader,
    StoredBlob,
)
from davserver.blobstore.filesystem import storage_key_for
from davserver.blobstore.s3_client import (
    QUICK,
    TRANSFERS,
    Patience,
    S3Location,
    make_client,
    s3_errors,
)
from davserver.blobstore.staging import (
    StagedUpload,
    StagedWriter,
    free_space,
    must_place,
    storage_write_errors,
    temp_files,
    temp_path,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ASIDE = "aside/"
_ASIDE_TOKEN = "gc-"
# Larger uploads go up in parts of this size, several at once; smaller ones in one PUT.
MULTIPART_BYTES = 64 * 1024 * 1024
_PART_UPLOADS = 4
# Up to this size an upload is sent without asking first whether the bucket has it: the PUT
# costs about what the question would (one round trip), and most small uploads are new bytes.
# A repeat PUT of the same key writes the same bytes (a versioned bucket keeps both).
_SEND_WITHOUT_ASKING = 64 * 1024
_CHECKS_AT_ONCE = 16  # HeadObject requests in flight for one ``sizes_of`` call
# How much a reader asks for at a time when it has to start a ranged GET.
_READ_BUFFER = 1024 * 1024


class S3BlobStore:
    remote = True  # a RemoteBlobStore: every call is a round trip, kept out of transactions

    def __init__(self, location: S3Location, staging: str | os.PathLike[str]) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.tmp_dir = Path(staging)  # made by the first write
        self._client_lock = threading.Lock()
        self._client_pid = -1
        self._clients: dict[Patience, S3Client] = {}

    @property
    def client(self) -> S3Client:
        """This process's client for transfers and listings (``TRANSFERS``)."""
        return self._client_with(TRANSFERS)

    @property
    def quick_client(self) -> S3Client:
        """This process's client for requests answered with headers alone (``QUICK``)."""
        return self._client_with(QUICK)

    def _client_with(self, patience: Patience) -> S3Client:
        """This process's client of that patience: made on first use, and again in a forked
        child (a connection pool must not be shared across a fork)."""
        client = self._clients.get(patience) if self._client_pid == os.getpid() else None
        if client is None:
            with self._client_lock:
                if self._client_pid != os.getpid():
                    self._clients = {}
                    self._client_pid = os.getpid()
                client = self._clients.get(patience)
                if client is None:
                    client = self._clients[patience] = make_client(self.location, patience)
        return client

    def check(self) -> None:
        """Raise (OSError or Unavailable) unless the bucket answers to these credentials:
        within seconds (``QUICK``), as a load balancer's health check needs."""
        with s3_errors("HeadBucket", self.bucket):
            self.quick_client.head_bucket(Bucket=self.bucket)

    def _key(self, storage_key: str) -> str:
        if ".." in storage_key.split("/") or storage_key.startswith("/"):
            raise ValueError(f"bad storage key {storage_key!r}")
        return self.prefix + storage_key

    # -- the BlobStore interface

    @storage_write_errors
    def writer(self) -> _S3BlobWriter:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return _S3BlobWriter(self)

    def free_bytes(self) -> int:
        """The staging folder's disk: every upload is written there whole before it goes up."""
        return free_space(self.tmp_dir)

    def open(self, storage_key: str) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, self._key(storage_key)), _READ_BUFFER)

    def exists(self, storage_key: str) -> bool:
        return self.size_of(storage_key) is not None

    def size_of(self, storage_key: str) -> int | None:
        return self._size(self._key(storage_key))

    def sizes_of(self, storage_keys: Iterable[str]) -> list[int | None]:
        """One HeadObject per key, ``_CHECKS_AT_ONCE`` at a time: a round trip each, so a
        zip of a thousand files waits for a few dozen of them, not a thousand."""
        keys = list(storage_keys)
        with ThreadPoolExecutor(min(_CHECKS_AT_ONCE, max(len(keys), 1))) as pool:
            return list(pool.map(self.size_of, keys))

    def delete(self, storage_key: str) -> None:
        key = self._key(storage_key)
        with s3_errors("DeleteObject", self.bucket, key):
            self.quick_client.delete_object(Bucket=self.bucket, Key=key)

    def ensure_stored(self, blob: StoredBlob) -> None:
        """Send the spare up unless the bucket has the bytes: small ones without asking
        (the PUT costs what the question would), larger ones when a HEAD finds none, or an
        object of another size (put there by another program, or cut short by the store)."""
        small = blob.spare is not None and blob.size <= _SEND_WITHOUT_ASKING
        held = None if small else self.size_of(blob.storage_key)
        if not must_place(blob, held):
            return
        assert blob.spare is not None
        self.put_file(temp_path(self.tmp_dir, blob.spare), blob.storage_key, blob.md5, blob.size)

    def release(self, blob: StoredBlob) -> None:
        if blob.spare is not None:
            temp_path(self.tmp_dir, blob.spare).unlink(missing_ok=True)

    # -- what gc and fsck need

    def iter_files(self) -> Iterator[BlobFile]:
        """Objects under the prefix in key order (S3 lists that way), set-aside and
        quarantined ones and the owner's mark excepted."""
        for found in self._list(self.prefix):
            if not found.key.startswith((ASIDE, QUARANTINE + "/")) and found.key != OWNER_KEY:
                yield found

    def quarantine(self, storage_key: str) -> str | None:
        target = f"{self.prefix}{QUARANTINE}/{storage_key.rpartition('/')[2]}"
        try:
            self._move(self._key(storage_key), target)
        except FileNotFoundError:
            return None
        return f"s3://{self.bucket}/{target}"

    def describe(self) -> str:
        return self.location.describe()

    def owner(self) -> str | None:
        key = self.prefix + OWNER_KEY
        try:
            with s3_errors("GetObject", self.bucket, key):
                body = self.quick_client.get_object(Bucket=self.bucket, Key=key)["Body"]
                return body.read(1024).decode("utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set_owner(self, database_id: str) -> None:
        key = self.prefix + OWNER_KEY
        with s3_errors("PutObject", self.bucket, key):
            self.quick_client.put_object(
                Bucket=self.bucket, Key=key, Body=(database_id + "\n").encode("utf-8")
            )

    def iter_temp_files(self) -> Iterator[BlobFile]:
        """Local uploads in progress or left by a crash, then blobs gc set aside."""
        if self.tmp_dir.is_dir():
            yield from temp_files(self.tmp_dir)
        for found in self._list(self.prefix + ASIDE):
            yield BlobFile(found.key.removeprefix(ASIDE), found.size, found.mtime)

    def remove_temp(self, name: str) -> None:
        if name.startswith(_ASIDE_TOKEN):
            self.discard(name)
        else:
            temp_path(self.tmp_dir, name).unlink(missing_ok=True)

    def set_aside(self, storage_key: str) -> str | None:
        token = f"{_ASIDE_TOKEN}{secrets.token_hex(8)}"
        try:
            self._move(self._key(storage_key), self._aside_key(token))
        except FileNotFoundError:
            return None
        return token

    def restore(self, token: str, storage_key: str) -> None:
        self._move(self._aside_key(token), self._key(storage_key))

    def discard(self, token: str) -> int:
        key = self._aside_key(token)
        size = self._size(key)
        if size is None:
            return 0
        with s3_errors("DeleteObject", self.bucket, key):
            self.quick_client.delete_object(Bucket=self.bucket, Key=key)
        return size

    def iter_partial_uploads(self) -> Iterator[PartialUpload]:
        """Multipart uploads under the prefix never completed nor aborted: a large upload's
        (``put_file``) or a large set-aside copy's, cut off. One listing of their parts each,
        for their size."""
        pages = self.client.get_paginator("list_multipart_uploads")
        with s3_errors("ListMultipartUploads", self.bucket, self.prefix):
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Uploads", []):
                    yield PartialUpload(
                        item["Key"][len(self.prefix) :],
                        item["UploadId"],
                        self._parts_size(item["Key"], item["UploadId"]),
                        item["Initiated"].timestamp(),
                    )

    def abort_upload(self, upload: PartialUpload) -> None:
        key = self._key(upload.key)
        gone_meanwhile = contextlib.suppress(FileNotFoundError)  # NoSuchUpload
        with gone_meanwhile, s3_errors("AbortMultipartUpload", self.bucket, key):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload.upload_id
            )

    # -- S3 calls

    def _parts_size(self, key: str, upload_id: str) -> int:
        """The bytes of an unfinished upload's parts; 0 when it is gone meanwhile."""
        pages = self.client.get_paginator("list_parts")
        try:
            with s3_errors("ListParts", self.bucket, key):
                return sum(
                    int(part["Size"])
                    for page in pages.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    for part in page.get("Parts", [])
                )
        except FileNotFoundError:
            return 0

    def _aside_key(self, token: str) -> str:
        if not token.startswith(_ASIDE_TOKEN) or "/" in token:
            raise ValueError(f"bad set-aside token {token!r}")
        return self.prefix + ASIDE + token

    def _size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            with s3_errors("HeadObject", self.bucket, key):
                head = self.quick_client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def put_file(self, path: Path, storage_key: str, md5: str, size: int) -> None:
        """Send the local file ``path`` (``size`` bytes, this MD5) up as ``storage_key``."""
        key = self._key(storage_key)
        with s3_errors("PutObject", self.bucket, key):
            if size < MULTIPART_BYTES:
                digest = base64.b64encode(bytes.fromhex(md5)).decode("ascii")
                with open(path, "rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentMD5=digest
                    )
            else:
                from boto3.s3.transfer import TransferConfig

                parts = TransferConfig(
                    multipart_threshold=MULTIPART_BYTES,
                    multipart_chunksize=MULTIPART_BYTES,
                    max_concurrency=_PART_UPLOADS,
                )
                self.client.upload_file(str(path), self.bucket, key, Config=parts)

    def _move(self, source: str, target: str) -> None:
        """Copy on the server (in parts when large), then delete the source."""
        with s3_errors("CopyObject", self.bucket, source):
            self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)
        with s3_errors("DeleteObject", self.bucket, source):
            self.quick_client.delete_object(Bucket=self.bucket, Key=source)

    def _list(self, prefix: str) -> Iterator[BlobFile]:
        pages = self.client.get_paginator("list_objects_v2")
        with s3_errors("ListObjectsV2", self.bucket, prefix):
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield BlobFile(
                        item["Key"][len(self.prefix) :],
                        int(item["Size"]),
                        item["LastModified"].timestamp(),
                    )


class _S3BlobWriter(StagedWriter):
    def __init__(self, store: S3BlobStore) -> None:
        super().__init__(StagedUpload(store.tmp_dir))
        self._store = store

    def finish(self, expect: Mapping[str, str] | None = None) -> StoredBlob:
        """The digests; the bytes stay in the temp file, the spare, for ``ensure_stored``
        to send once a row is about to reference them (nothing is sent here)."""
        sha256, md5, sha1 = self._digests(expect)
        try:
            self._staged.file.close()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return StoredBlob(
            sha256,
            md5,
            sha1,
            self.bytes_written,
            storage_key_for(sha256),
            self._staged.crc32,
            spare=self._staged.path.name,
        )


class _ObjectReader(SeekableReader):
    """A seekable reader of one object: sequential reads share one streamed GET from the
    position; a seek ends it and the next read starts another at the new position.

    Opening starts the GET of the whole object, which answers its size (and FileNotFoundError
    when it is missing, before a caller has sent anything): one round trip for a reader that
    reads from the start, as a download, a zip entry or a thumbnail does.
    """

    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._body: Any = None
        answer = self._get(None)
        self._length = int(answer["ContentLength"])
        self._body = answer["Body"]

    def size(self) -> int:
        return self._length

    def _get(self, first: int | None) -> Any:
        """GetObject from byte ``first`` to the end (the whole object for None)."""
        bucket, key = self._store.bucket, self._key
        with s3_errors("GetObject", bucket, key):
            if first is None:
                return self._store.client.get_object(Bucket=bucket, Key=key)
            ranged = f"bytes={first}-{self._length - 1}"
            return self._store.client.get_object(Bucket=bucket, Key=key, Range=ranged)

    def readinto(self, buffer: Any) -> int:
        """Bytes from the position on; 0 at the object's end. A read from past its end
        raises OSError: a caller seeks there only when it believes the object longer (its
        row's size, a Range it answers), and 0 would make it send less than it promised."""
        if self._position > self._length and len(buffer):
            raise OSError(
                f"S3 GetObject {self._key}: the object ended early (a read from byte"
                f" {self._position} of an object of {self._length} bytes)"
            )
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        if self._body is None:
            self._body = self._get(self._position)["Body"]
        with s3_errors("GetObject", self._store.bucket, self._key):
            data = self._body.read(wanted)
        if not data:
            raise OSError(f"S3 GetObject {self._key}: the object ended early")
        memoryview(buffer)[: len(data)] = data
        self._position += len(data)
        return len(data)

    def _moved(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._moved()
        super().close()
