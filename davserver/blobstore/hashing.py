"""SHA-256, MD5 and SHA-1 of one stream, computed while it passes.

SHA-256 is the blob's identity; MD5 and SHA-1 are for clients such as rclone that know only
those. hashlib releases the GIL for large updates, so on big uploads MD5 (the slowest of the
three) runs in a helper thread while the request thread does SHA-256, SHA-1 and the file write.
"""

from __future__ import annotations

import hashlib
import queue
import threading

# Uploads smaller than this are hashed inline: a thread costs more than it saves.
_THREAD_AFTER_BYTES = 4 * 1024 * 1024
_QUEUE_DEPTH = 8


class MultiHasher:
    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()
        self._md5 = hashlib.md5()
        self._seen = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        self._sha1.update(data)
        self._seen += len(data)
        if self._queue is not None:
            self._queue.put(data)
        elif self._seen > _THREAD_AFTER_BYTES:
            self._md5.update(data)
            self._start_thread()
        else:
            self._md5.update(data)

    def _start_thread(self) -> None:
        self._queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name="md5", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            self._md5.update(chunk)

    def _join(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None
            self._thread = None

    def digests(self) -> tuple[str, str, str]:
        """(sha256, md5, sha1) as hex; the hasher is finished afterwards."""
        self._join()
        return self._sha256.hexdigest(), self._md5.hexdigest(), self._sha1.hexdigest()

    def close(self) -> None:
        """Stop the helper thread without computing anything (an aborted upload)."""
        self._join()
