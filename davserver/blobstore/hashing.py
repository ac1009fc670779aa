"""SHA-256, MD5, SHA-1 and CRC-32 of one stream, computed while it passes.

SHA-256 is the blob's identity; MD5 and SHA-1 are for clients such as rclone that know only
those; CRC-32 is what a zip entry records, so packages can lay out their archive up front.
CRC-32 is left out past ``CRC_UP_TO`` bytes: an upload that large is bound by the CPU the
hashes take, and the few that end up in a zip get theirs computed then, once
(``PackageService._with_crc32``).
hashlib releases the GIL while it hashes large buffers, so once an upload is big enough each
digest runs in its own helper thread and the request thread only receives and writes;
small uploads are hashed inline, where a thread would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
import zlib
from typing import Any

_THREAD_AFTER_BYTES = 4 * 1024 * 1024
CRC_UP_TO = 64 * 1024 * 1024
_QUEUE_DEPTH = 4  # chunks in flight per digest; bounds the memory a slow hasher can pin
_ALGORITHMS = ("sha256", "md5", "sha1")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: str) -> bool:
    """True for a SHA-256 as the store spells it (64 lowercase hex digits), a blob's name."""
    return bool(_SHA256.fullmatch(text))


class _Crc32:
    """CRC-32 with hashlib's update/hexdigest shape (zlib releases the GIL too)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


class _ThreadedDigest:
    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.thread = threading.Thread(target=self._run, name="hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            self.digest.update(chunk)

    def join(self) -> None:
        self.queue.put(None)
        self.thread.join()


class MultiHasher:
    def __init__(self) -> None:
        self._crc = _Crc32()
        self._digests: list[Any] = [hashlib.new(name) for name in _ALGORITHMS]
        self._digests.append(self._crc)
        self._seen = 0
        self._threads: list[_ThreadedDigest] = []

    def update(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > CRC_UP_TO and self._crc in self._digests:
            self._drop_crc()
        if self._threads:
            for worker in self._threads:
                worker.queue.put(data)
            return
        for digest in self._digests:
            digest.update(data)
        if self._seen > _THREAD_AFTER_BYTES:
            self._threads = [_ThreadedDigest(d) for d in self._digests]

    def _drop_crc(self) -> None:
        self._digests.remove(self._crc)
        for worker in self._threads:
            if worker.digest is self._crc:
                worker.join()
                self._threads.remove(worker)

    def _join(self) -> None:
        for worker in self._threads:
            worker.join()
        self._threads = []

    def digests(self) -> tuple[str, str, str]:
        """(sha256, md5, sha1) as hex; the hasher is finished afterwards."""
        self._join()
        sha256, md5, sha1 = (d.hexdigest() for d in self._digests[:3])
        return sha256, md5, sha1

    @property
    def crc32(self) -> int | None:
        """The CRC-32 as an unsigned integer, None past ``CRC_UP_TO`` bytes; valid after
        ``digests()``."""
        return self._crc.value if self._crc in self._digests else None

    def close(self) -> None:
        """Stop the helper threads without computing anything (an aborted upload)."""
        self._join()
