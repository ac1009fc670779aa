"""PROPFIND at Depth 0 and 1, rendered straight to text.

WsgiDAV builds an lxml tree with a dozen getter calls per member and property; on a folder of
2,000 members that costs ~125 µs per member, which made listing a big folder slower than the
stock filesystem provider although our members come from one query. This handler parses the
request as WsgiDAV does (``util.parse_xml_body``, same errors), plus what WsgiDAV gets wrong
(``DAV:propname``, ``DAV:include``), and writes the multistatus as strings from the resources'
preloaded state. It answers every PROPFIND that gets past WsgiDAV's checks of Depth and If
headers (``providers.dispatch``); a Depth: infinity on a folder is refused before.

Dead properties are stored as serialized XML elements and are copied into the response as they
are, so their namespaces, attributes and content survive byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from xml.sax.saxutils import escape

from wsgidav import util, xml_tools
from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError
from wsgidav.dav_provider import DAVCollection

from davserver.memory import release_free_memory
from providers import live_props
from providers.resources import VirtualCollection, members_of
from providers.xml_safety import parse_xml_body, xml_text

_DAV = "{DAV:}"
_SUPPORTED_LOCK = (
    "<D:supportedlock>"
    "<D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
    "</D:lockentry>"
    "<D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype>"
    "</D:lockentry>"
    "</D:supportedlock>"
)


def can_handle(environ: dict[str, Any], res: Any) -> bool:
    """True for the requests this handler answers: Depth 0 or 1, or any on a file (nothing is
    below it). A Depth: infinity on a folder is refused before (``DavProvider``)."""
    depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
    return depth in ("0", "1") or (depth == "infinity" and not res.is_collection)


# What one PROPFIND may ask for. Clients ask a few dozen properties at most (Nextcloud's
# client 20, Windows 15), and the answer names each one for every member: a request of 1 MB
# naming one property 250,000 times made an answer of 328 MB for a folder of 100 files. So at
# most this many distinct names, and characters in them: an answer then grows with the folder,
# at most 16 KiB a member for the names, less than an allprop of members with many dead
# properties (64 KiB each, ``dead_props.MAX_DEAD_PROPERTY_BYTES``).
MAX_NAMES = 256
MAX_NAMES_CHARS = 16 * 1024

# RFC 4918 14.20: propfind ( propname | (allprop, include?) | prop )
_MODES = {"{DAV:}allprop": "allprop", "{DAV:}propname": "name", "{DAV:}prop": "named"}
_INCLUDE = "{DAV:}include"


def parse_request(environ: dict[str, Any]) -> tuple[str, list[str]]:
    """(mode, names): mode is "allprop" (names: those its DAV:include adds), "name" (a
    DAV:propname, names only) or "named" (names: those its DAV:prop asks); raises DAVError(400)
    on bad XML or modes that do not go together."""
    request = parse_xml_body(environ, allow_empty=True)
    if request is None:
        return "allprop", []
    if request.tag != "{DAV:}propfind":
        raise DAVError(HTTP_BAD_REQUEST, context_info="the body must be a DAV:propfind element")
    modes = {_MODES[child.tag] for child in request if child.tag in _MODES}
    if len(modes) > 1:
        raise DAVError(
            HTTP_BAD_REQUEST, context_info="allprop, propname and prop exclude each other"
        )
    mode = modes.pop() if modes else None
    includes = [child for child in request if child.tag == _INCLUDE]
    if includes and mode != "allprop":
        raise DAVError(HTTP_BAD_REQUEST, context_info="DAV:include goes with DAV:allprop only")
    lists = includes if mode == "allprop" else [c for c in request if c.tag == "{DAV:}prop"]
    # Each name once: the answer repeats each for every member.
    names = list(
        dict.fromkeys(str(p.tag) for child in lists for p in child if isinstance(p.tag, str))
    )
    if len(names) > MAX_NAMES or sum(map(len, names)) > MAX_NAMES_CHARS:
        raise DAVError(
            HTTP_BAD_REQUEST,
            context_info=f"a PROPFIND asks for at most {MAX_NAMES} properties, of at most "
            f"{MAX_NAMES_CHARS} characters together (namespaces included)",
        )
    return mode or "allprop", names


def respond(res: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The multistatus for ``res`` (and its members at Depth 1).

    The whole answer is written before it is sent (clients need its Content-Length: without
    one, WsgiDAV closes the connection), but as encoded chunks, each member's resource let go
    once written: a folder's members are never all held as resources and text at once.
    """
    mode, names = parse_request(environ)
    members: Iterable[Any] = ()
    if res.is_collection and environ.get("HTTP_DEPTH", "").strip() == "1":
        live_props.prepare_listing(res, names)
        members = members_of(res)
    lock_manager = res.provider.lock_manager
    has_locks = getattr(getattr(lock_manager, "storage", None), "has_locks", None)
    # With no lock anywhere in the spaces listed, every lockdiscovery is empty: skip the
    # lookups. Members of a folder are in its space; those of a virtual one (/shared/alice/)
    # may each be in another.
    spaces: list[Any] = [res]
    if isinstance(res, VirtualCollection):
        members = list(members)
        spaces += members
        live_props.prepare_members(res, members, names)
    urls = [item.get_ref_url() for item in spaces]
    any_locks = lock_manager is not None and (has_locks is None or bool(has_locks(urls)))
    body = _Body()
    body.write('<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">')
    body.write(_response(res, mode, names, lock_manager, any_locks))
    for item in members:
        body.write(_response(item, mode, names, lock_manager, any_locks))
    body.write("</D:multistatus>")
    start_response(
        "207 Multi-Status",
        [
            ("Content-Type", "application/xml; charset=utf-8"),
            ("Content-Length", str(body.finish())),
            ("Date", util.get_rfc1123_time()),
        ],
    )
    return body


