"""Live properties beyond WsgiDAV's own: the ownCloud dialect and RFC 4331 quota.

Clients ask for these by name (rclone: ``oc:checksums`` to compare hashes, the quota pair for
``rclone about``); they are not part of ``allprop``, as in Nextcloud, so a plain listing stays
cheap. Each is rendered as XML text here, the one definition both PROPFIND paths use.
"""

from __future__ import annotations

import shutil
from typing import Any

OC_NS = "http://owncloud.org/ns"
CHECKSUMS = f"{{{OC_NS}}}checksums"
FILEID = f"{{{OC_NS}}}fileid"
SIZE = f"{{{OC_NS}}}size"
QUOTA_USED = "{DAV:}quota-used-bytes"
QUOTA_AVAILABLE = "{DAV:}quota-available-bytes"
NAMES = frozenset({CHECKSUMS, FILEID, SIZE, QUOTA_USED, QUOTA_AVAILABLE})

# The digests of zero bytes, for files that have no version yet.
EMPTY_DIGESTS = {
    "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "md5": "d41d8cd98f00b204e9800998ecf8427e",
}
_USAGE_KEY = "davserver.usage"


def render(res: Any, name: str) -> str | None:
    """The property ``name`` of resource ``res`` as XML text, or None if it has none."""
    view = getattr(res, "view", None)
    if view is None:
        return None
    if name == FILEID:
        return f'<oc:fileid xmlns:oc="{OC_NS}">{view.id.hex}</oc:fileid>'
    if name == CHECKSUMS and not view.is_folder:
        sha1 = view.sha1 or EMPTY_DIGESTS["sha1"]
        md5 = view.md5 or EMPTY_DIGESTS["md5"]
        return (
            f'<oc:checksums xmlns:oc="{OC_NS}">'
            f"<oc:checksum>SHA1:{sha1} MD5:{md5}</oc:checksum></oc:checksums>"
        )
    if name == SIZE:
        size = res.provider.files.subtree_size(view.id) if view.is_folder else view.size
        return f'<oc:size xmlns:oc="{OC_NS}">{size}</oc:size>'
    if name in (QUOTA_USED, QUOTA_AVAILABLE) and view.is_folder:
        used, available = _usage(res)
        value = used if name == QUOTA_USED else available
        local = name[len("{DAV:}") :]
        return f'<D:{local} xmlns:D="DAV:">{value}</D:{local}>'
    return None


def _usage(res: Any) -> tuple[int, int]:
    """(used, available) bytes of the user's space, computed once per request."""
    cached = res.environ.get(_USAGE_KEY)
    if cached is not None:
        used, available = cached
        return int(used), int(available)
    files = res.provider.files
    used, quota = files.usage(res.environ["davserver.actor"].user_id)
    free_disk = shutil.disk_usage(getattr(files.blobs, "root", ".")).free
    available = free_disk if quota is None else max(0, min(quota - used, free_disk))
    res.environ[_USAGE_KEY] = (used, available)
    return used, available
