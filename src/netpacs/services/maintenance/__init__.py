"""Archive maintenance: verify blobs against the index, sweep orphans, rebuild the index,
copy the blobs to another store (``netpacs blobs copy``).

``verify`` (:mod:`.verification`) re-reads every indexed blob and checks its size and
CRC-32 against the index row, then lists blobs that no row points at (orphans: a crash
between the blob write and the index commit leaves them, see ingest.py). ``reindex``
(:mod:`.reindexing`) rebuilds an empty index from the stored objects alone
(ARCHITECTURE.md invariant 6), keeping every blob key and recovering each object's
origin from its file meta the way ingest set it. ``copy_blobs`` (:mod:`.blob_copy`)
copies every indexed blob to another store.

Verify and reindex stream: index rows are read in pages, blobs one at a time (a few in
flight, :func:`.streaming.run_bounded`), and progress is reported through a callback.
Neither ever rewrites a blob; only the orphan sweep deletes blobs, and only ones with
no index row that are older than asked. The copy streams the same way and never changes
the source.
"""
