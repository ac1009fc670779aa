"""Clean-ups a running server does on its own: trash items past their retention, expired
packages, refresh tokens past their expiry and (with ``maintenance.logbook_retention_days``)
old logbook rows, and the client addresses and user agents of sessions as old, are deleted
every ``maintenance.housekeeping_seconds``; the temp files a crashed upload left are removed
once older than ``maintenance.gc_grace_seconds``, and at least an hour (an upload's temp file
waits while it goes up to an S3 store, unchanged), and the unfinished multipart uploads a
cut-off upload left in an S3 store once a day old.

Each purge is one transaction per item, so several server processes doing this at once only
repeat a little work. Failures are logged and retried at the next run; they never stop serving.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from davserver.context import Services
from davserver.services.audit import forget_client_details, prune_logbook
from davserver.services.maintenance import MaintenanceService

log = logging.getLogger(__name__)
_LEFTOVER_AGE = 3600  # seconds: no upload in progress leaves its temp file alone this long
# An S3 multipart upload of tens of GB over a slow link can take hours: the sweep, which runs
# on its own, aborts only those begun a day ago (``davserver gc`` takes its --grace).
UNFINISHED_UPLOAD_AGE = dt.timedelta(days=1)


@dataclass(frozen=True)
class Swept:
    trash_items: int
    packages: int
    temp_files: int = 0
    refresh_tokens: int = 0
    logbook_rows: int = 0


class Housekeeper:
    def __init__(self, services: Services, every_seconds: float) -> None:
        self.services = services
        self.every = every_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Swept:
        """One sweep: expired trash items of everyone, expired packages and refresh tokens,
        logbook rows past their retention, upload leftovers (temp files, S3 multipart uploads)."""
        trash = self.services.trash.purge_expired()
        # Grants that expired leave their holders' locks in force: no one else could break them.
        self.services.locks.release(
            None, everywhere=True, because="its holder may no longer write there"
        )
        packages = self.services.packages.purge_expired()
        tokens = self.services.tokens.purge_expired()
        retention = self.services.settings.maintenance.logbook_retention_days
        logbook = prune_logbook(self.services.db, retention) if retention else 0
        if retention:  # the sessions name clients too (GET /api/v1/sessions shows them)
            forget_client_details(self.services.db, retention)
        seconds = max(self.services.settings.maintenance.gc_grace_seconds, _LEFTOVER_AGE)
        grace = dt.timedelta(seconds=seconds)
        uploads_grace = max(grace, UNFINISHED_UPLOAD_AGE)
        maintenance = MaintenanceService(self.services.db, self.services.blobs)
        temp = maintenance.sweep_leftovers(grace=grace, uploads_grace=uploads_grace)
        aborted = temp.multipart_uploads_aborted
        if (
            trash.items_purged
            or packages
            or tokens
            or logbook
            or temp.temp_files_removed
            or aborted
        ):
            log.info(
                "housekeeping: purged %d trash items, %d expired packages, %d expired refresh"
                " tokens and %d logbook rows, removed %d upload leftovers (%d bytes) and"
                " aborted %d unfinished S3 uploads (%d bytes)",
                trash.items_purged,
                len(packages),
                tokens,
                logbook,
                temp.temp_files_removed,
                temp.temp_bytes_removed,
                aborted,
                temp.multipart_bytes_aborted,
            )
        for error in temp.errors:
            log.warning("housekeeping: %s", error)
        return Swept(trash.items_purged, len(packages), temp.temp_files_removed, tokens, logbook)

    def start(self) -> None:
        """Sweep now and then every ``every_seconds`` on a daemon thread (not when 0)."""
        if self.every <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def sweep(self) -> None:
        """``run_once``, logging a failure instead of raising it."""
        try:
            self.run_once()
        except Exception:  # a failed sweep is retried next time; serving goes on
            log.exception("housekeeping failed")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.every)
