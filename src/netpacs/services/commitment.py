"""Storage Commitment (PS3.4 Annex J, Push Model): which instances netpacs commits to.

A modality asks before it deletes its local copies. An instance is committed when it
is durably stored and indexed here: its index row is committed, which happens only
after its blob was fsynced (ingest's invariant 1). On an edge node that is not enough:
the site's objects are committed only once the core has confirmed it holds the same
bytes (``edge_forward.forwarded_at``, services/edge/forward.py); until then they are
*pending* and the adapter waits before it reports.

Failure reasons (PS3.4 J.3.2.1.1.2 Failure Reason, PS3.7 C): 0112 No such object
instance (not stored here, or rejected by an IOCM note); 0119 Class-instance conflict
(stored under another SOP Class); 0110 Processing failure (an edge node whose core has
not confirmed it in time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from netpacs.domain.region import ApplicationEntity, Region
from netpacs.index.schema import edge_forward, instance

NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
#: The most instances one request may name (a peer's count is bounded).
MAX_REFERENCES = 10_000
#: At an edge node: how long a report waits for the core to confirm pending instances.
EDGE_WAIT_SECONDS = 300.0
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(slots=True)
class Commitment:
    """The answer to one request: committed, failed (with a reason), still pending."""

    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)
    pending: list[Reference] = field(default_factory=list)


def _chunks(items: Sequence[Reference]) -> Iterable[Sequence[Reference]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class CommitmentService:
    """Answers storage commitment requests from the index (``edge``: an edge node)."""

    def __init__(self, read_engine: sa.Engine, region: Region, *, edge: bool = False) -> None:
        self._read = read_engine
        self._region = region
        self.edge = edge
        # How long a report may wait for pending instances (only an edge has them).
        self.wait_seconds = EDGE_WAIT_SECONDS if edge else 0.0

    def requester(self, ae_title: str) -> ApplicationEntity | None:
        """The requesting AE as the region file knows it (for a report on a new
        association: its host and port)."""
        return self._region.ae(ae_title)

    def check(self, references: Sequence[Reference]) -> Commitment:
        """Which of ``references`` are committed, failed or (at an edge) pending."""
        out = Commitment()
        with self._read.connect() as conn:
            for chunk in _chunks(references):
                uids = [r.sop_instance_uid for r in chunk]
                rows = conn.execute(
                    sa.select(instance.c.sop_instance_uid, instance.c.sop_class_uid).where(
                        instance.c.sop_instance_uid.in_(uids)
                    )
                )
                stored = {str(uid): str(cls) for uid, cls in rows}
                waiting: set[str] = set()
                if self.edge:
                    waiting = set(
                        conn.execute(
                            sa.select(edge_forward.c.sop_instance_uid).where(
                                edge_forward.c.sop_instance_uid.in_(uids),
                                edge_forward.c.forwarded_at.is_(None),
                            )
                        ).scalars()
                    )
                for ref in chunk:
                    cls = stored.get(ref.sop_instance_uid)
                    if cls is None:
                        out.failed.append((ref, NO_SUCH_OBJECT_INSTANCE))
                    elif cls != ref.sop_class_uid:
                        out.failed.append((ref, CLASS_INSTANCE_CONFLICT))
                    elif ref.sop_instance_uid in waiting:
                        out.pending.append(ref)
                    else:
                        out.committed.append(ref)
        return out
