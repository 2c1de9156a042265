"""DICOMweb benchmark: netpacs against Orthanc's DICOMweb plugin, same data, same run.

Generates (once) a synthetic 600-slice 512x512 CT series (``bench/work/``, gitignored),
stores it into a freshly started Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``)
and a freshly started ``netpacs serve`` with DCMTK ``storescu``, then measures on each:

- series ``/metadata``: seconds for the whole JSON answer (median of ``--repeat``,
  after one warm-up request); target at most 0.2 s and at most half of Orthanc's;
- whole-series WADO-RS retrieve (``multipart/related; type="application/dicom"``):
  MB/s over the body (median); target at least 1.0x Orthanc;
- QIDO-RS study search by PatientID (median of ``--queries`` requests on one
  keep-alive connection); target at most 10 ms;
- with ``--viewer`` (default when the viewer is installed): seconds from opening
  ``/viewer?StudyInstanceUIDs=...`` in headless Chromium to the first image drawn
  (cornerstone's ``CORNERSTONE_IMAGE_RENDERED`` event), netpacs only (Orthanc does
  not serve the viewer on its own origin); target at most 2 s.

Prints every figure and the ratios netpacs/Orthanc; exits non-zero when a request
fails or the two servers answer with different numbers of instances.

    .venv/bin/python bench/dicomweb_bench.py
    .venv/bin/python bench/dicomweb_bench.py --slices 200 --repeat 5 --no-viewer
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_bench as sb  # the C-STORE benchmark's receivers and data set)

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
CHROMIUM = "/usr/bin/chromium"
PATIENT_ID = "RTP9000042"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@dataclass
class Server:
    name: str
    receiver: sb.Receiver
    dicomweb: str  # root URL, no trailing slash
    figures: dict[str, list[float]] = field(default_factory=dict)
    token: str | None = None  # netpacs: a bearer token (every request is signed in)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        values = self.figures.get(key)
        return statistics.median(values) if values else None


def start_orthanc_dicomweb(workdir: Path) -> sb.Receiver:
    return sb.start_orthanc(
        workdir,
        Name="dicomweb-bench",
        Plugins=[DICOMWEB_PLUGIN],
        DicomWeb={"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    )


@contextlib.contextmanager
def running(kind: str, keep: bool) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix=f"web-{kind}-", dir=sb.WORK))
    if kind == "orthanc":
        receiver = start_orthanc_dicomweb(workdir)
        root = f"http://{sb.HOST}:{receiver.http_port}/dicom-web"
    else:
        receiver = sb.start_netpacs(workdir, sb.DEFAULT_NETPACS_CMD)
        root = f"http://{sb.HOST}:{receiver.http_port}/dicomweb"
    try:
        sb.wait_for_echo(receiver)
        wait_for_http(root, receiver)
        token = None
        if kind != "orthanc":
            base = root.removesuffix("/dicomweb")
            signed = httpx.post(
                f"{base}/auth/token", data={"username": "rtp.admin", "password": "demo"}
            )
            signed.raise_for_status()
            token = str(signed.json()["access_token"])
        yield Server(receiver.name, receiver, root, token=token)
    finally:
        receiver.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def wait_for_http(root: str, receiver: sb.Receiver, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{root}/studies", params={"limit": "1"}, timeout=5).status_code < 500:
                return
        time.sleep(0.25)
    raise sb.BenchError(f"{receiver.name} HTTP did not answer:\n{receiver.log_tail()}")


def series_uid_of(dataset: Path) -> str:
    import pydicom

    first = next(iter(sorted(dataset.glob("part*/*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def measure(
    server: Server, study: str, series: str, slices: int, repeat: int, queries: int
) -> None:
    with httpx.Client(timeout=600, headers=server.headers) as client:
        # series metadata
        url = f"{server.dicomweb}/studies/{study}/series/{series}/metadata"
        headers = {"Accept": "application/dicom+json"}
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            resp = client.get(url, headers=headers)
            seconds = time.perf_counter() - t0
            if resp.status_code != 200:
                raise sb.BenchError(f"{server.name} metadata: {resp.status_code} {resp.text[:300]}")
            count = len(resp.json())
            if count != slices:
                raise sb.BenchError(f"{server.name} metadata has {count} instances, not {slices}")
            if i:  # the first request warms caches and connections
                server.add("metadata_s", seconds)
        # whole-series retrieve
        url = f"{server.dicomweb}/studies/{study}/series/{series}"
        for i in range(repeat + 1):
            received = 0
            t0 = time.perf_counter()
            with client.stream("GET", url, headers={"Accept": MULTIPART_DICOM}) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise sb.BenchError(
                        f"{server.name} retrieve: {resp.status_code} {resp.text[:300]}"
                    )
                for chunk in resp.iter_raw(1 << 20):
                    received += len(chunk)
            seconds = time.perf_counter() - t0
            if i:
                server.add("retrieve_mb_s", received / seconds / 1e6)
                server.add("retrieve_mb", received / 1e6)
        # QIDO study search
        url = f"{server.dicomweb}/studies"
        for i in range(queries + 1):
            t0 = time.perf_counter()
            resp = client.get(url, params={"PatientID": PATIENT_ID}, headers=headers)
            seconds = time.perf_counter() - t0
            if resp.status_code != 200 or len(resp.json()) != 1:
                raise sb.BenchError(f"{server.name} QIDO: {resp.status_code} {resp.text[:300]}")
            if i:
                server.add("qido_ms", seconds * 1000)


# Run in the page before its own scripts: the time (performance.now(), from the start of
# navigation) at which cornerstone first draws an image.
FIRST_IMAGE_PROBE = """
    window.__firstImage = null;
    window.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
        if (window.__firstImage === null) window.__firstImage = performance.now();
    }, true);
