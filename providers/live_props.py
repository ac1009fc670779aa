"""Live properties beyond WsgiDAV's own: the ownCloud/Nextcloud dialect and RFC 4331 quota.

Clients ask for these by name (rclone: ``oc:checksums`` to compare hashes, the quota pair for
``rclone about``); they are not part of ``allprop``, as in Nextcloud, so a plain listing stays
cheap. Each is rendered as XML text here, the one definition both PROPFIND paths use.
"""

from __future__ import annotations

from typing import Any

from wsgidav import util

from davserver.services.actor import ENVIRON_KEY
from davserver.services.permissions import Perm

OC_NS = "http://owncloud.org/ns"
CHECKSUMS = f"{{{OC_NS}}}checksums"
FILEID = f"{{{OC_NS}}}fileid"
SIZE = f"{{{OC_NS}}}size"
QUOTA_USED = "{DAV:}quota-used-bytes"
QUOTA_AVAILABLE = "{DAV:}quota-available-bytes"
NC_NS = "http://nextcloud.org/ns"
# Whether ?thumbnail= / ?preview= can answer (Nextcloud's name; decided by type and name).
HAS_PREVIEW = f"{{{NC_NS}}}has-preview"
PERMISSIONS = f"{{{OC_NS}}}permissions"
PRIVILEGES = "{DAV:}current-user-privilege-set"
DS_NS = "http://davserver.dev/ns"
NAMES = frozenset(
    {
        CHECKSUMS,
        FILEID,
        SIZE,
        QUOTA_USED,
        QUOTA_AVAILABLE,
        HAS_PREVIEW,
        PERMISSIONS,
        PRIVILEGES,
    }
)

# Set by PROPPATCH as the client's modification time (Explorer; see resources._MTIME_PROPS),
# and read back as that time when there is one. Not among NAMES: it is not protected.
MS_NS = "urn:schemas-microsoft-com:"
_WIN32_LOCAL = "Win32LastModifiedTime"
WIN32_MTIME = f"{{{MS_NS}}}{_WIN32_LOCAL}"
# What ``render`` answers.
READABLE = NAMES | {WIN32_MTIME}

# The digests of zero bytes, for files that have no version yet.
EMPTY_DIGESTS = {
    "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "md5": "d41d8cd98f00b204e9800998ecf8427e",
}
_USAGE_KEY = "davserver.usage"
_SIZES_KEY = "davserver.folder_sizes"


def prepare_listing(folder: Any, names: list[str]) -> None:
    """Before the members of ``folder`` are rendered: what they will be asked, worked out for
    all of them at once (now the folders' ``oc:size``: one query instead of one each)."""
    view = getattr(folder, "view", None)
    if SIZE in names and view is not None and view.is_folder:
        folder.environ[_SIZES_KEY] = folder.provider.files.child_folder_sizes(view.id)


def prepare_members(collection: Any, members: list[Any], names: list[str]) -> None:
    """``prepare_listing`` for the members of a virtual collection, which come from
    different folders (``/shared/<owner>/``, ``/groups/``): their ``oc:size`` in one query."""
    if SIZE in names and members:
        views = (getattr(member, "view", None) for member in members)
        folders = [view.id for view in views if view is not None and view.is_folder]
        collection.environ[_SIZES_KEY] = collection.provider.files.folder_sizes(folders)


def _folder_size(res: Any) -> int:
    view = res.view
    known = res.environ.get(_SIZES_KEY, {}).get(view.id)
    if known is not None:
        return int(known)
    if view.parent_id is None and view.group_id is None:
        # The top of a user's own space: its running total, not a walk of every file in it.
        return _usage(res)[0]
    return res.provider.files.subtree_size(view.id)


