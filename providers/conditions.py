"""HTTP preconditions (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since) as
RFC 9110 section 13 evaluates them, on the resource a request names.

WsgiDAV 4.4 gets four cases wrong, each of which a client relies on to not lose a write or to
not transfer a file again:

* ``If-Match: *`` on a resource that does not exist succeeds (a PUT or MKCOL creates it); it
  must fail with 412.
* ``If-Match: W/"tag"`` matches (it strips ``W/``); If-Match compares strongly, so a weak tag
  never matches.
* ``If-Modified-Since`` equal to Last-Modified answers 200; not modified since means 304.
  And its 304 had no ETag, which RFC 9110 requires.
* It applies the request's If-Match and friends to every resource it touches: the
  destination of a COPY or MOVE and the members of a folder being deleted, whose tags the
  client never saw. They apply to the resource the request names only.

A file's Last-Modified is the client's time (X-OC-Mtime), which a new version may set back,
so a date is "unmodified since" only when the server changed nothing after it either
(``_unchanged``). The ``If`` header (lock tokens and tags per RFC 4918) is evaluated by
WsgiDAV, once ``check_if_header`` has found it well-formed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_NOT_MODIFIED,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)

_wsgidav_parse_time_string = util.parse_time_string


def parse_http_date(text: str) -> int | None:
    """Seconds since 1970 of an HTTP date; None when it is not one, and a condition on it is
    then ignored (RFC 9110 13.1.3). WsgiDAV's parser raised ValueError on a well-formed date
    past the year 9999, OverflowError on a longer year: a 500 for any method with such an
    If-Modified-Since. It is replaced here by this one, for WsgiDAV's own callers too."""
    try:
        seconds = _wsgidav_parse_time_string(text)
    except (ValueError, OverflowError):
        return None
    return None if seconds is None else int(seconds)


util.parse_time_string = parse_http_date