"""


def viewer_first_image(
    base: str, study: str, repeat: int, token: str | None = None
) -> tuple[list[float], list[float]]:
    """Seconds from navigation to cornerstone's first IMAGE_RENDERED: cold and warm.

    Cold: a fresh browser (empty cache) each time. Warm: the same browser opening the
    study again in a new tab, its HTTP and code caches holding the viewer, as for a
    clinician who has used the viewer before.
    """
    from playwright.sync_api import Browser, sync_playwright

    url = f"{base}/viewer?StudyInstanceUIDs={study}"

    def open_once(browser: Browser) -> float:
        # The viewer's Content-Security-Policy forbids the string evaluation Playwright's
        # wait_for_function uses; the page's own scripts run under it all the same.
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        if token:  # the session cookie the sign-in page would have set
            context.add_cookies([{"name": "netpacs_session", "value": token, "url": base}])
        page = context.new_page()
        try:
            page.add_init_script(FIRST_IMAGE_PROBE)
            page.goto(url, wait_until="commit")
            # A function, not an expression: the viewer's CSP forbids eval.
            page.wait_for_function("() => window.__firstImage !== null", timeout=60_000)
            # performance.now() counts from the navigation's start.
            return float(page.evaluate("() => window.__firstImage")) / 1000
        finally:
            page.close()
            context.close()

    cold: list[float] = []
    warm: list[float] = []
    with sync_playwright() as pw:
        for _ in range(repeat):
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                cold.append(open_once(browser))
            finally:
                browser.close()
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            open_once(browser)
            open_once(browser)  # V8 caches compiled code from the second load on
            warm.extend(open_once(browser) for _ in range(repeat))
        finally:
            browser.close()
    return cold, warm


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"


def report(servers: list[Server], viewer: list[float], warm: list[float]) -> str:
    rows = [
        ("series /metadata", "metadata_s", "s", "lower"),
        ("whole-series WADO-RS", "retrieve_mb_s", "MB/s", "higher"),
        ("QIDO-RS study search", "qido_ms", "ms", "lower"),
    ]
    names = [s.name for s in servers]
    lines = ["| measure | " + " | ".join(names) + " | ratio netpacs/Orthanc |"]
    lines.append("|---" * (len(names) + 2) + "|")
    for title, key, unit, _better in rows:
        cells = [_fmt(s.median(key), unit) for s in servers]
        by = {s.name: s.median(key) for s in servers}
        o, n = by.get("Orthanc"), by.get("netpacs")
        ratio = f"{n / o:.2f}" if o and n else "-"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {ratio} |")
    for title, times in (("cold browser", viewer), ("warm browser", warm)):
        if not times:
            continue
        cell = f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"
        lines.append(
            f"| viewer: first image drawn, {title} | "
            + " | ".join(cell if s.name == "netpacs" else "-" for s in servers)
            + " | - |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--slices", type=int, default=600, help="CT slices (default 600)")
    p.add_argument("--repeat", type=int, default=5, help="metadata/retrieve measurements")
    p.add_argument("--queries", type=int, default=50, help="QIDO requests")
    p.add_argument("--only", choices=["orthanc", "netpacs"], help="measure one server only")
    p.add_argument("--viewer", dest="viewer", action="store_true", default=None)
    p.add_argument("--no-viewer", dest="viewer", action="store_false")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the servers' work directories")
    args = p.parse_args(argv)
    if args.slices < sb.PARTS:
        p.error(f"--slices must be at least {sb.PARTS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [args.only] if args.only else ["orthanc", "netpacs"]
    if "orthanc" in kinds and not Path(DICOMWEB_PLUGIN).exists():
        print(
            "Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb",
            file=sys.stderr,
        )
        return 2
    sb.WORK.mkdir(parents=True, exist_ok=True)
    dataset = sb.ensure_dataset(args.slices)
    study = sb.read_study_uid(dataset)
    series = series_uid_of(dataset)
    servers: list[Server] = []
    viewer: list[float] = []
    warm: list[float] = []
    failed = False
    for kind in kinds:
        try:
            with running(kind, args.keep) as server:
                stored = sb.send(server.receiver, dataset, sb.PARTS, args.slices, study)
                if not stored.ok:
                    raise sb.BenchError(stored.detail)
                measure(server, study, series, args.slices, args.repeat, args.queries)
                want_viewer = args.viewer
                if want_viewer is None:
                    want_viewer = Path(CHROMIUM).exists()
                if kind == "netpacs" and want_viewer:
                    base = server.dicomweb.removesuffix("/dicomweb")
                    viewer, warm = viewer_first_image(
                        base, study, max(3, args.repeat // 2), server.token
                    )
                servers.append(server)
                print(
                    f"{server.name}: "
                    + ", ".join(
                        f"{k}={statistics.median(v):.4g}" for k, v in server.figures.items()
                    ),
                    flush=True,
                )
        except (sb.BenchError, httpx.HTTPError) as exc:
            print(f"{kind}: FAILED\n{exc}", file=sys.stderr, flush=True)
            failed = True
        except Exception as exc:  # a Playwright timeout: report it, keep the figures
            print(f"{kind}: viewer FAILED: {exc}", file=sys.stderr, flush=True)
            failed = True
    print()
    print(
        f"DICOMweb, {args.slices} CT slices 512x512 16-bit, loopback, "
        f"{dt.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} cores); "
        f"medians of {args.repeat} (metadata, retrieve) and {args.queries} (QIDO)"
    )
    print(report(servers, viewer, warm))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "slices": args.slices,
                    "servers": {s.name: s.figures for s in servers},
                    "viewer_first_image_s": viewer,
                    "viewer_first_image_warm_s": warm,
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