def render(res: Any, name: str) -> str | None:
    """The property ``name`` of resource ``res`` as XML text, or None if it has none."""
    view = getattr(res, "view", None)
    if name in (QUOTA_USED, QUOTA_AVAILABLE) and (view.is_folder if view else res.is_collection):
        used, available = _usage(res)
        value = used if name == QUOTA_USED else available
        local = name[len("{DAV:}") :]
        return f'<D:{local} xmlns:D="DAV:">{value}</D:{local}>'
    if view is None:
        return None
    if name == FILEID:
        return f'<oc:fileid xmlns:oc="{OC_NS}">{view.id.hex}</oc:fileid>'
    if name == WIN32_MTIME:
        if view.mtime is None:
            return None
        stamp = util.get_rfc1123_time(view.mtime.timestamp())
        return f'<Z:{_WIN32_LOCAL} xmlns:Z="{MS_NS}">{stamp}</Z:{_WIN32_LOCAL}>'
    if name == CHECKSUMS and not view.is_folder:
        return checksums(view.sha1 or EMPTY_DIGESTS["sha1"], view.md5 or EMPTY_DIGESTS["md5"])
    if name == HAS_PREVIEW:
        flag = "true" if res.provider.variants.has_preview(view) else "false"
        return f'<nc:has-preview xmlns:nc="{NC_NS}">{flag}</nc:has-preview>'
    if name == PERMISSIONS:
        return f'<oc:permissions xmlns:oc="{OC_NS}">{oc_permissions(res)}</oc:permissions>'
    if name == PRIVILEGES:
        privileges = "".join(f"<D:privilege>{p}</D:privilege>" for p in _privileges(res))
        return (
            f'<D:current-user-privilege-set xmlns:D="DAV:" xmlns:ds="{DS_NS}">'
            f"{privileges}</D:current-user-privilege-set>"
        )
    if name == SIZE:
        size = _folder_size(res) if view.is_folder else view.size
        return f'<oc:size xmlns:oc="{OC_NS}">{size}</oc:size>'
    return None


def checksums(sha1: str, md5: str) -> str:
    """``oc:checksums`` of bytes with these digests, as Nextcloud writes it."""
    return (
        f'<oc:checksums xmlns:oc="{OC_NS}">'
        f"<oc:checksum>SHA1:{sha1} MD5:{md5}</oc:checksum></oc:checksums>"
    )


def oc_permissions(res: Any) -> str:
    """ownCloud's permission letters: S shared with me, R may reshare, G readable, D may
    delete, N may rename, V may move, W may write (files), C and K may create files and
    folders (folders)."""
    rights, view = res.rights, res.view
    letters = ""
    if view.group_id is None and view.owner_id != res.environ[ENVIRON_KEY].user_id:
        letters += "S"
    if rights & Perm.SHARE:
        letters += "R"
    if rights & Perm.READ:
        letters += "G"
    if rights & (Perm.WRITE | Perm.TRASH):
        letters += "D"
    if rights & Perm.WRITE:
        # An entry of /shared/<owner>/ cannot be renamed or moved (its folder is not the
        # user's: 403), so clients are not told they may; what is inside it can.
        letters += ("" if _is_shared_entry(res.path) else "NV") + ("CK" if view.is_folder else "W")
    return letters


def _is_shared_entry(path: str) -> bool:
    """``/shared/<owner>/<name>``, a top-most item shared with the user."""
    parts = path.strip("/").split("/")
    return len(parts) == 3 and parts[0] == "shared"


def _privileges(res: Any) -> list[str]:
    """RFC 3744 privileges (read, write and its parts) plus ours: download and share."""
    rights = res.rights
    out = []
    if rights & Perm.READ:
        out += ["<D:read/>", "<D:read-current-user-privilege-set/>"]
    if rights & Perm.DOWNLOAD:
        out.append("<ds:download/>")
    if rights & Perm.WRITE:
        out += ["<D:write/>", "<D:write-content/>", "<D:write-properties/>"]
        if res.view.is_folder:
            out += ["<D:bind/>", "<D:unbind/>"]
    if rights & Perm.SHARE:
        out.append("<ds:share/>")
    return out


def _usage(res: Any) -> tuple[int, int]:
    """(used, available) bytes of the quota of the space ``res`` is in, computed once per
    request and space: a user's space counts against its owner's quota (what a grantee
    uploads into a shared folder too), a group's space against nobody's, so there only the
    disk limits an upload (and nothing is counted as used). A collection outside every space
    (``/``, ``/trash/``, ``/groups/``...) shows the signed-in user's own: a drive mounted at
    ``/`` shows its free space from there."""
    view = getattr(res, "view", None)
    if view is None:
        realm = ("user", res.environ[ENVIRON_KEY].user_id)
    elif view.group_id is not None:
        realm = ("group", view.group_id)
    else:
        realm = ("user", view.owner_id)
    known: dict[tuple[str, Any], tuple[int, int]] = res.environ.setdefault(_USAGE_KEY, {})
    if realm in known:
        return known[realm]
    files = res.provider.files
    used, quota = (0, None) if realm[0] == "group" else files.usage(realm[1])
    free_disk = files.blobs.free_bytes()
    available = free_disk if quota is None else max(0, min(quota - used, free_disk))
    known[realm] = (used, available)
    return used, available
