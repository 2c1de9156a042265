"""``netpacs demo-data``: generate the synthetic demo region and load it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from netpacs.app.cli.common import _prepare_index

if TYPE_CHECKING:
    from netpacs.app.settings import Settings


def _cmd_demo_data(
    args: argparse.Namespace, settings: Settings, _p: argparse.ArgumentParser
) -> int:
    from netpacs.app import demo_data

    _prepare_index(settings)
    return demo_data.main(settings, patients=args.patients, seed=args.seed, if_empty=args.if_empty)
