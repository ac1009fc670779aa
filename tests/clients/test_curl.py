"""End to end with the real ``curl`` binary against a real server process, on both engines.

Every request is one ``curl -sS -o BODY -D HEADERS -w '%{http_code}'`` run; the status, the
final header block (after any ``100 Continue``) and the body are read back from those files.
``-v`` is on as well, so a test can check what curl actually sent (``Content-Length`` or
``Transfer-Encoding: chunked``) and not only what the server answered. Each test works in its own
fresh collection (``dav_dir``) on ``live_server``. The commands are those of README.md.

Needs the ``curl`` binary: without it the tests skip, unless the environment variable CI is set,
where they fail.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import LiveServer, tail

CURL = shutil.which("curl") or "/usr/bin/curl"
HAVE_CURL = os.access(CURL, os.X_OK)
CURL_TIMEOUT = 60  # seconds per request
AUTH_LINE_RE = re.compile(r"(?im)^(> Authorization:).*$")  # kept out of messages

DAV = "{DAV:}"
TEST_NS = "urn:davserver-test:"

pytestmark = pytest.mark.skipif(
    not HAVE_CURL and not os.environ.get("CI"),
    reason=f"curl is not installed at {CURL} (apt-get install curl; ./dev test does that)",
)


@dataclass(frozen=True)
class CurlResult:
    command: list[str]
    status: int
    headers: dict[str, list[str]]  # lower-case name -> values, of the final response only
    body: bytes
    sent: list[str]  # request header lines as curl sent them (from -v), without the "> "
    stderr: str

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def describe(self) -> str:
        """Everything about the exchange, for assertion messages."""
        return (
            f"\n$ {shown(self.command)}\nstatus {self.status}\nsent: {self.sent}\n"
            f"headers: {self.headers}\nbody: {self.body[:1000]!r}\n"
            f"curl stderr (tail):\n{tail(self.stderr, 15)}"
        )


def shown(command: Sequence[str]) -> str:
    """The command line for a message, without the password."""
    words = list(command)
    for i, word in enumerate(words[:-1]):
        if word == "-u":
            words[i + 1] = words[i + 1].split(":", 1)[0] + ":***"
    return " ".join(words)


def parse_header_file(text: str) -> tuple[int, dict[str, list[str]]]:
    """The status and headers of the last response in a ``curl -D`` file.

    ``-D`` writes every response curl saw, interim ``100 Continue`` ones included, each as a
    status line, header lines and an empty line.
    """
    blocks: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("HTTP/"):
            blocks.append([line])
        elif line.strip() and blocks:
            blocks[-1].append(line)
    if not blocks:
        raise AssertionError(f"no HTTP status line in curl's header file: {text!r}")
    status_line, *lines = blocks[-1]
    status = int(status_line.split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers


def test_parse_header_file() -> None:
    text = (
        "HTTP/1.1 100 Continue\r\n\r\n"
        'HTTP/1.1 201 Created\r\nETag: "abc"\r\nX-A: 1\r\nx-a: 2\r\n\r\n'
    )
    status, headers = parse_header_file(text)
    assert status == 201
    assert headers == {"etag": ['"abc"'], "x-a": ["1", "2"]}
    assert parse_header_file("HTTP/1.1 304 Not Modified\r\n\r\n") == (304, {})
    with pytest.raises(AssertionError):
        parse_header_file("")


class Curl:
    """Runs curl as the server's test user; every call gets its own output files."""

    def __init__(self, server: LiveServer, work_dir: Path) -> None:
        self.server = server
        self.work_dir = work_dir
        self._counter = itertools.count()

    def __call__(
        self,
        method: str,
        url: str,
        *args: str,
        stdin: bytes | None = None,
    ) -> CurlResult:
        n = next(self._counter)
        body_path = self.work_dir / f"curl-{n}.body"
        headers_path = self.work_dir / f"curl-{n}.headers"
        command = [
            CURL,
            "-sS",
            "-v",
            "--globoff",
            "--max-time",
            str(CURL_TIMEOUT),
            "-u",
            f"{self.server.user}:{self.server.password}",
            "-o",
            str(body_path),
            "-D",
            str(headers_path),
            "-w",
            "%{http_code}",
        ]
        if method not in ("GET", "PUT"):  # -T means PUT, plain means GET
            command += ["-X", method]
        command += [*args, url]
        proc = subprocess.run(
            command,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=CURL_TIMEOUT + 10,
            check=False,
            cwd=self.work_dir,
        )
        stderr = AUTH_LINE_RE.sub(r"\1 ***", proc.stderr.decode("utf-8", "replace"))
        if proc.returncode != 0:
            raise AssertionError(
                f"curl exited with status {proc.returncode}: {shown(command)}\n"
                f"{tail(stderr, 20)}" + self.server.diagnostics()
            )
        status, headers = parse_header_file(
            headers_path.read_text("iso-8859-1") if headers_path.exists() else ""
        )
        written = proc.stdout.decode("ascii", "replace").strip()
        if written != str(status):
            raise AssertionError(f"-w said {written!r}, the header file {status}: {command}")
        body = body_path.read_bytes() if body_path.exists() else b""
        sent = [line[2:] for line in stderr.splitlines() if line.startswith("> ")]
        return CurlResult(command, status, headers, body, sent, stderr)

    def put_file(self, url: str, data: bytes, *args: str) -> CurlResult:
        """``curl -T FILE URL``: a PUT with Content-Length."""
        source = self.work_dir / f"upload-{next(self._counter)}.bin"
        source.write_bytes(data)
        return self("PUT", url, "-T", str(source), *args)

    def get(self, url: str, *args: str) -> CurlResult:
        return self("GET", url, *args)


