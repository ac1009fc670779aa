"""The services of one deployment, built from settings: shared by the server and the CLI.

``Services`` owns the database engine and the blob store and builds every service over them
once. The WSGI application adds WsgiDAV on top; CLI commands use it directly.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from auth.credentials import CredentialCache
from auth.passwords import PasswordHasher
from davserver.blobstore import FileSystemBlobStore, MaintainableBlobStore
from davserver.capacity import pool_limit
from davserver.config import ConfigError, Settings
from davserver.db import Database
from davserver.errors import Unavailable
from davserver.services import package_space, trash, versions
from davserver.services.accounts import AccountService
from davserver.services.apikeys import ApiKeyService
from davserver.services.files import FileService
from davserver.services.groups import GroupAdminService
from davserver.services.lock_reach import LockReach
from davserver.services.namespace import NamespaceService, may_see_all_users
from davserver.services.packages import PackageService
from davserver.services.sessions import SessionService
from davserver.services.sharing import SharingService
from davserver.services.throttle import LoginThrottle, ThrottlePolicy
from davserver.services.tokens import TokenService
from davserver.services.trash import TrashService
from davserver.services.user_import import UserImportService
from davserver.services.users import UserAdminService
from davserver.services.users_space import users_members, users_space
from davserver.services.variants import VariantService
from davserver.services.version_rules import VersionPolicy
from davserver.services.versions import VersionService

if TYPE_CHECKING:
    from davserver.blobstore.s3 import S3BlobStore


def open_blob_store(settings: Settings) -> MaintainableBlobStore:
    """The configured blob store (see ``open_s3_store``)."""
    s3 = open_s3_store(settings)
    if s3 is not None:
        return s3
    return FileSystemBlobStore(settings.blob_path, fsync=settings.storage.fsync)


def open_s3_store(settings: Settings) -> S3BlobStore | None:
    """The S3 store when ``storage.backend`` is s3, else None. Its bucket is asked once
    whether it answers (nothing is made on disk before): ConfigError, naming what was tried,
    when it does not."""
    if settings.storage.backend != "s3":
        return None
    from davserver.blobstore.s3 import S3BlobStore
    from davserver.blobstore.s3_client import S3Location

    s3 = settings.s3
    prefix = s3.prefix.strip("/")
    location = S3Location(
        bucket=s3.bucket,
        prefix=f"{prefix}/" if prefix else "",
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        addressing_style=s3.addressing_style,
        connections=settings.server.threads + 4,
    )
    store = S3BlobStore(location, settings.blob_path / "tmp")
    try:
        store.check()
    except (OSError, Unavailable) as exc:
        raise ConfigError(f"s3.bucket: cannot use {location.describe()}: {exc}") from None
    return store


class Services:
    def __init__(self, settings: Settings, blobs: MaintainableBlobStore | None = None) -> None:
        """``blobs``: the store, when the caller opened it already (``open_blob_store``)."""
        self.settings = settings
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            max_connections=pool_limit(settings.server.threads),
            echo=settings.database.echo,
            ping_after_idle=settings.database.ping_after_idle_seconds,
            reconnect_after=settings.database.reconnect_after_seconds,
            durable_commits=settings.storage.fsync,
        )
        self.blobs = blobs or open_blob_store(settings)
        auth = settings.auth
        self.hasher = PasswordHasher()
        self.credentials = CredentialCache(ttl_seconds=auth.credential_cache_seconds)
        self.throttle = LoginThrottle(
            self.db,
            ThrottlePolicy(
                max_failures_per_user=auth.max_failures_per_user,
                max_failures_per_address=auth.max_failures_per_address,
                window=dt.timedelta(seconds=auth.failure_window_seconds),
                ban=dt.timedelta(seconds=auth.ban_seconds),
            ),
        )
        self.accounts = AccountService(self.db, self.hasher, self.credentials, self.throttle)
        self.sessions = SessionService(
            self.db, idle=dt.timedelta(seconds=auth.session_idle_seconds)
        )
        self.tokens = TokenService(
            self.db,
            self.accounts,
            self.sessions,
            access_lifetime=dt.timedelta(seconds=auth.access_token_seconds),
            refresh_lifetime=dt.timedelta(days=auth.refresh_token_days),
            secret=auth.token_secret,
        )
        self.files = FileService(
            self.db,
            self.blobs,
            VersionPolicy(
                keep_last=settings.versions.keep_last,
                thin_after_days=settings.versions.thin_after_days,
                coalesce_seconds=settings.versions.coalesce_seconds,
            ),
        )
        self.namespace = NamespaceService(self.db, self.files)
        self.namespace.add_space(
            "users", users_space, visible=may_see_all_users, members=users_members
        )
        self.packages = PackageService(
            self.db,
            self.blobs,
            self.namespace,
            default_expiry_days=settings.packages.default_expiry_days,
        )
        self.namespace.add_space(package_space.SPACE, package_space.resolver(self.packages))
        self.versions = VersionService(self.db, self.files)
        self.namespace.add_space(versions.SPACE, self.versions.resolve)
        self.trash = TrashService(
            self.db,
            self.files,
            retention_days=settings.trash.retention_days,
            swept=settings.maintenance.housekeeping_seconds > 0,
            enabled=settings.trash.enabled,
        )
        self.namespace.add_space(trash.SPACE, self.trash.resolve)
        self.locks = LockReach(self.db, self.namespace)
        self.sharing = SharingService(self.db, self.locks)
        self.variants = VariantService.from_settings(
            self.db, self.blobs, self.files, settings.images
        )
        self.users = UserAdminService(self.db, self.hasher, self.accounts.ensure_roles, self.locks)
        self.groups = GroupAdminService(self.db, self.locks)
        self.user_import = UserImportService(self.db, self.accounts.ensure_roles)
        self.api_keys = ApiKeyService(self.db)

    def close(self) -> None:
        self.variants.close()
        self.files.read_log.close()
        self.db.dispose()
