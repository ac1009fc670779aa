"""The litmus WebDAV compliance suites (basic, copymove, props, locks, http) on both engines.

Each suite runs against ``live_server`` (a real ``davserver serve`` process) in its own fresh
collection; litmus creates ``litmus/`` inside it. A suite passes only when litmus printed its
summary line with 0 failed; otherwise the FAIL and WARNING lines, the end of litmus's output and
what the server logged meanwhile go into the assertion message.

Needs the ``litmus`` binary (Debian/Ubuntu package ``litmus``): without it the tests skip, unless
the environment variable CI is set, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import LiveServer, tail

SUITES = ["basic", "copymove", "props", "locks", "http"]
LITMUS = shutil.which("litmus") or "/usr/bin/litmus"
HAVE_LITMUS = os.access(LITMUS, os.X_OK)
LITMUS_TIMEOUT = 240  # seconds per suite; a hang is reported as a failure

SUMMARY_RE = re.compile(
    r"<- summary for `(?P<suite>[^']+)': of (?P<run>\d+) tests run: "
    r"(?P<passed>\d+) passed, (?P<failed>\d+) failed"
)

FAIL_RE = re.compile(r"\bFAIL")  # FAIL (...), FAILED - segmentation fault; not XFAIL
# What ends a multi-line FAIL message: the next test, a summary or note, or litmus's epilogue.
NEW_ITEM_RE = re.compile(r"\s*(\d+\.\s|<-|->|See debug\.log)")


@dataclass
class LitmusResult:
    suite: str | None = None
    run: int = 0
    passed: int = 0
    failed: int = 0
    fail_lines: list[str] = field(default_factory=list)
    warning_lines: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def has_summary(self) -> bool:
        return self.suite is not None


def parse_litmus(output: str) -> LitmusResult:
    """Read litmus's stdout: progress redraws (``\\r``) collapsed to what a terminal shows."""
    result = LitmusResult()
    in_failure = False  # a FAIL message may go on over further lines
    for raw in output.split("\n"):
        segments = [s for s in raw.split("\r") if s.strip()]
        line = segments[-1].rstrip() if segments else ""
        if not line:
            continue
        result.lines.append(line)
        match = SUMMARY_RE.search(line)
        if in_failure and not match and not NEW_ITEM_RE.match(line):
            result.fail_lines[-1] += "\n    " + line.strip()
            continue
        in_failure = False
        if match:
            result.suite = match["suite"]
            result.run = int(match["run"])
            result.passed = int(match["passed"])
            result.failed = int(match["failed"])
        elif FAIL_RE.search(line):
            result.fail_lines.append(line.strip())
            in_failure = True
        elif "WARNING" in line:
            result.warning_lines.append(line.strip())
    return result


