"""The retrieve service: which stored objects a retrieve request selects, and their bytes.

C-MOVE, C-GET and (later) WADO-RS call this; access control for retrieval belongs
here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netpacs.services.query import QueryLevel, QueryModel, QueryService, RetrieveItem
from netpacs.storage.blobstore import BlobStore


class RetrieveService:
    def __init__(self, *, query: QueryService, blobs: BlobStore) -> None:
        self._query = query
        self._blobs = blobs

    def select(
        self, identifier: dict[str, Any], *, level: QueryLevel, model: QueryModel
    ) -> list[RetrieveItem]:
        return self._query.instances_for_retrieve(identifier, level=level, model=model)

    def dataset_bytes(self, item: RetrieveItem) -> bytes:
        """The stored data set (without file meta), in its stored transfer syntax."""
        return self._blobs.get_range(
            item.blob_key, item.dataset_offset, item.blob_size - item.dataset_offset
        )

    @contextmanager
    def as_file(self, item: RetrieveItem) -> Iterator[Path]:
        """A local Part 10 file holding the object, for senders that read files."""
        path = self._blobs.local_path(item.blob_key)
        if path is None:
            raise NotImplementedError("remote blob stores are read through dataset_bytes")
        yield path
