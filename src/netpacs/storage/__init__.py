"""Object storage: opaque-keyed blob stores holding DICOM objects as received."""

from netpacs.storage.blobstore import BlobNotFound, BlobStore, new_blob_key
from netpacs.storage.fs import FileSystemBlobStore

__all__ = ["BlobNotFound", "BlobStore", "FileSystemBlobStore", "new_blob_key"]
