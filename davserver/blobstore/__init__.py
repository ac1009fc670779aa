"""The blob store: bytes addressed by their SHA-256. Nothing else knows where bytes live."""

from davserver.blobstore.base import (
    BlobFile,
    BlobStore,
    BlobWriter,
    MaintainableBlobStore,
    PartialUpload,
    PartialUploadStore,
    RemoteBlobStore,
    StoredBlob,
)
from davserver.blobstore.filesystem import FileSystemBlobStore, is_storage_key, storage_key_for
from davserver.blobstore.hashing import is_sha256

__all__ = [
    "BlobFile",
    "BlobStore",
    "BlobWriter",
    "FileSystemBlobStore",
    "MaintainableBlobStore",
    "PartialUpload",
    "PartialUploadStore",
    "RemoteBlobStore",
    "StoredBlob",
    "is_sha256",
    "is_storage_key",
    "storage_key_for",
]
