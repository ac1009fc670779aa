"""A check a front runs first in every file-tree write transaction of one request.

WebDAV's locks are checked by the front (``providers``) when a request begins, and the
transaction that makes the change begins later: after the body of an upload has arrived, or
after the name was found free. A LOCK taken through another server process in between used
to be ignored: the write went through, and the lock holder's next edit found its file moved,
deleted or overwritten. So the front sets a fence for the request (``set_write_fence``), and
``FileService.run_write`` runs it at the start of each transaction (``run_write_fence``), where
it can read what was committed meanwhile and refuse the write by raising.

The fence is kept per thread of execution (a context variable), as a request is.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from sqlalchemy.orm import Session

#: Called with the write transaction's session before anything is written; raises to refuse.
WriteFence = Callable[[Session], None]

_fence: contextvars.ContextVar[WriteFence | None] = contextvars.ContextVar(
    "davserver_write_fence", default=None
)


def set_write_fence(fence: WriteFence | None) -> None:
    """From now on in this context, ``fence`` guards every write transaction (None: none)."""
    _fence.set(fence)


def run_write_fence(session: Session) -> None:
    """Run the context's fence, if any, in the write transaction of ``session``."""
    fence = _fence.get()
    if fence is not None:
        fence(session)