# Text is encoded this many characters at a time: few chunks, each small beside a big answer.
_CHUNK_CHARS = 64 * 1024
# Past this size the answer's memory is handed back to the system once it has been sent, or a
# few large listings would keep the process at their peak (see davserver.memory).
_RELEASE_AFTER_BYTES = 1024 * 1024


class _Body:
    """A response body written as text, kept as UTF-8 chunks, and let go of chunk by chunk
    as it is sent; the memory it held is handed back once it has been sent."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pending: list[str] = []
        self._pending_chars = 0
        self._size = 0

    def write(self, text: str) -> None:
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= _CHUNK_CHARS:
            self._encode_pending()

    def finish(self) -> int:
        """Done writing; returns the body's length in bytes."""
        self._encode_pending()
        return self._size

    def _encode_pending(self) -> None:
        if self._pending:
            chunk = "".join(self._pending).encode("utf-8")
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._pending.clear()
            self._pending_chars = 0

    def __iter__(self) -> Iterator[bytes]:
        self._chunks.reverse()
        while self._chunks:
            yield self._chunks.pop()

    def close(self) -> None:
        self._chunks.clear()
        if self._size > _RELEASE_AFTER_BYTES:
            release_free_memory()


def _response(res: Any, mode: str, names: list[str], lock_manager: Any, any_locks: bool) -> str:
    renderers = _renderers(res, lock_manager, any_locks)
    dead: dict[str, bytes] = res.dead_properties() if hasattr(res, "dead_properties") else {}
    found: list[str] = []
    missing: list[str] = []
    asked = names
    if mode == "name":
        found = [_empty(name) for name in [*renderers, *dead]]
        asked = []
    elif mode == "allprop":
        found = [render() for render in renderers.values()]
        found.extend(value.decode("utf-8") for value in dead.values())
        # DAV:include adds what allprop leaves out (quota, oc:, nc:), not what it has already.
        asked = [name for name in names if name not in renderers and name not in dead]
    for name in asked:
        value = _render(res, name, renderers, dead)
        if value is None:
            missing.append(_empty(name))
        else:
            found.append(value)
    out = [f"<D:response><D:href>{escape(res.get_href())}</D:href>"]
    if found or not missing:
        out.append(
            f"<D:propstat><D:prop>{''.join(found)}</D:prop>"
            "<D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        )
    if missing:
        out.append(
            f"<D:propstat><D:prop>{''.join(missing)}</D:prop>"
            "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
        )
    out.append("</D:response>")
    return "".join(out)


def _render(
    res: Any, name: str, renderers: dict[str, Callable[[], str]], dead: dict[str, bytes]
) -> str | None:
    render = renderers.get(name)
    if render is not None:
        return render()
    value = dead.get(name)
    if value is not None:
        return value.decode("utf-8")
    return live_props.render(res, name) if name in live_props.READABLE else None


def _renderers(res: Any, lock_manager: Any, any_locks: bool) -> dict[str, Callable[[], str]]:
    """The live properties ``res`` has, in WsgiDAV's allprop order, each as a renderer."""
    is_collection = isinstance(res, DAVCollection) or res.is_collection
    out: dict[str, Callable[[], str]] = {
        "{DAV:}resourcetype": (
            (lambda: "<D:resourcetype><D:collection/></D:resourcetype>")
            if is_collection
            else (lambda: "<D:resourcetype/>")
        )
    }
    created = res.get_creation_date()
    if created is not None:
        out["{DAV:}creationdate"] = lambda: _text("creationdate", rfc3339_time(created))
    if not is_collection:
        out["{DAV:}getcontentlength"] = lambda: _text(
            "getcontentlength", str(res.get_content_length())
        )
        out["{DAV:}getcontenttype"] = lambda: _text("getcontenttype", res.get_content_type())
    modified = res.get_last_modified()
    if modified is not None:
        out["{DAV:}getlastmodified"] = lambda: _text("getlastmodified", http_date(modified))
    out["{DAV:}displayname"] = lambda: _text("displayname", res.get_display_name())
    if not is_collection:
        out["{DAV:}getetag"] = lambda: _text("getetag", f'"{res.get_etag()}"')
    if lock_manager is not None and not res.prevent_locking():
        out["{DAV:}lockdiscovery"] = (
            (lambda: _lockdiscovery(res, lock_manager))
            if any_locks
            else (lambda: "<D:lockdiscovery/>")
        )
        out["{DAV:}supportedlock"] = lambda: _SUPPORTED_LOCK
    return out


def _lockdiscovery(res: Any, lock_manager: Any) -> str:
    """Every lock on ``res``: its own and those with depth infinity on folders above it (RFC
    4918 7.7: they lock it too; ``lockroot`` says where each was taken). WsgiDAV lists only
    the resource's own; its rendering is kept for the LOCK answer, which neon and others read
    for the new lock."""
    locks = lock_manager.get_indirect_url_lock_list(res.get_ref_url())
    if not locks:
        return "<D:lockdiscovery/>"
    return (
        "<D:lockdiscovery>"
        + "".join(_activelock(res, lock) for lock in locks)
        + "</D:lockdiscovery>"
    )


def _owner_xml(owner: bytes | str | None) -> str:
    """The stored ``<owner>`` element (serialized with an XML declaration) as text to embed."""
    if not owner:
        return ""
    from lxml import etree

    return str(etree.tostring(xml_tools.string_to_xml(owner), encoding="unicode"))


def _activelock(res: Any, lock: dict[str, Any]) -> str:
    if lock["timeout"] < 0:
        timeout = "Infinite"
    else:
        timeout = f"Second-{max(0, int(lock['expire'] - time.time()))}"
    owner = _owner_xml(lock["owner"])
    root = res.provider.get_resource_inst(res.provider.ref_url_to_path(lock["root"]), res.environ)
    href = root.get_href() if root is not None else lock["root"]
    return (
        "<D:activelock>"
        f"<D:locktype><D:{lock['type']}/></D:locktype>"
        f"<D:lockscope><D:{lock['scope']}/></D:lockscope>"
        f"<D:depth>{escape(lock['depth'])}</D:depth>"
        f"{owner}"
        f"<D:timeout>{timeout}</D:timeout>"
        f"<D:locktoken><D:href>{escape(lock['token'])}</D:href></D:locktoken>"
        f"<D:lockroot><D:href>{escape(href)}</D:href></D:lockroot>"
        "</D:activelock>"
    )


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch: float) -> str:
    """``Thu, 26 Nov 2026 12:04:51 GMT``, as WsgiDAV's get_rfc1123_time writes it, at a
    fraction of email.utils' cost (a listing writes one per member)."""
    t = time.gmtime(epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def rfc3339_time(epoch: float) -> str:
    """``2026-11-26T12:04:51Z``, as WsgiDAV's get_rfc3339_time writes it."""
    t = time.gmtime(epoch)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"
    )


def _text(local: str, value: str) -> str:
    return f"<D:{local}>{xml_text(value)}</D:{local}>"


def _empty(name: str) -> str:
    if name.startswith(_DAV):
        return f"<D:{name[len(_DAV) :]}/>"
    namespace, _, local = name[1:].partition("}") if name.startswith("{") else ("", "", name)
    if not namespace:
        return f'<{local} xmlns=""/>'
    return f'<X:{local} xmlns:X="{escape(namespace, {chr(34): "&quot;"})}"/>'
