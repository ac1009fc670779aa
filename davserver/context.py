"""The services of one deployment, built from settings: shared by the server and the CLI.

``Services`` owns the database engine and the blob store and builds every service over them
once. The WSGI application adds WsgiDAV on top; CLI commands use it directly.
"""

from __future__ import annotations

import datetime as dt

from auth.credentials import CredentialCache
from auth.passwords import PasswordHasher
from davserver.blobstore import FileSystemBlobStore
from davserver.capacity import pool_limit
from davserver.config import Settings
from davserver.db import Database
from davserver.services import package_space, trash, versions
from davserver.services.accounts import AccountService
from davserver.services.apikeys import ApiKeyService
from davserver.services.files import FileService
from davserver.services.groups import GroupAdminService
from davserver.services.namespace import NamespaceService, may_see_all_users, users_space
from davserver.services.packages import PackageService
from davserver.services.sessions import SessionService
from davserver.services.sharing import SharingService
from davserver.services.throttle import LoginThrottle, ThrottlePolicy
from davserver.services.tokens import TokenService
from davserver.services.trash import TrashService
from davserver.services.user_import import UserImportService
from davserver.services.users import UserAdminService
from davserver.services.variants import VariantService
from davserver.services.version_rules import VersionPolicy
from davserver.services.versions import VersionService


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            max_connections=pool_limit(settings.server.threads),
            echo=settings.database.echo,
            ping_after_idle=settings.database.ping_after_idle_seconds,
            reconnect_after=settings.database.reconnect_after_seconds,
        )
        self.blobs = FileSystemBlobStore(settings.blob_path, fsync=settings.storage.fsync)
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
        self.namespace.add_space("users", users_space, visible=may_see_all_users)
        self.packages = PackageService(
            self.db,
            self.blobs,
            self.namespace,
            default_expiry_days=settings.packages.default_expiry_days,
        )
        self.namespace.add_space(package_space.SPACE, package_space.resolver(self.packages))
        self.versions = VersionService(self.db, self.files)
        self.namespace.add_space(versions.SPACE, self.versions.resolve)
        self.trash = TrashService(self.db, self.files, retention_days=settings.trash.retention_days)
        self.namespace.add_space(trash.SPACE, self.trash.resolve)
        self.sharing = SharingService(self.db)
        self.variants = VariantService.from_settings(
            self.db, self.blobs, self.files, settings.images
        )
        self.users = UserAdminService(self.db, self.hasher, self.accounts.ensure_roles)
        self.groups = GroupAdminService(self.db)
        self.user_import = UserImportService(self.db, self.accounts.ensure_roles)
        self.api_keys = ApiKeyService(self.db)

    def close(self) -> None:
        self.variants.close()
        self.files.read_log.close()
        self.db.dispose()
