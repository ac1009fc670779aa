"""The blob store: bytes addressed by their SHA-256. Nothing else knows where bytes live."""

from davserver.blobstore.base import BlobStore, BlobWriter, StoredBlob
from davserver.blobstore.filesystem import FileSystemBlobStore

__all__ = ["BlobStore", "BlobWriter", "FileSystemBlobStore", "StoredBlob"]
