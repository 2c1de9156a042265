"""Helpers of the read-through tests (issue 13)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Netpacs, dcmtk


class AtEdge:
    """Sends to the edge as the site's modalities do (its AE title is RXC_EDGE)."""

    def __init__(self, edge: Netpacs) -> None:
        self.edge = edge

    def store(self, *paths: Path, aet: str = "EDGH_CT1") -> None:
        result = dcmtk(
            "storescu", "-aet", aet, "-aec", "RXC_EDGE", "127.0.0.1", str(self.edge.port),
            *map(str, paths),
        )  # fmt: skip
        assert result.returncode == 0 and "Failed" not in result.stderr, result.stderr