@pytest.fixture
def curl(live_server: LiveServer, tmp_path: Path) -> Curl:
    if not HAVE_CURL:
        pytest.fail(f"CI is set, so the curl tests must run, but {CURL} is missing")
    return Curl(live_server, tmp_path)


def quote(name: str) -> str:
    return urllib.parse.quote(name)


def sent_header(result: CurlResult, name: str) -> str | None:
    prefix = name.lower() + ":"
    for line in result.sent:
        if line.lower().startswith(prefix):
            return line.split(":", 1)[1].strip()
    return None


def expect(result: CurlResult, status: int | Sequence[int]) -> None:
    wanted = (status,) if isinstance(status, int) else tuple(status)
    if result.status not in wanted:
        raise AssertionError(f"expected status {' or '.join(map(str, wanted))}" + result.describe())


def server_bytes(server: LiveServer, url: str) -> bytes:
    """The resource's bytes fetched with http.client, independently of curl."""
    response = server.request("GET", url)
    assert response.status == 200, f"GET {url} answered {response.status}" + server.diagnostics()
    return response.body


def xml_of(result: CurlResult) -> ET.Element:
    try:
        return ET.fromstring(result.body)
    except ET.ParseError as exc:
        raise AssertionError(f"the body is not XML ({exc})" + result.describe()) from None


def multistatus(result: CurlResult) -> dict[str, ET.Element]:
    """``{unquoted href path: <D:response>}`` of a 207 answer."""
    expect(result, 207)
    root = xml_of(result)
    assert root.tag == f"{DAV}multistatus", result.describe()
    responses: dict[str, ET.Element] = {}
    for response in root.findall(f"{DAV}response"):
        href = response.findtext(f"{DAV}href")
        assert href, result.describe()
        path = urllib.parse.unquote(urllib.parse.urlsplit(href).path)
        assert path not in responses, f"{path} listed twice" + result.describe()
        responses[path] = response
    return responses


def prop_status(response: ET.Element, prop: str) -> tuple[int, ET.Element | None]:
    """(HTTP status of the propstat holding ``prop``, the property element) in one response."""
    for propstat in response.findall(f"{DAV}propstat"):
        element = propstat.find(f"{DAV}prop/{prop}")
        if element is not None:
            status_line = propstat.findtext(f"{DAV}status") or ""
            return int(status_line.split()[1]), element
    return 0, None


