"""One DIMSE message as the association hands it to its handlers: the presentation
context, the command set, and the data set (in memory, or spooled to a file when
large)."""

from __future__ import annotations

from dataclasses import dataclass

from netpacs.adapters.dimse import commands as c
from netpacs.services.spool import Spool


@dataclass(slots=True)
class Message:
    context_id: int
    command: c.Command
    # The data set: bytes while small; a Spool in a file of the data directory when
    # large (the handler closes it); None without one, or when it was refused.
    data: bytes | Spool | None
    refused: str | None = None  # why the data set was not kept (too large)

    @property
    def size(self) -> int:
        if self.data is None:
            return 0
        return self.data.size if isinstance(self.data, Spool) else len(self.data)

    def close(self) -> None:
        if isinstance(self.data, Spool):
            self.data.close()