# One token of an If header (RFC 4918 10.4.2): a URL in angle brackets (a resource tag, or a
# state token such as a lock token), an entity tag in brackets, a parenthesis, or "Not".
# Whitespace is HTTP's (space and tab, RFC 9110 5.6.3): a header is read as latin-1, where the
# bytes 0x85 and 0xA0 of a URL's raw UTF-8 (à, Å, Cyrillic Er) are whitespace to Python.
_IF_TOKEN = re.compile(
    r"""[ \t]*(?:
        <(?P<url>[^<>\x00-\x20\x7f]*)>
      | \[(?P<etag>(?:W/)?"[^"]*")\]
      | (?P<open>\()
      | (?P<close>\))
      | (?P<not>not)(?=[ \t<\[])
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# The start of a condition, up to where a header was cut off: part of a URL, of an entity
# tag, or of "Not".
_CUT_OFF = re.compile(
    r'[ \t]*(?:<[^<>\x00-\x20\x7f]*|\[(?:W/?)?(?:"[^"]*"?)?|n(?:ot?)?)?', re.IGNORECASE
)
# A condition that never holds: an entity tag no resource has (WsgiDAV compares it with the
# resource's tag, or with "[]" where there is none).
_NEVER = '[""]'


def check_if_header(environ: dict[str, Any]) -> None:
    """Refuse an If header that is not one (400), and hand a good one to WsgiDAV spelt so
    that it reads it: one space between tokens.

    Its conditions must all hold for a request to go ahead (RFC 4918 10.4), so one that
    cannot be read cannot be skipped: WsgiDAV evaluated what its patterns found and dropped
    the rest, so ``If: garbage`` let a PUT go ahead, ``If: (["stale"]`` (unclosed) too,
    overwriting the file it was meant to guard, and a tag that was no URL was a 500. And it
    split a list at whitespace only: ``(Not<DAV:no-lock>)`` failed.

    A header cut off inside its last list is read as far as it goes, the list closed there:
    litmus cuts its complex conditions at 199 bytes, which this server's lock tokens and
    entity tags overrun. A condition cut off in the middle (or a list left with none) never
    holds (``_NEVER``), so the cut can make a request fail, never let it through.
    """
    header = environ.get("HTTP_IF")
    if header is None:
        return
    tokens: list[str] = []
    in_list = negated = tagged = False
    conditions = lists = 0
    text, pos = header.strip(" \t"), 0
    while found := _IF_TOKEN.match(text, pos):
        url, etag = found["url"], found["etag"]
        if not in_list and url is not None and not tagged and _is_reference(url):
            tagged = True  # a resource tag, which one or more lists must follow
        elif not in_list and found["open"]:
            in_list, negated, conditions = True, False, 0
        elif in_list and found["not"] and not negated:
            negated = True
        elif in_list and (etag is not None or (url is not None and _SCHEME.match(url))):
            negated, conditions = False, conditions + 1
        elif in_list and found["close"] and conditions and not negated:
            in_list, tagged, lists = False, False, lists + 1
        else:
            break
        tokens.append(found[0].strip(" \t"))
        pos = found.end()
    rest = text[pos:]
    if in_list and _CUT_OFF.fullmatch(rest):
        if negated:
            tokens.pop()  # "Not" before nothing
        if rest or negated or not conditions:
            tokens.append(_NEVER)
        tokens.append(")")
        in_list, tagged, lists, rest = False, False, lists + 1, ""
    if rest or not lists or in_list or tagged:
        raise DAVError(HTTP_BAD_REQUEST, context_info=f"The If header is malformed: {header[:200]}")
    environ["HTTP_IF"] = " ".join(tokens)


def _is_reference(url: str) -> bool:
    """A resource tag's URL: absolute, or an absolute path (RFC 4918 10.4.2, Simple-ref)."""
    if not (url.startswith("/") or _SCHEME.match(url)):
        return False
    try:
        urlsplit(url)
    except ValueError:  # "http://[::1" and the like
        return False
    return True


STANDARD_HEADERS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)


def has_preconditions(environ: dict[str, Any]) -> bool:
    return any(name in environ for name in STANDARD_HEADERS)


def check(res: Any, environ: dict[str, Any]) -> None:
    """Raise 412 (or 304 for GET and HEAD) when a precondition on ``res`` fails; ``res`` is
    None when nothing is at the request's URL."""
    etag = _etag_of(res)
    modified = _last_modified_of(res)
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None:
        if not matches_etag(if_match, res, etag, weak=False):
            raise DAVError(HTTP_PRECONDITION_FAILED, context_info="If-Match failed")
    else:
        since = _date(environ.get("HTTP_IF_UNMODIFIED_SINCE"))
        if since is not None and modified is not None and not _unchanged(res, modified, since):
            raise DAVError(HTTP_PRECONDITION_FAILED, context_info="If-Unmodified-Since failed")
    reading = environ.get("REQUEST_METHOD") in ("GET", "HEAD")
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if matches_etag(if_none_match, res, etag, weak=True):
            if reading:
                raise _not_modified(res, environ, etag)
            raise DAVError(HTTP_PRECONDITION_FAILED, context_info="If-None-Match failed")
    elif reading:
        since = _date(environ.get("HTTP_IF_MODIFIED_SINCE"))
        # A date later than the server's clock is invalid (RFC 7232 3.3; Apache ignores it):
        # a file's client time may be in the future, and a client echoing it got a 304 for
        # bytes changed since (Last-Modified is never sent so, see ``sent_last_modified``).
        if since is not None and since > time.time():
            since = None
        if since is not None and modified is not None and _unchanged(res, modified, since):
            raise _not_modified(res, environ, etag)


def sent_last_modified(response_headers: list[tuple[str, str]]) -> None:
    """Last-Modified as a GET or HEAD sends it: never later than the answer's Date (RFC 9110
    8.8.2.1: a time in the future, a client's X-OC-Mtime, becomes the time of the answer).
    PROPFIND's getlastmodified keeps the client's time, which sync clients compare."""
    now = time.time()
    for i, (name, value) in enumerate(response_headers):
        if name.lower() == "last-modified":
            sent = parse_http_date(value)
            if sent is not None and sent > now:
                response_headers[i] = (name, util.get_rfc1123_time(now))


def _unchanged(res: Any, modified: int, since: int) -> bool:
    """Whether ``res`` is unchanged since the date ``since``: its Last-Modified is that very
    date (a client sending back the one it was given), or neither it nor the time the
    server last changed the resource is later.

    A file's Last-Modified is the client's time (X-OC-Mtime), which goes back when a sync
    writes an older copy over it: by Last-Modified alone, a cache asking If-Modified-Since
    the date it saw got 304 for the new bytes, and a PUT If-Unmodified-Since that date
    overwrote them."""
    if modified == since:
        return True
    changed = getattr(res, "get_last_changed", None)
    changed_at = None if changed is None else changed()
    if since < modified:
        return _unchanged_by_the_server(changed_at, since)
    return modified <= since and (changed_at is None or int(changed_at) <= since)


def _unchanged_by_the_server(changed_at: float | None, since: int) -> bool:
    """For a date earlier than the resource's Last-Modified: a client time that was in the
    future when a client was answered reached it as the time of that answer
    (``sent_last_modified``), and stays earlier once the clock has passed it; so what counts
    is whether the server changed the resource since. Only a change in an earlier second than
    ``since`` is surely before it (a change in that very second may have followed the
    answer). Any other earlier date fails here as by Last-Modified: the server's change
    came after it."""
    return changed_at is not None and int(changed_at) < since


def _not_modified(res: Any, environ: dict[str, Any], etag: str | None) -> DAVError:
    """A 304, with the ETag and Cache-Control a 200 would carry (RFC 9110 15.4.5)."""
    headers = [] if etag is None else [("ETag", f'"{etag}"')]
    if res is not None:
        answered: list[tuple[str, str]] = []
        res.finalize_headers(environ, answered)
        headers += [(k, v) for k, v in answered if k.lower() == "cache-control"]
    return DAVError(HTTP_NOT_MODIFIED, add_headers=headers)


@contextmanager
def hidden(environ: dict[str, Any]) -> Iterator[None]:
    """Inside the block the request has none of the headers ``check`` evaluates."""
    saved = {name: environ.pop(name) for name in STANDARD_HEADERS if name in environ}
    try:
        yield
    finally:
        environ.update(saved)


def matches_etag(header: str, res: Any, etag: str | None, *, weak: bool) -> bool:
    """Whether ``header`` (an If-Match or If-None-Match: ``*`` or a list of entity tags)
    matches the resource ``res`` (None: there is none): ``*`` any that exists; a tag its
    entity tag ``etag``, compared weakly (``W/`` ignored) or strongly (a weak
    tag never matches)."""
    if header.strip() == "*":
        return res is not None
    if etag is None:
        return False
    for item in header.split(","):
        tag = item.strip()
        is_weak = tag.startswith("W/")
        if is_weak:
            if not weak:
                continue
            tag = tag[2:]
        if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2:
            tag = tag[1:-1]
        if tag == etag:
            return True
    return False


def _etag_of(res: Any) -> str | None:
    if res is None or not res.support_etag():
        return None
    etag: str | None = res.get_etag()
    return etag


def _last_modified_of(res: Any) -> int | None:
    """Whole seconds, as the Last-Modified header says it."""
    if res is None or not res.support_modified():
        return None
    modified = res.get_last_modified()
    return None if modified is None else int(modified)


def _date(value: str | None) -> int | None:
    """An HTTP date as epoch seconds; None when absent or not a date (the header is then
    ignored, as RFC 9110 asks)."""
    if not value:
        return None
    return parse_http_date(value)


def served_range(
    environ: dict[str, Any],
    etag: str,
    last_modified: float | None,
    last_changed: float | None = None,
) -> str | None:
    """The Range header of a GET when WsgiDAV honours it, else None: it sends the whole
    entity instead when an If-Range names another ETag or time (a download resumed after the
    bytes changed).

    A date matches only as a strong validator (RFC 9110 13.1.5): Last-Modified to the second,
    with the server's last change (``last_changed``) in an earlier second. A file's
    Last-Modified is the client's time (X-OC-Mtime), which a new version can carry again
    unchanged; resuming by it joined the head of the old bytes to the tail of the new. And a
    change in the very second of the date may have followed an answer that carried the same
    date (two uploads, or two pins of a package, within one second): RFC 9110 counts a date
    strong only in an answer sent a second after it, which the server cannot know of. So a
    date resumes only bytes that were already there a second before it; an ETag always.
    """
    byte_range: str | None = environ.get("HTTP_RANGE")
    if_range = environ.get("HTTP_IF_RANGE")
    if byte_range is None or if_range is None:
        return byte_range
    seconds = parse_http_date(if_range)
    if seconds:
        if last_modified is not None and seconds < int(last_modified):
            strong = _unchanged_by_the_server(last_changed, seconds)  # perhaps an answer's
        else:
            strong = last_modified is not None and int(last_modified) == seconds
            strong = strong and _unchanged_by_the_server(last_changed, seconds)
        return byte_range if strong else None
    return byte_range if if_range.strip('" ') == etag else None
