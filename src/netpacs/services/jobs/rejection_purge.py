"""Rejection purge: the instances IOCM rejection notes hid are deleted once the region's
``rejection_retention_days`` have passed (unless an administrator undid the rejection).

The rule and its audit are the rejection service's (services/rejection.py); this job
only runs it. Any node may run it: the rejections due are claimed with row locks.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)

EVERY = 300.0  # seconds between looks for rejections past their retention


class PurgesRejections(Protocol):
    def purge_expired(self) -> int:
        """Delete what rejections past their retention hid; how many instances."""
        ...


class RejectionPurge:
    name = "rejection purge"

    def __init__(self, rejections: PurgesRejections, *, every: float = EVERY) -> None:
        self._rejections = rejections
        self._every = every

    def step(self) -> float:
        deleted = self._rejections.purge_expired()
        if deleted:
            log.warning("deleted %d rejected instances past their retention", deleted)
        return self._every

    def close(self) -> None:
        pass
