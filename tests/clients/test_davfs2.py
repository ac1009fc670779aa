"""End to end with davfs2: a fresh collection of ``live_server`` mounted, on both engines.

Files are copied in (several sizes, a non-ASCII name, a sub-folder) and checked over HTTP with a
separate client (``http.client``), copied out, renamed, overwritten and deleted through the
mount. Before unmounting, davfs2's ``lost+found`` (where it keeps what it could not upload) must be
empty; the unmount itself must succeed (``umount`` waits until davfs2 has uploaded everything).

Mounting needs root, a usable ``/dev/fuse``, ``CAP_SYS_ADMIN``, FUSE in the kernel, and davfs2
(Debian package ``davfs2``; ``./dev test`` installs it as root). Where any of that is missing the
test skips with the reason, also under CI: many CI machines cannot mount at all.

The davfs2 configuration is the one in README.md: ``use_locks 1``, ``buf_size 64`` (without
it, davfs2 1.6.1 on recent kernels fails ``ls`` with EINVAL), ``ask_auth 0``, ``delay_upload 0``,
a private ``secrets`` file (mode 600) and cache folder.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import LiveServer, Response

MOUNT_TIMEOUT = 30.0  # seconds for mount.davfs to come up
UMOUNT_TIMEOUT = 30.0  # umount.davfs waits for the daemon to upload what is left
UPLOAD_TIMEOUT = 15.0  # how long a closed file may take to show up on the server
CAP_SYS_ADMIN = 21
PID_DIR = Path("/var/run/mount.davfs")
DAV = "{DAV:}"
OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


def find_mount_davfs() -> str | None:
    for candidate in (shutil.which("mount.davfs"), "/usr/sbin/mount.davfs", "/sbin/mount.davfs"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def cannot_mount() -> str | None:
    """Why this machine cannot mount davfs2 here, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root: mounting davfs2 (mount -t davfs) needs root"
    fuse = Path("/dev/fuse")
    try:
        if not stat.S_ISCHR(fuse.stat().st_mode):
            return "/dev/fuse is not a character device"
        os.close(os.open(fuse, os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse is not usable: {exc}"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    if not any(line.split()[-1:] == ["fuse"] for line in filesystems.splitlines()):
        return "the kernel does not offer the fuse file system (/proc/filesystems)"
    if not has_capability(CAP_SYS_ADMIN):
        return "no CAP_SYS_ADMIN in this process (e.g. a container without mount rights)"
    if find_mount_davfs() is None:
        return "mount.davfs is not installed (apt-get install davfs2; ./dev test does that as root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    try:
        grp.getgrnam("davfs2")
    except KeyError:
        return "there is no davfs2 group (the davfs2 package sets it up and runs its daemon as it)"
    return None


def has_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def conf_quote(value: str) -> str:
    """A value for davfs2.conf or secrets: quoted, with \\ and " escaped (davfs2.conf(5))."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 1 and decode_mount_field(fields[1]) == target:
                return True
    return False


def decode_mount_field(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m[1], 8)), field)


def daemon_pid(mountpoint: Path) -> int | None:
    """mount.davfs's pid, from the pid file it writes for this mount point."""
    pid_file = PID_DIR / (str(mountpoint).strip("/").replace("/", "-") + ".pid")
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def run(command: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit status or None on timeout, stdout + stderr); nothing is fed on stdin."""
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode("utf-8", "replace")
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def unmount(mountpoint: Path) -> list[str]:
    """Unmount, falling back to a lazy unmount; returns what went wrong (empty: all fine)."""
    problems: list[str] = []
    pid = daemon_pid(mountpoint)
    code, output = run(["umount", str(mountpoint)], UMOUNT_TIMEOUT)
    if code == 0 and not is_mounted(mountpoint):
        return problems
    problems.append(
        f"umount {mountpoint} "
        + (f"did not finish within {UMOUNT_TIMEOUT:.0f} s" if code is None else f"exited {code}")
        + f": {output.strip()}"
    )
    code, output = run(["umount", "-l", str(mountpoint)], UMOUNT_TIMEOUT)
    if code != 0:
        problems.append(f"umount -l exited {code}: {output.strip()}")
    if pid is not None:  # the daemon our mount started; a lazy unmount may leave it behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return problems


@contextlib.contextmanager
def davfs2_mount(url: str, user: str, password: str) -> Iterator[Path]:
    """Mount ``url`` with a private davfs2 configuration; always unmount afterwards.

    The daemon runs as the davfs2 user, so its cache folder is root:davfs2 0775 (like
    /var/cache/davfs2) inside a folder it can enter; the secrets file stays root's, mode 600.
    """
    work = Path(tempfile.mkdtemp(prefix="davserver-davfs2-"))
    work.chmod(0o755)
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    cache = work / "cache"
    cache.mkdir()
    os.chown(cache, 0, grp.getgrnam("davfs2").gr_gid)
    cache.chmod(0o775)
    secrets = work / "secrets"
    secrets.touch(mode=0o600)
    secrets.write_text(f"{conf_quote(url)} {conf_quote(user)} {conf_quote(password)}\n")
    conf = work / "davfs2.conf"
    conf.write_text(
        f"secrets {conf_quote(str(secrets))}\n"
        f"cache_dir {conf_quote(str(cache))}\n"
        "use_locks 1\n"
        "buf_size 64\n"
        "ask_auth 0\n"
        "delay_upload 0\n"
    )
    mounted = False
    try:
        code, output = run(
            ["mount", "-t", "davfs", "-o", f"conf={conf},uid=0,gid=0", url, str(mountpoint)],
            MOUNT_TIMEOUT,
        )
        mounted = is_mounted(mountpoint)
        if code != 0 or not mounted:
            raise AssertionError(
                f"mount -t davfs {url} {mountpoint} "
                + (f"timed out after {MOUNT_TIMEOUT:.0f} s" if code is None else f"exited {code}")
                + f" (mounted: {mounted}):\n{output}"
            )
        yield mountpoint
    except BaseException:
        if mounted:
            unmount(mountpoint)  # the test's own failure is the one to report
        raise
    else:
        problems = unmount(mountpoint) if mounted else []
        if problems:
            raise AssertionError("unmounting davfs2 failed:\n" + "\n".join(problems))
    finally:
        if not is_mounted(mountpoint):
            shutil.rmtree(work, ignore_errors=True)


# --- checks over HTTP, independent of the mount -----------------------------------------------


def wait_for(server: LiveServer, url: str, expected: bytes | None) -> None:
    """Wait until GET ``url`` gives ``expected`` (None: 404); davfs2 uploads after close()."""
    deadline = time.monotonic() + UPLOAD_TIMEOUT
    while True:
        response = server.request("GET", url)
        if expected is None and response.status == 404:
            return
        if expected is not None and response.status == 200 and response.body == expected:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(
        f"after {UPLOAD_TIMEOUT:.0f} s, GET {url} answers {response.status} with "
        f"{len(response.body)} bytes, "
        + ("expected 404" if expected is None else f"expected 200 with {len(expected)} bytes")
        + (" (other bytes)" if expected is not None and len(response.body) == len(expected) else "")
        + server.diagnostics()
    )


def wait_for_listing(directory: Path, expected: set[str]) -> None:
    """Wait until listing ``directory`` (through the mount) gives exactly ``expected``."""
    deadline = time.monotonic() + UPLOAD_TIMEOUT
    while True:
        names = {p.name for p in directory.iterdir()}
        if names == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert names == expected, f"listing {directory} through the mount"


def server_names(server: LiveServer, url: str) -> set[str]:
    """Member names of the collection ``url`` from PROPFIND Depth 1 (folders end in /)."""
    response: Response = server.request("PROPFIND", url, headers={"Depth": "1"})
    assert response.status == 207, f"PROPFIND {url}: {response.status} {response.body[:300]!r}"
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    names: set[str] = set()
    for element in ET.fromstring(response.body).iter(f"{DAV}href"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(element.text or "").path)
        if path != base:
            assert path.startswith(base), f"{path} is not inside {base}"
            names.add(path[len(base) :])
    return names


def active_locks(server: LiveServer, url: str) -> dict[str, int]:
    """{href: number of active locks} for ``url`` and its members, where there are any."""
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>'
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>'
    )
    response = server.request(
        "PROPFIND", url, body, {"Depth": "1", "Content-Type": "application/xml"}
    )
    assert response.status == 207, f"PROPFIND {url}: {response.status} {response.body[:300]!r}"
    locks: dict[str, int] = {}
    for element in ET.fromstring(response.body).iter(f"{DAV}response"):
        count = len(element.findall(f".//{DAV}lockdiscovery/{DAV}activelock"))
        if count:
            locks[element.findtext(f"{DAV}href") or "?"] = count
    return locks


def quote(name: str) -> str:
    return urllib.parse.quote(name)


def test_helpers() -> None:
    assert conf_quote('a b"c\\d') == '"a b\\"c\\\\d"'
    assert decode_mount_field("/tmp/a\\040b\\134c") == "/tmp/a b\\c"
    assert daemon_pid(Path("/nonexistent/mount point")) is None


# --- the test ---------------------------------------------------------------------------------

UNICODE_NAME = "ünïcødé Grüße 日本語 ✓.txt"


CANNOT_MOUNT = cannot_mount()  # checked before any server starts


@pytest.mark.skipif(
    CANNOT_MOUNT is not None, reason=f"davfs2 cannot mount on this machine: {CANNOT_MOUNT}"
)
def test_davfs2_mount_roundtrip(live_server: LiveServer, dav_dir: str, tmp_path: Path) -> None:
    files = {
        "empty.txt": b"",
        "one.bin": b"\x00",
        "small.txt": b"hello davfs2\n" * 77,
        "buffer-edge.bin": os.urandom(64 * 1024 + 1),  # one byte over buf_size
        "large.bin": os.urandom(3_000_000),
        UNICODE_NAME: "Grüße aus dem Dateisystem ✓\n".encode() * 100,
    }
    nested = os.urandom(10_000)
    local = tmp_path / "local"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)

    with davfs2_mount(dav_dir, live_server.user, live_server.password) as mnt:
        # Copy in: PUT (under a LOCK, as use_locks is on), MKCOL for the folder.
        for name in files:
            shutil.copyfile(local / name, mnt / name)
        (mnt / "sub").mkdir()
        (mnt / "sub" / "nested.bin").write_bytes(nested)
        os.sync()
        for name, data in files.items():
            wait_for(live_server, dav_dir + quote(name), data)
        wait_for(live_server, dav_dir + "sub/nested.bin", nested)
        assert server_names(live_server, dav_dir) == {*files, "sub/"}

        # Copy out: a file put on the server behind the mount's back, and the ones it wrote.
        # davfs2 looks names up in its directory cache (dir_refresh, 60 s) but re-reads a
        # directory from the server when it is opened (at most once per file_refresh, 1 s),
        # so list it, as `ls` would, until the new file shows.
        from_server = os.urandom(200_000)
        response = live_server.request("PUT", dav_dir + "from-server.bin", from_server)
        assert response.status == 201, response
        wait_for_listing(mnt, {*files, "sub", "from-server.bin", "lost+found"})
        shutil.copyfile(mnt / "from-server.bin", tmp_path / "from-server.bin")
        assert (tmp_path / "from-server.bin").read_bytes() == from_server
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data, name

        # Rename a file (to a non-ASCII name) and a folder: MOVE.
        renamed = "renamed ✓.txt"
        (mnt / "small.txt").rename(mnt / renamed)
        (mnt / "sub").rename(mnt / "sub moved")
        wait_for(live_server, dav_dir + quote(renamed), files["small.txt"])
        wait_for(live_server, dav_dir + "small.txt", None)
        wait_for(live_server, dav_dir + quote("sub moved/nested.bin"), nested)
        wait_for(live_server, dav_dir + "sub/nested.bin", None)

        # Overwrite in place, shorter and then from a file copied over it.
        shorter = os.urandom(12_345)
        with open(mnt / "large.bin", "wb") as fh:
            fh.write(shorter)
        wait_for(live_server, dav_dir + "large.bin", shorter)
        replacement = "ersetzt ✓\n".encode()
        (local / "replacement").write_bytes(replacement)
        shutil.copyfile(local / "replacement", mnt / UNICODE_NAME)
        wait_for(live_server, dav_dir + quote(UNICODE_NAME), replacement)
        assert (mnt / "large.bin").read_bytes() == shorter

        # Delete a file and a folder with its content.
        (mnt / "one.bin").unlink()
        shutil.rmtree(mnt / "sub moved")
        wait_for(live_server, dav_dir + "one.bin", None)
        wait_for(live_server, dav_dir + quote("sub moved/nested.bin"), None)
        wait_for(live_server, dav_dir + quote("sub moved/"), None)

        os.sync()
        lost = mnt / "lost+found"
        assert lost.is_dir(), "davfs2 shows no lost+found folder in the mount"
        left = sorted(p.name for p in lost.iterdir())
        assert left == [], f"davfs2 could not upload these and kept them in lost+found: {left}"

    expected = {
        "empty.txt": b"",
        renamed: files["small.txt"],
        "buffer-edge.bin": files["buffer-edge.bin"],
        "large.bin": shorter,
        UNICODE_NAME: replacement,
        "from-server.bin": from_server,
    }
    assert server_names(live_server, dav_dir) == set(expected)
    assert active_locks(live_server, dav_dir) == {}, "davfs2 left locks behind after unmounting"
    for name, data in expected.items():
        wait_for(live_server, dav_dir + quote(name), data)


@pytest.mark.skipif(
    CANNOT_MOUNT is not None, reason=f"davfs2 cannot mount on this machine: {CANNOT_MOUNT}"
)
def test_davfs2_moves_between_spaces(live_server: LiveServer) -> None:
    """With the whole namespace mounted (``/``), ``mv`` from ``files/`` into a group's folder is
    a rename inside one mount, which davfs2 sends as MOVE; the server refused it (403), and
    ``mv`` failed with "Input/output error". It moves now, folder and file."""
    team = f"team-{uuid.uuid4().hex[:8]}"
    live_server.cli("group", "create", team)
    live_server.cli("group", "add", team, live_server.user)
    folder = live_server.fresh_dir("cross")
    name = urllib.parse.unquote(folder.rstrip("/").rsplit("/", 1)[1])
    data = os.urandom(50_000)
    assert live_server.request("PUT", folder + "inside.bin", data).status == 201
    assert live_server.request("PUT", folder + "alone.txt", b"alone").status == 201
    groups = f"{live_server.url}/groups/{team}/"

    with davfs2_mount(live_server.url + "/", live_server.user, live_server.password) as mnt:
        (mnt / "files" / name / "alone.txt").rename(mnt / "groups" / team / "alone.txt")
        (mnt / "files" / name).rename(mnt / "groups" / team / name)
        assert (mnt / "groups" / team / name / "inside.bin").read_bytes() == data

    wait_for(live_server, groups + "alone.txt", b"alone")
    wait_for(live_server, groups + f"{quote(name)}/inside.bin", data)
    wait_for(live_server, folder + "inside.bin", None)
    assert live_server.request("PROPFIND", folder, headers={"Depth": "0"}).status == 404
