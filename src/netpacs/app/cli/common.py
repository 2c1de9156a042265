"""What the ``netpacs`` commands share: exit codes, the logger, the metrics folder, index
preparation, progress bars and the name of the operating-system user.

Light to import: what needs sqlalchemy or tqdm imports it when called.
"""

from __future__ import annotations

import getpass
import logging
from typing import TYPE_CHECKING, Never

if TYPE_CHECKING:
    from tqdm import tqdm

    from netpacs.app.settings import Settings

log = logging.getLogger("netpacs.app.cli")

EXIT_OK = 0
METRICS_DIR = "metrics"  # under the data directory: the workers' metrics files (serve)
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _prepare_index(settings: Settings) -> None:
    """Data directory and schema, for commands that may run beside a live server.

    Not ``app.prepare``: its recovery of interrupted writes would discard the in-flight
    writes of a running server.
    """
    from netpacs.index.db import migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.effective_database_url)


class _ProgressBars:
    """A maintenance ProgressCallback drawing one tqdm bar per phase (only on a terminal)."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm[Never]] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        bar = self._bars.get(phase)
        if bar is None:
            for other in self._bars.values():
                other.close()
            bar = tqdm(desc=phase, total=total, unit="blob", disable=None)
            self._bars[phase] = bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None
