"""GET and HEAD on a folder: a plain HTML listing, so browsers and HEAD-probing clients work,
or the folder as a zip when asked for one (``wants_zip``, answered by ``providers.packages``).

WsgiDAV answers 403 there once its directory browser is off (it costs a lookup per request);
clients such as webdavclient3 probe folders with HEAD before every operation and give up on 403.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, quote

from wsgidav import util

from providers.resources import members_of


def wants_zip(environ: dict[str, Any]) -> bool:
    """``?zip`` (as dufs and curl users spell it) or ``Accept: application/zip`` (as
    Nextcloud's clients ask for a folder), unless with ``q=0`` (RFC 9110 12.4.2: not
    acceptable)."""
    if zip_in_query(environ):
        return True
    for kind in environ.get("HTTP_ACCEPT", "").split(","):
        media, *params = kind.split(";")
        if media.strip().lower() == "application/zip":
            return _quality(params) > 0
    return False


def zip_in_query(environ: dict[str, Any]) -> bool:
    """Whether the URL asks for a zip (``?zip``), which nothing but a folder can answer."""
    return "zip" in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def _quality(params: list[str]) -> float:
    """The ``q`` of one Accept entry's parameters (1 when absent, 0 when unreadable)."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def vary_on_accept(start_response: Any) -> Any:
    """``start_response`` that adds ``Vary: Accept``: a folder's GET answers a listing or a
    zip by that header, and a cache must not hand one to whoever asked for the other."""

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("Vary", "Accept")], exc_info)

    return start


def folder_listing(res: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answer GET/HEAD on collection ``res`` with 200 and an HTML index of its members. Links
    are absolute paths: asked without its trailing slash (``/files/a``), a relative link
    ``b.txt`` took a browser to ``/files/b.txt``."""
    title = html.escape(res.path)
    names = [environ.get("SCRIPT_NAME", "").strip("/"), res.path.strip("/")]
    here = "/" + "".join(f"{name}/" for name in names if name)  # "/" at the root
    rows = []
    if res.path not in ("", "/"):
        up = here.rstrip("/").rsplit("/", 1)[0] + "/"
        rows.append(f'<li><a href="{quote(up)}">../</a></li>')
    for member in members_of(res):
        name = member.name + ("/" if member.is_collection else "")
        size = "" if member.is_collection else f" ({member.get_content_length()} bytes)"
        link = quote(here + name)
        rows.append(f'<li><a href="{link}">{html.escape(name)}</a>{html.escape(size)}</li>')
    body = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n<ul>\n"
        + "\n".join(rows)
        + "\n</ul></body></html>\n"
    ).encode()
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Date", util.get_rfc1123_time()),
    ]
    start_response("200 OK", headers)
    return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]
