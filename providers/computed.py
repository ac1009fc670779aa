"""What the resources of the history and the trash share: properties computed from their
state, and refusing what they cannot do.

Their properties are not stored: each resource renders them as XML text
(``computed_properties``). PROPFIND (``providers.propfind``) copies what a resource's
``dead_properties()`` holds (name -> XML) into the answer as it is, and WsgiDAV's own code asks
``get_property_names`` and ``get_property_value``; this mixin serves both from the same text.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from lxml import etree
from wsgidav.dav_error import HTTP_FORBIDDEN, DAVError, PRECONDITION_CODE_ProtectedProperty
from wsgidav.dav_provider import _DAVResource

from davserver.errors import Forbidden
from providers.live_props import DS_NS, NC_NS
from providers.xml_safety import xml_text

DS = f"{{{DS_NS}}}"
NC = f"{{{NC_NS}}}"


def prop(name: str, value: object) -> str:
    """The XML text of property ``name`` (Clark notation) holding ``value`` as text."""
    namespace, _, local = name[1:].partition("}")
    text = xml_text(str(value))
    return f'<X:{local} xmlns:X="{escape(namespace, {chr(34): "&quot;"})}">{text}</X:{local}>'


class ComputedProperties:
    """Mixin for resources whose extra properties are computed and read-only."""

    environ: dict[str, Any]
    # Why changing it is refused: the message of every 403.
    read_only_reason = "this item is read-only"
    _computed: dict[str, str] | None = None

    def computed_properties(self) -> dict[str, str]:
        """{property name: its XML text}; override."""
        return {}

    def _properties(self) -> dict[str, str]:
        if self._computed is None:
            self._computed = self.computed_properties()
        return self._computed

    def dead_properties(self) -> dict[str, bytes]:
        """The computed properties in the form ``providers.propfind`` renders."""
        return {name: text.encode("utf-8") for name, text in self._properties().items()}

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = _DAVResource.get_property_names(self, is_allprop=is_allprop)
        names.extend(n for n in self._properties() if n not in names)
        return names

    def get_property_value(self, name: str) -> Any:
        if name == "{DAV:}getetag":
            etag = self.get_etag()  # type: ignore[attr-defined]
            if etag is None:
                raise DAVError(404)
            return etree.fromstring(prop(name, f'"{etag}"'))
        text = self._properties().get(name)
        if text is not None:
            return etree.fromstring(text)
        return _DAVResource.get_property_value(self, name)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)

    def prevent_locking(self) -> bool:
        return True

    def check_incoming(self, environ: dict[str, Any]) -> None:
        """Nothing can be copied or moved into these (``providers.gate``)."""
        raise Forbidden(self.read_only_reason)


class StoredBytes:
    """What every read-only file of an added space answers alike: its ETag is the hash of fixed
    bytes, served with Range, and it is never moved."""

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def support_recursive_move(self, dest_path: str) -> bool:
        return False
