"""gc and fsck on both engines: what gc removes and keeps, what fsck finds.

gc racing an upload is in test_maintenance_race.py.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.blobstore import FileSystemBlobStore, storage_key_for
from davserver.db import Database
from davserver.db.types import utcnow
from davserver.errors import NotFound
from davserver.models import Blob, ImageVariant, LogEntry, Package
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.fsck import FsckService
from davserver.services.maintenance import MaintenanceService
from davserver.services.trash import TrashService
from davserver.services.tree import NodeView
from tests.blobs import (
    HOUR,
    OLD,
    backdate,
    blob_shas,
    loose_blob,
    orphan_file,
    path_of,
    put,
    sha,
    two_level_file,
)

# ------------------------------------------------------------------ what gc removes and keeps


@dataclass
class Scene:
    kept: list[bytes]  # blobs (row and file) that must survive
    garbage: bytes  # old and unreferenced: removed
    orphan: Path  # old file without a row: removed
    young_orphan: Path
    stray: Path  # not a blob name: never touched
    old_temp: Path
    young_temp: Path


@pytest.fixture
def scene(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    actor: Actor,
    home: NodeView,
) -> Scene:
    put(files, actor, home, "doc.txt", b"in a version")
    source = _blob_id(database, b"in a version")  # a variant lives while its source does
    variant = loose_blob(database, store, b"variant bytes")
    archive = loose_blob(database, store, b"package archive")
    loose_blob(database, store, b"young garbage", age=60)
    loose_blob(database, store, b"old garbage")
    with database.write() as session:
        session.execute(sa.update(Blob).values(created_at=utcnow() - dt.timedelta(seconds=OLD)))
        session.execute(
            sa.update(Blob)
            .where(Blob.sha256 == sha(b"young garbage"))
            .values(created_at=utcnow() - dt.timedelta(seconds=60))
        )
        session.add(thumbnail_row(source, variant, 13))
        session.add(Package(name="p", created_by=actor.user_id, archive_blob_id=archive))
    stray = store.root / "ab" / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not a blob")
    backdate(stray, OLD)
    old_temp = store.tmp_dir / "up-crashed"
    old_temp.write_bytes(b"half an upload")
    backdate(old_temp, OLD)
    young_temp = store.tmp_dir / "up-running"
    young_temp.write_bytes(b"an upload in progress")
    return Scene(
        kept=[
            b"in a version",
            b"variant bytes",
            b"package archive",
            b"young garbage",
        ],
        garbage=b"old garbage",
        orphan=orphan_file(store, b"orphan bytes"),
        young_orphan=orphan_file(store, b"young orphan", age=60),
        stray=stray,
        old_temp=old_temp,
        young_temp=young_temp,
    )


def _blob_id(database: Database, data: bytes) -> Any:
    with database.read() as session:
        return session.scalars(sa.select(Blob.id).where(Blob.sha256 == sha(data))).one()


def thumbnail_row(source_blob_id: uuid.UUID, blob_id: uuid.UUID, size: int) -> ImageVariant:
    """A 64 px JPEG thumbnail's row, of the bytes ``source_blob_id``, stored as ``blob_id``."""
    return ImageVariant(
        source_blob_id=source_blob_id,
        variant_type="thumbnail",
        max_size=64,
        quality_level=80,
        format="jpeg",
        blob_id=blob_id,
        width=1,
        height=1,
        size_bytes=size,
    )


def test_gc_removes_exactly_what_is_old_and_unreferenced(
    scene: Scene, maintenance: MaintenanceService, store: FileSystemBlobStore, database: Database
) -> None:
    report = maintenance.collect_garbage(grace=HOUR)

    assert (report.blobs_removed, report.bytes_removed) == (1, len(scene.garbage))
    assert (report.orphan_files_removed, report.orphan_bytes_removed) == (1, 12)
    assert (report.temp_files_removed, report.temp_bytes_removed) == (1, 14)
    assert report.errors == [] and report.blobs_without_file == 0
    assert blob_shas(database) == {sha(data) for data in scene.kept}
    for data in scene.kept:
        assert path_of(store, data).read_bytes() == data
    assert not path_of(store, scene.garbage).exists()
    assert not scene.orphan.exists() and scene.young_orphan.exists()
    assert scene.stray.exists() and scene.young_temp.exists() and not scene.old_temp.exists()
    assert sorted(f.key for f in store.iter_temp_files()) == ["up-running"]
    with database.read() as session:
        logged = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == "maintenance:gc")
        ).one()
    assert logged["blobs_removed"] == 1 and logged["dry_run"] is False


