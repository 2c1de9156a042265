"""Edge viewer benchmark (issue 13): first image in the viewer at the edge, for a study
the edge holds, against the same study viewed at the core.

On the fault tests' set-up (``start_core_and_edge``: a core on PostgreSQL, an edge on
SQLite, an asyncio TCP proxy between them), a synthetic CT study (default 200 slices
of 512x512, 16 bits) is sent by DCMTK ``storescu`` from the site's CT to the edge, which
keeps it and forwards it; once the core has confirmed every object, East Sussex's
clinician (``rxc.clinician``) opens it in OHIF in headless Chromium:

1. at the core;
2. at the edge, link up (the edge passes the viewer's queries and metadata requests to
   the core for the clinician, and serves the pixel data from its cache);
3. at the edge, link cut (everything from the cache, the banner over the viewer).

Each figure is the seconds from navigation to cornerstone's first
``CORNERSTONE_IMAGE_RENDERED`` (bench/dicomweb_bench.py's ``viewer_first_image``):
cold (a fresh browser each time) and warm (a browser that has opened the viewer before),
median of ``--repeat``.

    .venv/bin/python bench/edge_viewer_bench.py
    .venv/bin/python bench/edge_viewer_bench.py --slices 50 --repeat 3

Needs DCMTK, Chromium (``/usr/bin/chromium``), the OHIF viewer (``make setup``) and
PostgreSQL on 127.0.0.1:5432. See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the fault tests' set-up code lives in tests/
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
from dicomweb_bench import viewer_first_image  # noqa: E402
from edge_bench import WORK, metric, poll_until, storescu, studies_of  # noqa: E402
from tests.conftest import Netpacs, postgres_database  # noqa: E402
from tests.edge.conftest import start_core_and_edge  # noqa: E402

USER = "rxc.clinician"


def dataset(slices: int, size: int) -> Path:
    """One study of ``slices`` CT slices of an East Sussex patient (generated once)."""
    folder = WORK / f"viewer-{slices}x{size}"
    if (folder / "COMPLETE").exists():
        return folder
    sys.path.insert(0, str(REPO / "src"))
    from netpacs.synthetic import write_ct_series

    print(f"generating {slices} CT slices into {folder} ...", flush=True)
    write_ct_series(
        folder / "series" / "study001",
        slices,
        patient_id="RXC8840001",
        issuer="RXC",
        rows=size,
        columns=size,
        seed=7,
    )
    (folder / "COMPLETE").write_text("ok\n")
    return folder


def token(server: Netpacs) -> str:
    answer = httpx.post(
        f"{server.base_url}/auth/token", data={"username": USER, "password": "demo"}, timeout=60
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def median(values: list[float]) -> float:
    return statistics.median(values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=200, help="slices of the study")
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    p.add_argument("--repeat", type=int, default=5, help="openings per figure")
    p.add_argument("--json", type=Path, help="write the figures here too")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = dataset(args.slices, args.size)
    (study,) = studies_of(folder)
    WORK.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp, postgres_database() as core_db:
        work = Path(tmp)
        pair = start_core_and_edge(work, core_db, NETPACS_HEARTBEAT_SECONDS="2")
        try:
            storescu(pair.edge.port, "NETPACS", folder, work / "storescu.log")
            poll_until(
                lambda: metric(pair.edge, "netpacs_edge_forward_backlog") == 0,
                "the study forwarded",
                timeout=600,
            )
            at_edge, at_core = token(pair.edge), token(pair.core)
            runs = {
                "core": (pair.core.base_url, at_core),
                "edge, link up": (pair.edge.base_url, at_edge),
            }
            for name, (base, bearer) in runs.items():
                cold, warm = viewer_first_image(base, study, args.repeat, bearer)
                figures[name] = {"cold_s": median(cold), "warm_s": median(warm)}
                print(f"{name}: {figures[name]}", flush=True)
            pair.link.cut()
            try:
                cold, warm = viewer_first_image(pair.edge.base_url, study, args.repeat, at_edge)
            finally:
                pair.link.restore()
            figures["edge, link cut"] = {"cold_s": median(cold), "warm_s": median(warm)}
        finally:
            pair.edge.stop()
            pair.link.stop()
            pair.core.stop()
    host = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(f"edge viewer bench {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {host}")
    print(
        f"one CT study of {args.slices} slices of {args.size}x{args.size}; first image drawn "
        f"in OHIF (headless Chromium), median of {args.repeat}"
    )
    for name, f in figures.items():
        print(f"{name:15} cold {f['cold_s']:.2f} s, warm {f['warm_s']:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
