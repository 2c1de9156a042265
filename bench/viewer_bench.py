"""The viewer's first image: our prepared OHIF against the stock one, same run (issue 16).

Installs two copies of the pinned ``@ohif/app`` with ``scripts/install-viewer.py``
(from its cached tarball: no network once ``make setup`` has run) into
``bench/work/viewer-stock`` (``--stock``: moved under /viewer/ and pointed at netpacs's
DICOMweb, nothing else) and ``bench/work/viewer-ours`` (what ``make setup`` installs),
starts one ``netpacs serve`` whose ``NETPACS_VIEWER_DIR`` is a symbolic link, stores a
synthetic CT series (default 600 512x512 slices, ``bench/work/``, gitignored), and then,
``--repeat`` times, opens ``/viewer?StudyInstanceUIDs=<uid>`` once with each copy (the
link switched between loads, the order alternating each round), each time in a fresh
headless Chromium (``/usr/bin/chromium``, Playwright): a cold load.

Per load it records the seconds from the start of navigation to cornerstone's first
``CORNERSTONE_IMAGE_RENDERED`` and, from the page's resource timing, where that time
went: the app bundle's arrival, the end of the document's scripts (DOMContentLoaded),
the last lazily loaded chunk, the first DICOMweb request and the series metadata's
arrival. Prints every load, the medians per copy and the ratio ours/stock; the targets
are at most 0.5 and at most 2 s. With ``--network RTT_MS/MBIT_S`` each round also loads
both copies over a network Chromium emulates (its DevTools network conditions: that
round trip added to every request, that bandwidth shared by all), as a hospital
reaching a regional netpacs would, loopback having neither latency nor a bandwidth
limit.

    .venv/bin/python bench/viewer_bench.py                      # 600 slices, 5 rounds
    .venv/bin/python bench/viewer_bench.py --repeat 7 --network 20/100 --json out.json
    .venv/bin/python bench/viewer_bench.py --variant main=/path/to/a/viewer/dir

Same data, same server process, same browser binary for both copies: only the
viewer's files differ.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_bench as sb  # the C-STORE benchmark's receivers and data set
from dicomweb_bench import CHROMIUM, FIRST_IMAGE_PROBE

INSTALL = sb.REPO / "scripts" / "install-viewer.py"
CACHE = sb.REPO / ".venv" / "share" / "netpacs" / "cache"


# Milestones of one load from its resource timing (ms after navigation start).
MILESTONES = """
() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const first = window.__firstImage;
  const res = performance.getEntriesByType('resource').filter(r => r.startTime <= first);
  const js = res.filter(r => /\\/viewer\\/.*\\.js$/.test(new URL(r.name).pathname));
  const app = js.find(r => /app\\.bundle\\./.test(r.name));
  const chunks = js.filter(r => /\\.bundle\\./.test(r.name) && r !== app);
  const web = res.filter(r => r.name.includes('/dicomweb/'));
  const meta = web.filter(r => r.name.includes('/metadata'));
  const frames = web.filter(r => r.name.includes('/frames/'));
  const max = (xs, k) => xs.length ? Math.max(...xs.map(x => x[k])) : null;
  const min = (xs, k) => xs.length ? Math.min(...xs.map(x => x[k])) : null;
  return {
    first_image: first,
    app_bundle_end: app ? app.responseEnd : null,
    scripts_done: nav ? nav.domContentLoadedEventEnd : null,
    chunks: chunks.length,
    last_chunk_end: max(chunks, 'responseEnd'),
    first_dicomweb_start: min(web, 'startTime'),
    metadata_end: max(meta, 'responseEnd'),
    first_frame_start: min(frames, 'startTime'),
    dicomweb_requests: web.length,
    bytes: res.reduce((s, r) => s + (r.encodedBodySize || 0), 0),
    resources: res.map(r => [new URL(r.name).pathname + new URL(r.name).search,
                             Math.round(r.startTime), Math.round(r.responseEnd),
                             r.initiatorType]),
  };
}
"""
STEPS = [
    ("app bundle in", "app_bundle_end"),
    ("scripts run (DCL)", "scripts_done"),
    ("last chunk in", "last_chunk_end"),
    ("1st DICOMweb request", "first_dicomweb_start"),
    ("metadata in", "metadata_end"),
    ("first image", "first_image"),
]


@dataclass
class Variant:
    name: str
    directory: Path
    network: tuple[float, float] | None = None  # (round trip ms, Mbit/s) or loopback
    loads: list[dict[str, Any]] = field(default_factory=list)

    def seconds(self) -> list[float]:
        return [float(load["first_image"] or 0) / 1000 for load in self.loads]

    def median_ms(self, key: str) -> float | None:
        values = [float(v) for load in self.loads if (v := load.get(key)) is not None]
        return statistics.median(values) if values else None


def install(dest: Path, *, stock: bool) -> None:
    cmd = [sys.executable, str(INSTALL), "--dest", str(dest), "--cache", str(CACHE)]
    subprocess.run([*cmd, "--stock"] if stock else cmd, check=True)


def point(link: Path, target: Path) -> None:
    """Switch the server's viewer directory (a symbolic link) atomically."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def open_cold(
    base: str, study: str, token: str, network: tuple[float, float] | None = None
) -> dict[str, Any]:
    """One cold load; ``network`` = (round trip ms, Mbit/s) emulated by Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # The viewer's CSP forbids the string evaluation Playwright's
            # wait_for_function uses; the page's own scripts run under it all the same.
            context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            context.add_cookies([{"name": "netpacs_session", "value": token, "url": base}])
            page = context.new_page()
            if network:
                rtt, mbit = network
                cdp = context.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.send(
                    "Network.emulateNetworkConditions",
                    {
                        "offline": False,
                        "latency": rtt,
                        "downloadThroughput": mbit * 1e6 / 8,
                        "uploadThroughput": mbit * 1e6 / 8,
                    },
                )
            page.add_init_script(FIRST_IMAGE_PROBE)
            page.goto(f"{base}/viewer?StudyInstanceUIDs={study}", wait_until="commit")
            page.wait_for_function("() => window.__firstImage !== null", timeout=90_000)
            result: dict[str, Any] = page.evaluate(MILESTONES)
            return result
        finally:
            browser.close()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f}"


def report(variants: list[Variant]) -> str:
    names = [v.name for v in variants]
    lines = ["| step (median, s after navigation) | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    for title, key in STEPS:
        lines.append(f"| {title} | " + " | ".join(_ms(v.median_ms(key)) for v in variants) + " |")
    lines.append(
        "| chunks / DICOMweb requests before the image | "
        + " | ".join(
            f"{v.median_ms('chunks') or 0:.0f} / {v.median_ms('dicomweb_requests') or 0:.0f}"
            for v in variants
        )
        + " |"
    )
    lines.append(
        "| bytes over the wire before the image | "
        + " | ".join(f"{(v.median_ms('bytes') or 0) / 1e6:.1f} MB" for v in variants)
        + " |"
    )
    lines.append(
        "| **first image, median (min-max)** | "
        + " | ".join(
            f"**{statistics.median(s):.2f} s** ({min(s):.2f}-{max(s):.2f})"
            for v in variants
            if (s := v.seconds())
        )
        + " |"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--slices", type=int, default=600, help="CT slices (default 600)")
    p.add_argument("--repeat", type=int, default=5, help="cold loads per copy (default 5)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="one more prepared viewer directory to measure in the same rounds",
    )
    p.add_argument("--timeline", action="store_true", help="print every request of every load (ms)")
    p.add_argument(
        "--network",
        metavar="RTT_MS/MBIT_S",
        help="also load each copy over a network Chromium emulates (e.g. 20/100: a "
        "hospital on a regional network), in the same rounds",
    )
    p.add_argument("--json", type=Path, help="also write every load's figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the server's work directory")
    args = p.parse_args(argv)
    if args.network:
        rtt, _, mbit = args.network.partition("/")
        args.network = (float(rtt), float(mbit))
    if args.slices < sb.PARTS:
        p.error(f"--slices must be at least {sb.PARTS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing", file=sys.stderr)
        return 2
    sb.WORK.mkdir(parents=True, exist_ok=True)
    stock = Variant("stock", sb.WORK / "viewer-stock")
    ours = Variant("ours", sb.WORK / "viewer-ours")
    install(stock.directory, stock=True)
    install(ours.directory, stock=False)
    variants = [stock, ours]
    for spec in args.variant:
        name, _, directory = spec.partition("=")
        variants.append(Variant(name, Path(directory).resolve()))
    pairs = [(stock, ours)]
    if args.network:
        tag = f"@{args.network[0]:g}ms/{args.network[1]:g}Mb"
        far = [Variant(f"{v.name}{tag}", v.directory, args.network) for v in variants]
        pairs.append((far[0], far[1]))
        variants += far
    dataset = sb.ensure_dataset(args.slices)
    study = sb.read_study_uid(dataset)

    workdir = Path(tempfile.mkdtemp(prefix="viewer-bench-", dir=sb.WORK))
    link = workdir / "viewer"
    point(link, stock.directory)
    os.environ["NETPACS_VIEWER_DIR"] = str(link)
    receiver = sb.start_netpacs(workdir, sb.DEFAULT_NETPACS_CMD)
    try:
        sb.wait_for_echo(receiver)
        base = f"http://{sb.HOST}:{receiver.http_port}"
        stored = sb.send(receiver, dataset, sb.PARTS, args.slices, study)
        if not stored.ok:
            raise sb.BenchError(stored.detail)
        signed = httpx.post(
            f"{base}/auth/token", data={"username": "rtp.admin", "password": "demo"}
        )
        signed.raise_for_status()
        token = str(signed.json()["access_token"])
        open_cold(base, study, token)  # one unmeasured load: the server's caches warm
        for round_ in range(args.repeat):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                point(link, variant.directory)
                load = open_cold(base, study, token, variant.network)
                variant.loads.append(load)
                print(
                    f"round {round_ + 1} {variant.name:>6}: first image "
                    f"{_ms(load['first_image'])} s ("
                    + ", ".join(f"{k} {_ms(load.get(key))}" for k, key in STEPS[:-1])
                    + f"; {load['chunks']:.0f} chunks)",
                    flush=True,
                )
                if args.timeline:
                    for path, start, end, initiator in load["resources"]:
                        print(f"    {start:6d} {end:6d} {initiator:>6}  {path[:110]}")
    finally:
        receiver.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(
        f"Viewer first image, {args.slices} CT slices 512x512, cold Chromium, "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='minutes')}, {platform.node()} "
        f"({os.cpu_count()} cores), load average at the end {load_avg}; "
        f"{args.repeat} alternating rounds"
    )
    print(report(variants))
    print()
    for st, ou in pairs:
        s, o = statistics.median(st.seconds()), statistics.median(ou.seconds())
        print(
            f"{ou.name}/{st.name} {o / s:.2f} (target at most 0.50: "
            f"{'met' if o / s <= 0.5 else 'not met'}); {ou.name} {o:.2f} s "
            f"(target at most 2 s: {'met' if o <= 2 else 'not met'})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "slices": args.slices,
                    "load_average_end": os.getloadavg(),
                    "loads": {
                        v.name: [
                            {k: x for k, x in load.items() if k != "resources"} for load in v.loads
                        ]
                        for v in variants
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
