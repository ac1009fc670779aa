"""Stored property values are copied into a multistatus only when that keeps it well-formed."""

from __future__ import annotations

import pytest
from lxml import etree

from providers.xml_safety import stored_element

KEPT = [
    b'<ns0:color xmlns:ns0="urn:z">blue <ns0:shade tone="dark">navy</ns0:shade></ns0:color>',
    b'<z xmlns="urn:z">&amp;&#233;&lt;</z>',
    b"<z><!-- note --><?pi data?></z>",
]
EMPTIED = [
    b'<z xmlns="urn:z">&x;</z>',  # an entity reference kept from a body with a DTD
    b'<!DOCTYPE z [<!ENTITY x "y">]><z xmlns="urn:z">&x;</z>',
    b'<?xml version="1.0"?><z xmlns="urn:z">v</z>',
    b'<z xmlns="urn:z">v',
    b"",
    b"\xff\xfe<",
]


@pytest.mark.parametrize("value", KEPT)
def test_a_well_formed_element_is_kept_byte_for_byte(value: bytes) -> None:
    assert stored_element("{urn:z}z", value) == value


@pytest.mark.parametrize("value", EMPTIED)
def test_anything_else_becomes_the_empty_element(value: bytes) -> None:
    out = stored_element("{urn:z}z", value)
    element = etree.fromstring(out)
    assert element.tag == "{urn:z}z" and len(element) == 0 and element.text is None


def test_a_name_written_with_character_references_becomes_its_empty_element() -> None:
    """What PROPPATCH stored for ``<X:été/>`` before values were written in UTF-8: the empty
    element it falls back to must itself name the property in UTF-8, not again in references."""
    out = stored_element(
        "{urn:z}été", b'<ns0:&#233;t&#233; xmlns:ns0="urn:z">v</ns0:&#233;t&#233;>'
    )
    element = etree.fromstring(out)
    assert element.tag == "{urn:z}été" and element.text is None
