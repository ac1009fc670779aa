"""The services of one deployment, built from settings: shared by the server and the CLI.

``Services`` owns the database engine and the blob store and builds every service over them
once. The WSGI application adds WsgiDAV on top; CLI commands use it directly.
"""

from __future__ import annotations

from auth.credentials import CredentialCache
from auth.passwords import PasswordHasher
from davserver.blobstore import FileSystemBlobStore
from davserver.config import Settings
from davserver.db import Database
from davserver.services.accounts import AccountService
from davserver.services.files import FileService


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            echo=settings.database.echo,
        )
        self.blobs = FileSystemBlobStore(settings.blob_path, fsync=settings.storage.fsync)
        self.hasher = PasswordHasher()
        self.credentials = CredentialCache()
        self.accounts = AccountService(self.db, self.hasher, self.credentials)
        self.files = FileService(self.db, self.blobs)

    def close(self) -> None:
        self.db.dispose()