def url_path(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


# --- PUT --------------------------------------------------------------------------------------


def test_put_with_content_length(curl: Curl, live_server: LiveServer, dav_dir: str) -> None:
    # curl sends "Expect: 100-continue" with -T and waits for the interim answer first.
    data = os.urandom(1_500_000) + b"end"
    url = dav_dir + "sized.bin"

    created = curl.put_file(url, data)
    expect(created, 201)
    assert sent_header(created, "Content-Length") == str(len(data)), created.describe()
    assert sent_header(created, "Transfer-Encoding") is None, created.describe()
    assert server_bytes(live_server, url) == data

    replacement = os.urandom(2048)
    replaced = curl.put_file(url, replacement)
    expect(replaced, 204)
    assert server_bytes(live_server, url) == replacement


# No ("header", 0): curl 7.88 sends a 0-byte -T file with a "Transfer-Encoding: chunked" header
# but without the terminating 0-size chunk, so any server waits for the rest of the body.
@pytest.mark.parametrize(
    ("how", "size"),
    [("stdin", 0), ("stdin", 1), ("stdin", 300_001), ("header", 1), ("header", 300_001)],
)
def test_put_chunked(
    curl: Curl, live_server: LiveServer, dav_dir: str, how: str, size: int
) -> None:
    """``curl -T -`` (stdin: no length known) and ``-H 'Transfer-Encoding: chunked' -T FILE``."""
    data = os.urandom(size)
    url = dav_dir + f"chunked-{how}-{size}.bin"
    if how == "stdin":
        result = curl("PUT", url, "-T", "-", stdin=data)
    else:
        result = curl.put_file(url, data, "-H", "Transfer-Encoding: chunked")
    expect(result, 201)
    assert sent_header(result, "Transfer-Encoding") == "chunked", result.describe()
    assert sent_header(result, "Content-Length") is None, result.describe()
    assert server_bytes(live_server, url) == data


def test_put_with_data_binary_is_typed_by_its_name(
    curl: Curl, live_server: LiveServer, dav_dir: str
) -> None:
    """``curl -X PUT --data-binary @FILE`` labels every body as a form
    (``application/x-www-form-urlencoded``, curl's default for -d): the file was then served
    as a form, a PDF a browser could not open. That label is no file's type."""
    data = b"%PDF-1.4\n" + os.urandom(3000)
    (curl.work_dir / "report.pdf").write_bytes(data)
    url = dav_dir + "report.pdf"
    result = curl("PUT", url, "-X", "PUT", "--data-binary", "@report.pdf")
    expect(result, 201)
    assert sent_header(result, "Content-Type") == "application/x-www-form-urlencoded"
    assert server_bytes(live_server, url) == data
    fetched = curl.get(url)
    assert fetched.headers["content-type"] == ["application/pdf"], fetched.describe()


# --- GET ----------------------------------------------------------------------------------------


def test_get_range(curl: Curl, dav_dir: str) -> None:
    data = os.urandom(1000)
    url = dav_dir + "ranged.bin"
    expect(curl.put_file(url, data), 201)

    part = curl.get(url, "-r", "100-199")
    expect(part, 206)
    assert part.body == data[100:200], part.describe()
    assert part.header("Content-Range") == "bytes 100-199/1000", part.describe()
    assert part.header("Content-Length") == "100", part.describe()

    whole = curl.get(url)
    expect(whole, 200)
    assert whole.body == data
    assert whole.header("Content-Range") is None, whole.describe()


def test_conditional_get_with_etag(curl: Curl, dav_dir: str) -> None:
    url = dav_dir + "cached.txt"
    expect(curl.put_file(url, b"version one\n"), 201)

    first = curl.get(url)
    expect(first, 200)
    etag = first.header("ETag")
    assert etag, "GET answered without an ETag" + first.describe()

    unchanged = curl.get(url, "-H", f"If-None-Match: {etag}")
    expect(unchanged, 304)
    assert unchanged.body == b"", unchanged.describe()

    other = curl.get(url, "-H", 'If-None-Match: "not-the-etag"')
    expect(other, 200)
    assert other.body == b"version one\n"

    expect(curl.put_file(url, b"version two\n"), 204)
    changed = curl.get(url, "-H", f"If-None-Match: {etag}")
    expect(changed, 200)
    assert changed.body == b"version two\n"
    assert changed.header("ETag") not in (None, etag), changed.describe()


# --- collections, COPY, MOVE, DELETE ----------------------------------------------------------


def test_mkcol(curl: Curl, dav_dir: str) -> None:
    url = dav_dir + "sub/"
    expect(curl("MKCOL", url), 201)
    expect(curl("MKCOL", url), 405)  # it exists now
    expect(curl("MKCOL", dav_dir + "missing/child/"), 409)  # no parent

    found = multistatus(curl("PROPFIND", url, "-H", "Depth: 0"))
    assert list(found) == [url_path(url)]
    _, resourcetype = prop_status(found[url_path(url)], f"{DAV}resourcetype")
    assert resourcetype is not None and resourcetype.find(f"{DAV}collection") is not None


def test_copy_and_move_overwrite(curl: Curl, live_server: LiveServer, dav_dir: str) -> None:
    source, target = dav_dir + "source.txt", dav_dir + "target.txt"
    expect(curl.put_file(source, b"source bytes"), 201)
    expect(curl.put_file(target, b"target bytes"), 201)

    def copy_or_move(method: str, overwrite: str) -> CurlResult:
        return curl(method, source, "-H", f"Destination: {target}", "-H", f"Overwrite: {overwrite}")

    expect(copy_or_move("COPY", "F"), 412)
    assert server_bytes(live_server, target) == b"target bytes"
    expect(copy_or_move("COPY", "T"), 204)
    assert server_bytes(live_server, target) == b"source bytes"
    assert server_bytes(live_server, source) == b"source bytes"

    expect(curl.put_file(target, b"target again"), 204)
    expect(copy_or_move("MOVE", "F"), 412)
    assert server_bytes(live_server, source) == b"source bytes"
    assert server_bytes(live_server, target) == b"target again"
    expect(copy_or_move("MOVE", "T"), 204)
    assert server_bytes(live_server, target) == b"source bytes"
    expect(curl.get(source), 404)

    # Onto a free name: 201 Created, for both.
    fresh = dav_dir + quote("fresh copy ü.txt")
    expect(curl("COPY", target, "-H", f"Destination: {fresh}"), 201)
    assert server_bytes(live_server, fresh) == b"source bytes"
    expect(curl("MOVE", target, "-H", f"Destination: {dav_dir}moved.txt"), 201)
    expect(curl.get(target), 404)
    assert server_bytes(live_server, dav_dir + "moved.txt") == b"source bytes"


def test_delete(curl: Curl, dav_dir: str) -> None:
    url = dav_dir + "doomed.txt"
    expect(curl.put_file(url, b"bye"), 201)
    expect(curl.get(url), 200)
    expect(curl("DELETE", url), 204)
    expect(curl.get(url), 404)
    expect(curl("DELETE", url), 404)

    folder = dav_dir + "folder/"
    expect(curl("MKCOL", folder), 201)
    expect(curl.put_file(folder + "inside.txt", b"x"), 201)
    expect(curl("DELETE", folder), 204)
    expect(curl.get(folder + "inside.txt"), 404)
    expect(curl("PROPFIND", folder, "-H", "Depth: 0"), 404)


# --- PROPFIND, PROPPATCH ----------------------------------------------------------------------


def test_propfind_depth_1_lists_members(curl: Curl, dav_dir: str) -> None:
    files = {"a.txt": b"a", "with space.bin": b"12345", "ünïcødé ✓.txt": b""}
    for name, data in files.items():
        expect(curl.put_file(dav_dir + quote(name), data), 201)
    expect(curl("MKCOL", dav_dir + "sub/"), 201)
    expect(curl.put_file(dav_dir + "sub/deeper.txt", b"not listed at depth 1"), 201)

    found = multistatus(curl("PROPFIND", dav_dir, "-H", "Depth: 1"))
    base = url_path(dav_dir)
    expected = {base, base + "sub/", *(base + name for name in files)}
    assert set(found) == expected

    for name, data in files.items():
        status, length = prop_status(found[base + name], f"{DAV}getcontentlength")
        assert (status, length is not None and length.text) == (200, str(len(data))), name
        _, resourcetype = prop_status(found[base + name], f"{DAV}resourcetype")
        assert resourcetype is not None and resourcetype.find(f"{DAV}collection") is None
    _, resourcetype = prop_status(found[base + "sub/"], f"{DAV}resourcetype")
    assert resourcetype is not None and resourcetype.find(f"{DAV}collection") is not None


PROPPATCH_SET = """<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:davserver-test:">
  <D:set><D:prop><Z:colour>{value}</Z:colour></D:prop></D:set>
</D:propertyupdate>
"""
PROPPATCH_REMOVE = """<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:davserver-test:">
  <D:remove><D:prop><Z:colour/></D:prop></D:remove>
</D:propertyupdate>
"""
PROPFIND_COLOUR = """<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:Z="urn:davserver-test:"><D:prop><Z:colour/></D:prop></D:propfind>
"""
XML_TYPE = "Content-Type: application/xml; charset=utf-8"


def test_proppatch_dead_property(curl: Curl, dav_dir: str) -> None:
    url = dav_dir + "described.txt"
    expect(curl.put_file(url, b"content"), 201)
    colour = f"{{{TEST_NS}}}colour"

    def read_colour() -> tuple[int, str | None]:
        found = multistatus(
            curl(
                "PROPFIND", url, "-H", "Depth: 0", "-H", XML_TYPE, "--data-binary", PROPFIND_COLOUR
            )
        )
        status, element = prop_status(found[url_path(url)], colour)
        return status, element.text if element is not None else None

    value = "ünïcødé blue & <green>"
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    patched = curl(
        "PROPPATCH", url, "-H", XML_TYPE, "--data-binary", PROPPATCH_SET.format(value=escaped)
    )
    found = multistatus(patched)
    assert prop_status(found[url_path(url)], colour)[0] == 200, patched.describe()
    assert read_colour() == (200, value)

    removed = multistatus(curl("PROPPATCH", url, "-H", XML_TYPE, "--data-binary", PROPPATCH_REMOVE))
    assert prop_status(removed[url_path(url)], colour)[0] == 200
    assert read_colour() == (404, None)


# --- LOCK, UNLOCK -----------------------------------------------------------------------------

LOCK_BODY = """<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:">
  <D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>
  <D:owner><D:href>davserver curl test</D:href></D:owner>
</D:lockinfo>
"""
LOCK_TOKEN_RE = re.compile(r"^<([^<>\s]+)>$")


def test_lock_put_unlock(curl: Curl, live_server: LiveServer, dav_dir: str) -> None:
    url = dav_dir + "locked.txt"
    expect(curl.put_file(url, b"before"), 201)

    locked = curl(
        "LOCK", url, "-H", XML_TYPE, "-H", "Timeout: Second-600", "--data-binary", LOCK_BODY
    )
    expect(locked, 200)
    match = LOCK_TOKEN_RE.match(locked.header("Lock-Token") or "")
    assert match, "no Lock-Token: <...> header" + locked.describe()
    token = match[1]
    discovered = xml_of(locked).findtext(
        f"{DAV}lockdiscovery/{DAV}activelock/{DAV}locktoken/{DAV}href"
    )
    assert discovered == token, locked.describe()

    expect(curl.put_file(url, b"without the token"), 423)
    assert server_bytes(live_server, url) == b"before"

    with_token = curl.put_file(url, b"with the token", "-H", f"If: (<{token}>)")
    expect(with_token, (200, 201, 204))
    assert server_bytes(live_server, url) == b"with the token"

    expect(curl("UNLOCK", url, "-H", f"Lock-Token: <{token}>"), 204)
    expect(curl.put_file(url, b"after"), 204)
    assert server_bytes(live_server, url) == b"after"
