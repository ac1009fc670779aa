"""End to end with a third-party client library: webdavclient3 against a real server process.

Every test works in its own fresh collection (``dav_dir``) on ``live_server``, once per engine.
Names with spaces and non-ASCII characters go through the client's own URL quoting and the
server's href encoding in PROPFIND answers.
"""

from __future__ import annotations

import contextlib
import io
import os
import urllib.parse

import pytest
from webdav3.client import Client
from webdav3.exceptions import WebDavException

from tests.servers import LiveServer

NAMES = [
    "plain.txt",
    "with spaces in it.txt",
    "ünïcødé Grüße 日本語 ✓.bin",
]


@pytest.fixture
def client(live_server: LiveServer, dav_dir: str) -> Client:
    """A webdavclient3 client, configured as a user would, rooted at the test's fresh collection.

    The client checks that a path or its parent exists with HEAD (``Client.check``) before almost
    every operation, collections included. When the server refuses HEAD on a collection, nothing
    else can work: say so once, plainly, instead of in a deep traceback from the library.
    """
    head = live_server.request("HEAD", dav_dir)
    if head.status != 200:
        pytest.fail(
            f"HEAD on a collection answered {head.status}, not 200 ({dav_dir}): webdavclient3 "
            "checks folders with HEAD before upload, mkdir, list, move and copy",
            pytrace=False,
        )
    return Client(
        {
            "webdav_hostname": live_server.url,
            "webdav_root": urllib.parse.unquote(urllib.parse.urlsplit(dav_dir).path),
            "webdav_login": live_server.user,
            "webdav_password": live_server.password,
            "webdav_timeout": 30,
        }
    )


def upload(client: Client, path: str, data: bytes) -> None:
    client.upload_to(io.BytesIO(data), path)


def download(client: Client, path: str) -> bytes:
    buffer = io.BytesIO()
    client.download_from(buffer, path)
    return buffer.getvalue()


def listing(client: Client, path: str = "/") -> set[str]:
    return set(client.list(path))


@pytest.mark.parametrize("name", NAMES)
def test_upload_list_download(client: Client, name: str) -> None:
    data = os.urandom(300_000) + b"end"
    upload(client, name, data)

    assert listing(client) == {name}
    assert client.check(name)
    assert not client.is_dir(name)
    assert int(client.info(name)["size"]) == len(data)
    assert download(client, name) == data


def test_overwrite_replaces_content(client: Client) -> None:
    upload(client, "doc.txt", b"first version")
    upload(client, "doc.txt", b"second, longer version")
    assert download(client, "doc.txt") == b"second, longer version"
    assert listing(client) == {"doc.txt"}


def test_empty_file(client: Client) -> None:
    upload(client, "empty", b"")
    assert listing(client) == {"empty"}
    assert download(client, "empty") == b""


@pytest.mark.parametrize("folder", ["folder", "Ordner mit Leerzeichen", "Dossier été ✓"])
def test_mkdir_and_nested_listing(client: Client, folder: str) -> None:
    assert client.mkdir(folder)
    assert client.mkdir(f"{folder}/Ünter ordner")
    upload(client, f"{folder}/a file.txt", b"inside")
    upload(client, f"{folder}/Ünter ordner/deep.txt", b"deeper")

    assert listing(client) == {f"{folder}/"}
    assert client.is_dir(folder)
    assert listing(client, folder) == {"Ünter ordner/", "a file.txt"}
    assert listing(client, f"{folder}/Ünter ordner") == {"deep.txt"}
    assert download(client, f"{folder}/Ünter ordner/deep.txt") == b"deeper"


def test_mkdir_existing_folder_is_an_error_or_no_op(client: Client) -> None:
    assert client.mkdir("twice")
    with contextlib.suppress(WebDavException):  # 405 Method Not Allowed is what RFC 4918 asks
        client.mkdir("twice")
    assert listing(client) == {"twice/"}


@pytest.mark.parametrize("target", ["renamed.txt", "neuer Name ü.txt"])
def test_move_file(client: Client, target: str) -> None:
    upload(client, "original name.txt", b"moving bytes")
    client.move("original name.txt", target)

    assert not client.check("original name.txt")
    assert listing(client) == {target}
    assert download(client, target) == b"moving bytes"