def test_dry_run_counts_the_same_and_removes_nothing(
    scene: Scene, maintenance: MaintenanceService, store: FileSystemBlobStore, database: Database
) -> None:
    before_rows = blob_shas(database)
    before_files = sorted(f.key for f in store.iter_files())
    dry = maintenance.collect_garbage(grace=HOUR, dry_run=True)
    assert blob_shas(database) == before_rows
    assert sorted(f.key for f in store.iter_files()) == before_files
    assert scene.old_temp.exists()

    real = maintenance.collect_garbage(grace=HOUR)
    counted = ("blobs_removed", "bytes_removed", "orphan_files_removed", "temp_files_removed")
    assert [getattr(dry, k) for k in counted] == [getattr(real, k) for k in counted]
    assert dry.dry_run and not real.dry_run


def test_a_row_whose_file_is_gone_is_removed_and_counted(
    maintenance: MaintenanceService, store: FileSystemBlobStore, database: Database
) -> None:
    loose_blob(database, store, b"lost bytes")
    path_of(store, b"lost bytes").unlink()
    report = maintenance.collect_garbage(grace=HOUR)
    assert (report.blobs_removed, report.blobs_without_file, report.bytes_removed) == (1, 1, 0)
    assert blob_shas(database) == set()


def test_a_failed_move_puts_everything_back_and_reports_it(
    maintenance: MaintenanceService,
    store: FileSystemBlobStore,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(3):
        loose_blob(database, store, f"garbage {i}".encode())
    real_set_aside = store.set_aside
    calls = []

    def fail_third(storage_key: str) -> str | None:
        calls.append(storage_key)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied", storage_key)
        return real_set_aside(storage_key)

    monkeypatch.setattr(store, "set_aside", fail_third)
    report = maintenance.collect_garbage(grace=HOUR)
    assert not report.ok and "Permission denied" in report.errors[0]
    assert report.blobs_removed == 0
    assert len(blob_shas(database)) == 3
    for i in range(3):
        assert path_of(store, f"garbage {i}".encode()).exists()
    assert list(store.iter_temp_files()) == []


def test_a_store_that_fanned_out_twice_keeps_working(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """Blobs stored as ``ab/cd/abcd…`` before the store went to one level: an upload of the
    same bytes uses that file, gc still collects an orphan there, fsck finds nothing wrong."""
    earlier = two_level_file(store, b"stored long ago")
    orphan = two_level_file(store, b"orphan long ago")
    view = put(files, actor, home, "old.txt", b"stored long ago")
    put(files, actor, home, "new.txt", b"stored today")

    with database.read() as session:
        keys = {blob.sha256: blob.storage_key for blob in session.scalars(sa.select(Blob))}
    assert keys[sha(b"stored long ago")] == str(earlier.relative_to(store.root))
    assert keys[sha(b"stored today")] == storage_key_for(sha(b"stored today"))
    assert not path_of(store, b"stored long ago").exists()  # no second copy
    with files.open_content(view) as fh:
        assert fh.read() == b"stored long ago"

    report = maintenance.collect_garbage(grace=HOUR)
    assert report.orphan_files_removed == 1 and report.blobs_removed == 0
    assert not orphan.exists() and earlier.exists()
    assert FsckService(maintenance.db, maintenance.blobs).check().ok


# --------------------------------------------------------------------------------- fsck


def test_fsck_finds_corrupt_missing_and_orphan_files(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    put(files, actor, home, "fine.txt", b"fine bytes")
    put(files, actor, home, "flipped.txt", b"flipped bytes")
    put(files, actor, home, "short.txt", b"truncated bytes")
    put(files, actor, home, "gone.txt", b"missing bytes")
    assert FsckService(maintenance.db, maintenance.blobs).check().ok
    with open(path_of(store, b"flipped bytes"), "r+b") as fh:
        fh.write(b"F")
    path_of(store, b"truncated bytes").write_bytes(b"trunc")
    path_of(store, b"missing bytes").unlink()
    orphan_file(store, b"nobody's bytes")
    orphan_file(store, b"just uploaded", age=0)  # its upload may still be committing
    # A row nothing uses, whose file went (a gc stopped between moving it and committing):
    # no bytes anyone needs are lost, and the next gc removes the row.
    loose_blob(database, store, b"garbage bytes")
    path_of(store, b"garbage bytes").unlink()

    report = FsckService(maintenance.db, maintenance.blobs).check()

    assert not report.ok
    assert report.counts == {"corrupt": 2, "missing": 1, "orphan": 1}
    assert report.garbage_without_file == 1
    found = {(p.kind, p.storage_key) for p in report.problems}
    assert found == {
        ("corrupt", storage_key_for(sha(b"flipped bytes"))),
        ("corrupt", storage_key_for(sha(b"truncated bytes"))),
        ("missing", storage_key_for(sha(b"missing bytes"))),
        ("orphan", storage_key_for(sha(b"nobody's bytes"))),
    }
    short = next(p for p in report.problems if p.sha256 == sha(b"truncated bytes"))
    assert "size 5, expected 15" in short.detail
    assert report.quarantined == 2  # the corrupt ones: out of the scan for orphans
    assert report.blobs_checked == 5 and report.files_scanned == 3
    with database.read() as session:
        logged = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == "maintenance:fsck")
            .order_by(LogEntry.id.desc())
        ).first()
    assert logged is not None and logged["counts"]["corrupt"] == 2


def test_fsck_lists_files_that_are_no_blobs_as_foreign_and_passes(
    database: Database, store: FileSystemBlobStore, maintenance: MaintenanceService
) -> None:
    """A file in the store not named as a blob (notes, a stray copy) was reported as an
    orphan, failing every fsck, though gc never removes it. It is listed as foreign: not a
    problem, left alone."""
    loose_blob(database, store, b"a blob")
    notes = store.root / "notes.txt"
    notes.write_bytes(b"not a blob")
    stray = store.root / "ab" / "copy of ab12"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not a blob either")
    for path in (notes, stray):
        backdate(path, OLD)
    orphan_file(store, b"nobody's bytes")

    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.counts == {"orphan": 1}
    assert report.foreign == ["ab/copy of ab12", "notes.txt"] and report.foreign_files == 2
    assert maintenance.collect_garbage(grace=HOUR).orphan_files_removed == 1
    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.ok and report.foreign_files == 2
    assert notes.exists() and stray.exists()


def test_fsck_moves_a_corrupt_blob_to_quarantine_and_an_upload_heals_it(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """A blob whose bytes rotted in place (same size) was served as it was, and an upload of
    the original bytes deduplicated onto it: nothing healed it. fsck moves it to
    ``quarantine/``, so the blob counts as missing (a clean 404) and the next upload of those
    bytes stores a copy of its own, without dedup reading the stored copy."""
    original = os.urandom(200_000)
    put(files, actor, home, "photo.bin", original)
    rotten = bytearray(original)
    rotten[1000] ^= 0xFF
    path_of(store, original).write_bytes(bytes(rotten))

    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.counts == {"corrupt": 1} and report.quarantined == 1
    [problem] = report.problems
    kept = store.root / "quarantine" / sha(original)
    assert f"moved to {kept}" in problem.detail
    assert kept.read_bytes() == bytes(rotten) and not path_of(store, original).exists()
    photo = files.resolve(files.home_id(actor.user_id), ["photo.bin"])
    assert photo is not None
    with pytest.raises(NotFound):
        files.open_content(photo)
    again = FsckService(maintenance.db, maintenance.blobs).check()
    assert again.counts == {"missing": 1} and again.files_scanned == 0  # quarantine: not scanned

    put(files, actor, home, "photo again.bin", original)
    with files.open_content(photo) as fh:
        assert fh.read() == original
    assert FsckService(maintenance.db, maintenance.blobs).check().ok
    maintenance.collect_garbage(grace=dt.timedelta(0))
    assert kept.exists()  # the rotten copy stays for whoever wants to look at it


def test_fsck_leaves_right_bytes_in_place_when_only_their_row_is_wrong(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """Bytes whose SHA-256 is the row's are the right bytes, whatever else the row says (a
    CRC-32 or size written wrong by hand or by an old bug): fsck reports the row, and never
    moves the only copy of a file to the quarantine."""
    put(files, actor, home, "kept.txt", b"right bytes, wrong row")
    with database.write() as session:
        session.execute(
            sa.update(Blob).where(Blob.sha256 == sha(b"right bytes, wrong row")).values(crc32=7)
        )
    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.counts == {"corrupt": 1} and report.quarantined == 0
    assert "crc32" in report.problems[0].detail
    view = files.resolve(files.home_id(actor.user_id), ["kept.txt"])
    assert view is not None
    with files.open_content(view) as fh:
        assert fh.read() == b"right bytes, wrong row"


def test_a_corrupt_blob_stored_where_the_store_fanned_out_twice_heals_too(
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """An upload stores new bytes at ``ab/abcd…``; a row naming ``ab/cd/abcd…`` would stay
    missing. fsck points the row of a blob it quarantines at the key new bytes go to."""
    earlier = two_level_file(store, b"stored long ago")
    put(files, actor, home, "old.txt", b"stored long ago")
    earlier.write_bytes(b"Stored long ago")
    assert FsckService(maintenance.db, maintenance.blobs).check().quarantined == 1
    put(files, actor, home, "again.txt", b"stored long ago")
    view = files.resolve(files.home_id(actor.user_id), ["old.txt"])
    assert view is not None
    with files.open_content(view) as fh:
        assert fh.read() == b"stored long ago"
    assert FsckService(maintenance.db, maintenance.blobs).check().ok


def test_fsck_sample_and_since_check_a_subset_and_skip_the_orphan_scan(
    database: Database, store: FileSystemBlobStore, maintenance: MaintenanceService
) -> None:
    for i in range(5):
        loose_blob(database, store, f"old {i}".encode(), age=3 * 24 * 3600)
    loose_blob(database, store, b"new one", age=0)
    orphan_file(store, b"orphan")
    sampled = FsckService(maintenance.db, maintenance.blobs).check(sample=3)
    assert sampled.blobs_checked == 3 and not sampled.orphan_scan and sampled.ok
    recent = FsckService(maintenance.db, maintenance.blobs).check(
        since=utcnow() - dt.timedelta(days=1)
    )
    assert (recent.blobs_checked, recent.bytes_checked) == (1, len(b"new one"))
    assert FsckService(maintenance.db, maintenance.blobs).check().counts == {"orphan": 1}


def test_fsck_reports_progress_within_a_large_blob(
    database: Database, store: FileSystemBlobStore, maintenance: MaintenanceService
) -> None:
    loose_blob(database, store, os.urandom(3 * 1024 * 1024 + 5))
    seen: list[Any] = []
    assert FsckService(maintenance.db, maintenance.blobs).check(progress=seen.append).ok
    hashing = [p for p in seen if p.phase == "hash"]
    assert [p.bytes_done for p in hashing[:3]] == [1 << 20, 2 << 20, 3 << 20]
    assert hashing[-1].done == hashing[-1].total == 1


def test_an_empty_new_file_leaves_no_blob_file_and_an_emptied_one_keeps_its_blob(
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """Explorer starts every copy with a 0-byte PUT: a new empty file has no version, so its
    upload must not leave the empty blob behind for fsck to call an orphan."""
    put(files, actor, home, "empty.txt", b"")
    assert list(store.iter_files()) == [] and list(store.iter_temp_files()) == []
    for orphan in store.root.rglob("*"):
        backdate(orphan, OLD)
    assert FsckService(maintenance.db, maintenance.blobs).check().ok

    # 0 bytes over a file with bytes make a version of size 0: that one needs its blob.
    put(files, actor, home, "doc.txt", b"some bytes")
    emptied = put(files, actor, home, "doc.txt", b"")
    assert emptied.size == 0 and emptied.version_no == 2
    assert path_of(store, b"").is_file() and list(store.iter_temp_files()) == []
    with files.open_content(emptied) as fh:
        assert fh.read() == b""
    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.ok and report.blobs_checked == 2 and report.files_scanned == 2


def test_gc_removes_an_image_purged_for_good_with_its_variants(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    """A thumbnail is a cache of a version's bytes, not a use of them: once every version
    holding an image is purged, gc takes the image's bytes and its variants' (rows too);
    the variants of bytes a version still holds stay."""
    purged = put(files, actor, home, "purged.jpg", b"purged image")
    put(files, actor, home, "kept.jpg", b"kept image")

    def variant_of(source: bytes, data: bytes) -> None:
        rendered = loose_blob(database, store, data)
        source_id = _blob_id(database, source)
        with database.write() as session:
            session.add(thumbnail_row(source_id, rendered, len(data)))

    variant_of(b"purged image", b"purged thumbnail")
    variant_of(b"kept image", b"kept thumbnail")
    trash = TrashService(database, files)
    files.delete(actor, purged.id)
    trash.purge(actor, purged.id)
    with database.write() as session:
        session.execute(sa.update(Blob).values(created_at=utcnow() - dt.timedelta(seconds=OLD)))

    dry = maintenance.collect_garbage(grace=HOUR, dry_run=True)
    report = maintenance.collect_garbage(grace=HOUR)

    gone = len(b"purged image") + len(b"purged thumbnail")
    assert (dry.blobs_removed, dry.bytes_removed) == (2, gone)
    assert (report.blobs_removed, report.bytes_removed) == (2, gone) and report.errors == []
    assert blob_shas(database) == {sha(b"kept image"), sha(b"kept thumbnail")}
    assert not path_of(store, b"purged image").exists()
    assert not path_of(store, b"purged thumbnail").exists()
    assert path_of(store, b"kept thumbnail").read_bytes() == b"kept thumbnail"
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ImageVariant)) == 1