def test_parse_litmus() -> None:
    output = (
        "-> running `copymove':\n"
        "\r 0. init.................. \r 0. init.................. pass\n"
        "\r 4. copy_overwrite........ \r 4. copy_overwrite........ FAIL (COPY-on-existing "
        "with 'Overwrite: F' MUST fail with 412 (RFC4918:10.6): 204 No Content)\n"
        "\r 5. copy_nodestcoll.......  WARNING: COPY to non-existant collection gave '404'\n"
        "\r ...................... pass (with 1 warning)\n"
        "<- summary for `copymove': of 13 tests run: 12 passed, 1 failed. 92.3%\n"
        "-> 1 warning was issued.\n"
    )
    result = parse_litmus(output)
    assert (result.suite, result.run, result.passed, result.failed) == ("copymove", 13, 12, 1)
    assert result.fail_lines == [
        "4. copy_overwrite........ FAIL (COPY-on-existing with 'Overwrite: F' MUST fail with 412 "
        "(RFC4918:10.6): 204 No Content)"
    ]
    assert result.warning_lines == [
        "5. copy_nodestcoll.......  WARNING: COPY to non-existant collection gave '404'"
    ]
    two_lines = parse_litmus(
        " 1. begin................. FAIL (Could not create `/x/litmus/': rejected\n"
        "Server must allow `MKCOL /x/litmus/' for tests to proceed)\n"
        "<- summary for `locks': of 2 tests run: 1 passed, 1 failed. 50.0%\n"
        "See debug.log for network/debug traces.\n"
    )
    assert two_lines.fail_lines == [
        "1. begin................. FAIL (Could not create `/x/litmus/': rejected\n"
        "    Server must allow `MKCOL /x/litmus/' for tests to proceed)"
    ]
    assert parse_litmus(" 3. lock_excl............ XFAIL\n").fail_lines == []
    assert not parse_litmus("Could not connect\n").has_summary


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_LITMUS and not os.environ.get("CI"),
    reason=f"litmus is not installed at {LITMUS} (apt-get install litmus; ./dev test does that)",
)
@pytest.mark.parametrize("suite", SUITES)
def test_litmus(suite: str, live_server: LiveServer, tmp_path: Path) -> None:
    check_litmus(suite, live_server, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_LITMUS and not os.environ.get("CI"),
    reason=f"litmus is not installed at {LITMUS} (apt-get install litmus; ./dev test does that)",
)
@pytest.mark.parametrize("suite", ["basic", "copymove", "http"])
def test_litmus_with_blobs_in_s3(suite: str, s3_live_server: LiveServer, tmp_path: Path) -> None:
    """The suites that move bytes, against a server whose blobs are in an S3 store."""
    check_litmus(suite, s3_live_server, tmp_path)


def check_litmus(suite: str, live_server: LiveServer, tmp_path: Path) -> None:
    """Run litmus's ``suite`` in a fresh folder of ``live_server``; fail with its FAIL and
    WARNING lines, its output and the server's log unless every test passed."""
    if not HAVE_LITMUS:
        pytest.fail(
            f"CI is set, so litmus must run, but {LITMUS} is missing (apt-get install litmus)"
        )
    base = live_server.fresh_dir(f"litmus-{suite}")
    log_start = live_server.stderr_size()
    env = dict(os.environ, TESTS=suite)
    # "--": the test servers' random passwords may start with "-", which litmus would take for
    # an option (it then prints its usage and runs nothing: all five suites of a server fail).
    command = [LITMUS, "--", base, live_server.user, live_server.password]
    try:
        # litmus writes debug.log (every request and response) into its cwd.
        proc = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LITMUS_TIMEOUT,
            check=False,
        )
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, code = exc.stdout or b"", exc.stderr or b"", None
        timed_out = True
    output = stdout.decode("utf-8", "replace")
    result = parse_litmus(output)

    problems: list[str] = []
    if timed_out:
        problems.append(f"litmus did not finish within {LITMUS_TIMEOUT} s")
    if not result.has_summary:
        problems.append("litmus printed no summary line")
    elif result.suite != suite:
        problems.append(f"the summary is for suite {result.suite!r}, not {suite!r}")
    elif result.failed:
        problems.append(f"{result.failed} of {result.run} tests failed ({result.passed} passed)")
    if code not in (0, None) and not problems:
        problems.append(f"litmus exited with status {code} although its summary shows no failure")
    if not problems:
        return

    parts = [f"litmus {suite} on {live_server.engine} at {base}: " + "; ".join(problems)]
    if result.fail_lines:
        parts.append("FAIL lines:\n  " + "\n  ".join(result.fail_lines))
    if result.warning_lines:
        parts.append("WARNING lines:\n  " + "\n  ".join(result.warning_lines))
    if not result.fail_lines:
        parts.append("litmus output (tail):\n" + tail("\n".join(result.lines), 30))
    if stderr.strip():
        parts.append("litmus stderr:\n" + tail(stderr.decode("utf-8", "replace"), 20))
    server_log = live_server.stderr_text(log_start)
    if server_log.strip():
        parts.append("server stderr during the run (tail):\n" + tail(server_log, 40))
    parts.append(f"request/response trace: {tmp_path / 'debug.log'}")
    pytest.fail("\n\n".join(parts), pytrace=False)