def test_move_file_into_folder(client: Client) -> None:
    client.mkdir("dest ✓")
    upload(client, "a.txt", b"a")
    client.move("a.txt", "dest ✓/a.txt")
    assert listing(client) == {"dest ✓/"}
    assert listing(client, "dest ✓") == {"a.txt"}
    assert download(client, "dest ✓/a.txt") == b"a"


def test_move_folder_with_contents(client: Client) -> None:
    client.mkdir("src dir")
    client.mkdir("src dir/sub")
    upload(client, "src dir/sub/f é.txt", b"payload")
    client.move("src dir", "moved dir ✓")

    assert listing(client) == {"moved dir ✓/"}
    assert listing(client, "moved dir ✓/sub") == {"f é.txt"}
    assert download(client, "moved dir ✓/sub/f é.txt") == b"payload"


def test_move_onto_existing_without_overwrite_fails(client: Client) -> None:
    upload(client, "a.txt", b"A")
    upload(client, "b.txt", b"B")
    with pytest.raises(WebDavException):
        client.move("a.txt", "b.txt", overwrite=False)  # 412 Precondition Failed
    assert download(client, "a.txt") == b"A"
    assert download(client, "b.txt") == b"B"

    client.move("a.txt", "b.txt", overwrite=True)
    assert listing(client) == {"b.txt"}
    assert download(client, "b.txt") == b"A"


@pytest.mark.parametrize("target", ["copy.txt", "Kopie mit Ümlaut.txt"])
def test_copy_file(client: Client, target: str) -> None:
    upload(client, "source file.txt", b"copied bytes")
    client.copy("source file.txt", target)

    assert listing(client) == {"source file.txt", target}
    assert download(client, target) == b"copied bytes"

    # The copy is its own file: changing the source leaves it alone.
    upload(client, "source file.txt", b"changed afterwards")
    assert download(client, target) == b"copied bytes"
    assert download(client, "source file.txt") == b"changed afterwards"


def test_copy_folder_with_contents(client: Client) -> None:
    """webdavclient3 copies a folder with ``Depth: 1`` unless told otherwise, which RFC 4918
    does not define for COPY: the server copies it whole, as SabreDAV does (WsgiDAV: 400)."""
    client.mkdir("tree")
    client.mkdir("tree/branch é")
    upload(client, "tree/root.txt", b"root")
    upload(client, "tree/branch é/leaf ✓.txt", b"leaf")
    client.copy("tree", "tree copy")

    assert listing(client) == {"tree/", "tree copy/"}
    assert listing(client, "tree copy") == {"branch é/", "root.txt"}
    assert download(client, "tree copy/branch é/leaf ✓.txt") == b"leaf"
    assert listing(client, "tree") == {"branch é/", "root.txt"}  # the source is untouched


@pytest.mark.parametrize("name", NAMES)
def test_delete_file(client: Client, name: str) -> None:
    upload(client, name, b"to be deleted")
    upload(client, "keep.txt", b"stays")
    client.clean(name)

    assert not client.check(name)
    assert listing(client) == {"keep.txt"}


def test_delete_folder_with_contents(client: Client) -> None:
    client.mkdir("doomed ✗")
    client.mkdir("doomed ✗/inner")
    upload(client, "doomed ✗/inner/x.txt", b"x")
    client.clean("doomed ✗/")

    assert not client.check("doomed ✗/")
    assert not client.check("doomed ✗/inner/x.txt")
    assert listing(client) == set()


def test_download_missing_file_raises(client: Client) -> None:
    with pytest.raises(WebDavException):
        download(client, "does not exist.txt")


def test_a_property_set_is_read_back(client: Client) -> None:
    # webdavclient3 sends PROPPATCH with Depth: 1, which was a 400 ("Depth must be '0'").
    upload(client, "tagged.txt", b"t")
    tag = {"namespace": "urn:example:tags", "name": "colour", "value": "grün"}
    client.set_property("tagged.txt", tag)
    assert client.get_property("tagged.txt", tag) == "grün"
