"""What the command line prints for people: tables and items that a name cannot take over."""

from __future__ import annotations

import argparse
import json

import pytest

from davserver.commands.common import emit_item, emit_rows

# A file name a client may store (C1 controls are allowed in names and in XML): CSI "31m"
# would turn an xterm's text red, NEL starts a new line (a forged row of the table).
NAME = "evil\x9b31mred\x85forged row.txt"


def test_a_table_writes_control_characters_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": NAME, "kind": "file"}, {"name": "plain é 😀.txt", "kind": "file"}]
    emit_rows(argparse.Namespace(json=False), rows, ["name", "kind"])
    out = capsys.readouterr().out
    assert "\x9b" not in out and "\x85" not in out
    assert "evil\\x9b31mred\\x85forged row.txt" in out
    assert "plain é 😀.txt" in out
    assert len(out.splitlines()) == 3


def test_an_item_writes_control_characters_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    emit_item(argparse.Namespace(json=False), {"restored": NAME, "tags": [NAME]})
    out = capsys.readouterr().out
    assert "\x9b" not in out and "\x85" not in out
    assert out.count("evil\\x9b31mred\\x85forged row.txt") == 2


def test_json_keeps_the_name_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    emit_rows(argparse.Namespace(json=True), [{"name": NAME}], ["name"])
    assert json.loads(capsys.readouterr().out) == [{"name": NAME}]
