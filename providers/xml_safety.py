"""What keeps XML from clients from breaking the XML sent to clients.

WsgiDAV parses request bodies (PROPFIND, PROPPATCH, LOCK) with entities left unresolved: no
file or URL is read (XXE) and libxml2 stops a billion laughs. But a reference to an internal
entity stays in the tree as ``&x;``: a dead property (or a lock's owner) stored from it comes
back without its declaration, and every multistatus that includes it is ill-formed. No WebDAV
client sends a DTD, so a body with one is refused (400) before anything is done. Every XML body
is read by ``wsgidav.util.parse_xml_body``, WsgiDAV's handlers and ``providers.propfind``
alike: it is replaced here, once, by a version that refuses a DOCTYPE.

Values stored before that (or written to the database by other means) are checked when they
are read: one that is not a single well-formed element is answered as an empty one.

Text written into a multistatus (a name, a path) goes through ``xml_text``: names may no longer
hold what XML 1.0 has no character for, but earlier versions stored some.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree
from wsgidav import util
from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError

_logger = logging.getLogger(__name__)
_wsgidav_parse_xml_body = util.parse_xml_body
# An XML declaration may only start a document; copied into a multistatus it would break it.
_DECLARATION = re.compile(rb"\s*<\?xml\s")
# What XML 1.0 has no character for: control characters but tab, newline and carriage return,
# and the noncharacters U+FFFE and U+FFFF. Names cannot hold them (``check_name``); earlier
# versions let U+FFFE and U+FFFF through.
_NOT_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# Where the request's parsed body is kept, for what WsgiDAV does not pass on (a LOCK's scope).
BODY_KEY = "davserver.xml_body"


def parse_xml_body(environ: dict[str, Any], *, allow_empty: bool = False) -> Any:
    """WsgiDAV's ``util.parse_xml_body``: the body's root element, or None if it is empty and
    ``allow_empty``; kept in the environ under ``BODY_KEY`` too. Raises DAVError(400) for a
    missing or malformed body, or one that has a DOCTYPE (a DTD, entity declarations)."""
    root = _wsgidav_parse_xml_body(environ, allow_empty=allow_empty)
    if root is not None:
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            raise DAVError(
                HTTP_BAD_REQUEST,
                context_info="XML bodies with a DOCTYPE (DTD, entity declarations) are refused",
            )
    environ[BODY_KEY] = root
    return root


util.parse_xml_body = parse_xml_body


def xml_text(value: str) -> str:
    """``value`` escaped as XML character data, what XML cannot carry shown as U+FFFD: a
    file named so by an earlier version made every listing of its folder (and of the trash,
    once deleted) ill-formed, so no client could see it to rename it."""
    return escape(_NOT_XML_CHARS.sub("\ufffd", value))


def stored_element(name: str, value: bytes) -> bytes:
    """``value``, a property ``name`` stored as serialized XML, if it can be copied into a
    multistatus as it is (one well-formed element, no DTD or XML declaration); otherwise the
    empty element ``name``, so the property is still listed and can be removed."""
    if _plainly_whole(value):
        return value
    if not _DECLARATION.match(value):
        try:
            parser = etree.XMLParser(resolve_entities=False, no_network=True)
            root = etree.fromstring(value, parser=parser)
        except etree.XMLSyntaxError:
            root = None
        if root is not None and not root.getroottree().docinfo.doctype:
            return value
    _logger.warning("stored property %s is not well-formed XML; answered empty", name)
    return bytes(etree.tostring(etree.Element(name), encoding="utf-8"))


def _plainly_whole(value: bytes) -> bool:
    """True for what PROPPATCH stores, lxml's serialization of one element, when it holds no
    entity reference, DTD or declaration: nothing else could spoil it, and seeing that takes
    ~0.2 us against ~3.2 us to parse (a listing reads every member's properties; Windows sets
    four on each file)."""
    return (
        value.startswith(b"<")
        and value.endswith(b">")
        and b"&" not in value
        and b"<!" not in value
        and b"<?" not in value
    )


def stored_elements(values: dict[str, bytes]) -> dict[str, bytes]:
    """``stored_element`` of each {name: value}."""
    return {name: stored_element(name, value) for name, value in values.items()}
