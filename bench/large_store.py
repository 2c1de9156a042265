"""Large-object C-STORE: the memory netpacs holds while several associations each send
one very large multi-frame object at the same time.

Starts ``netpacs serve`` (as ``bench/store_bench.py`` does, empty storage, SQLite),
opens N associations (default 4) with a raw DIMSE sender that makes the pixel data as
it sends it (nothing is read from disk), and sends one object of SIZE MiB (default
1024) on each, all at once. While they run, the memory of the supervisor and every
worker is summed from ``/proc`` every 50 ms: PSS (``smaps_rollup``: the pages the
forked workers share with the supervisor counted once) and VmRSS (counted once per
process). The report gives their idle and peak values, the time taken and the
throughput, and checks that every object was stored (status 0000, one object file
each, larger than its pixel data).

    .venv/bin/python bench/large_store.py                  # 4 x 1 GB
    .venv/bin/python bench/large_store.py --associations 1 --size-mb 600

Exits non-zero when a store failed or the PSS peak is over ``--limit-mb`` (default 1024).
See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from store_bench import WORK, start_netpacs, wait_for_echo  # noqa: E402
from tests.adapters.raw_dimse import process_tree  # noqa: E402
from tests.adapters.test_resource_bounds import (  # noqa: E402
    EXPLICIT_VR_LE,
    RawScu,
    _then,
    large_ct,
)

from netpacs.adapters.dimse import commands as c  # noqa: E402

MiB = 1024 * 1024


def _status(pid: int, field: str, name: str = "status") -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/{name}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def pss(pid: int) -> int:
    """The proportional set size: each page shared with the other processes (the
    workers are forked from the supervisor) counted once over them all."""
    return _status(pid, "Pss", "smaps_rollup")


class RssSampler(threading.Thread):
    """The summed PSS and VmRSS of a process tree, sampled until stopped; keeps the
    peaks."""

    def __init__(self, root: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pids = process_tree(root)
        self.every = every
        self.peak = 0
        self.peak_rss = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, sum(pss(pid) for pid in self.pids))
            self.peak_rss = max(self.peak_rss, sum(_status(pid, "VmRSS") for pid in self.pids))
            self.samples += 1
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def send_one(port: int, size: int, results: list[tuple[int, str]]) -> None:
    ds, head, pixels = large_ct(size)
    scu = RawScu(port, str(ds.SOPClassUID), EXPLICIT_VR_LE)
    try:
        scu.sock.settimeout(600)
        rsp = scu.c_store(str(ds.SOPInstanceUID), _then(head, pixels.chunks()))
        results.append((rsp.get_int(c.STATUS), rsp.get_str(c.ERROR_COMMENT) or ""))
    finally:
        scu.release()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--associations", type=int, default=4)
    p.add_argument("--size-mb", type=int, default=1024, help="pixel data per object (MiB)")
    p.add_argument("--limit-mb", type=int, default=1024, help="peak summed PSS allowed (MiB)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    size = args.size_mb * MiB
    frame = 512 * 512 * 2
    size -= size % frame
    WORK.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="large-", dir=WORK))
    env_max = str(args.size_mb + 64)
    os.environ["NETPACS_MAX_OBJECT_MB"] = env_max
    receiver = start_netpacs(workdir, f"{REPO / '.venv' / 'bin' / 'netpacs'} serve")
    try:
        wait_for_echo(receiver)
        time.sleep(1.0)  # the workers settle
        sampler = RssSampler(receiver.proc.pid)
        idle = sum(pss(pid) for pid in sampler.pids)
        idle_rss = sum(_status(pid, "VmRSS") for pid in sampler.pids)
        for pid in sampler.pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        sampler.start()
        results: list[tuple[int, str]] = []
        threads = [
            threading.Thread(target=send_one, args=(receiver.port, size, results))
            for _ in range(args.associations)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1200)
        took = time.monotonic() - started
        sampler.stop()
        hwm = sum(_status(pid, "VmHWM") for pid in sampler.pids)
        blobs = [
            f.stat().st_size
            for f in (workdir / "data").rglob("*")
            if f.is_file() and len(f.name) == 32 and f.parent.name == f.name[:3]
        ]
        total = args.associations * size
        print(
            f"{args.associations} x {size / MiB:.0f} MiB over DIMSE: {took:.1f} s, "
            f"{total / MiB / took:.0f} MiB/s"
        )
        print(
            f"netpacs memory, {len(sampler.pids)} processes (supervisor + workers), "
            f"{sampler.samples} samples:\n"
            f"  PSS summed:   idle {idle / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB\n"
            f"  VmRSS summed: idle {idle_rss / MiB:.0f} MiB, "
            f"peak {sampler.peak_rss / MiB:.0f} MiB "
            f"(growth {(sampler.peak_rss - idle_rss) / MiB:.0f} MiB; sum of per-process "
            f"peaks {hwm / MiB:.0f} MiB; counts the pages the forked workers share with "
            "the supervisor once per process)"
        )
        print(f"statuses {sorted(results)}; blobs stored {len(blobs)}")
        ok = (
            len(results) == args.associations
            and all(status == 0 for status, _ in results)
            and len(blobs) == args.associations
            and all(b > size for b in blobs)
        )
        if not ok:
            print("FAILED: a store did not succeed", receiver.log_tail(), sep="\n")
            return 1
        if sampler.peak > args.limit_mb * MiB:
            print(f"FAILED: peak PSS over {args.limit_mb} MiB")
            return 1
        return 0
    finally:
        receiver.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
