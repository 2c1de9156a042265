"""Federated QIDO-RS latency (issue 14): one search by NHS number across three networks
through netpacs, against the slowest network's own answer time.

Starts three Orthanc archives (Debian ``orthanc`` + ``orthanc-dicomweb``) as the
neighbouring networks, London and Kent over DICOMweb and Wessex over DIMSE, each holding
``--studies`` small CT studies of one test patient (Patient ID = NHS number), and
``netpacs serve`` (SQLite) with a region file naming them. Each round asks every network
directly, one after the other, with netpacs's own clients (QIDO-RS through
``DicomwebPeer``, C-FIND through ``DimsePeer``: the same requests the gateway sends),
then ``GET /dicomweb/studies?PatientID=<nhs>&IssuerOfPatientID=NHS&includenetworks=true``
at netpacs (signed in as ``rtp.admin``). The ratio of a round is the federated time over
the slowest direct time; the target is a median of at most 1.2. Exits non-zero when a
federated answer lacks a study or carries a Warning. ``--viewer N`` then times the
viewer's first image of a Kent study opened through netpacs against a local one
(target at most 1.5x). Each round also asks the three networks at once from the bench
process (the same clients, three threads): what they cost answering together on this
machine, without netpacs in between.

    .venv/bin/python bench/federation_bench.py [--rounds 30] [--studies 20] [--viewer 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import dicomweb_bench as wb
import store_bench as sb

from netpacs.adapters.transports.dicomweb_peer import DicomwebPeer
from netpacs.adapters.transports.dimse_peer import DimsePeer
from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.domain.networks import (
    DicomwebAccess,
    DimseAccess,
    Network,
    Protocol,
)
from netpacs.synthetic import write_ct_series

NHS = "9990001235"  # 999 test range, valid check digit


def fill(orthanc: sb.Receiver, folder: Path, studies: int, seed: int) -> list[str]:
    uids = []
    with httpx.Client(timeout=60) as client:
        for i in range(studies):
            paths = write_ct_series(
                folder / f"s{i}", 1, rows=32, columns=32, patient_id=NHS, seed=seed + i
            )
            for path in paths:
                response = client.post(
                    f"http://{sb.HOST}:{orthanc.http_port}/instances", content=path.read_bytes()
                )
                response.raise_for_status()
            uids.append(str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID))
    return uids


def region(path: Path, london: sb.Receiver, kent: sb.Receiver, wessex: sb.Receiver) -> Path:
    text = BUNDLED_DEMO_REGION.read_text()
    text = text[: text.index("[[networks]]")]
    for name, peer in (("London", london), ("Kent", kent)):
        text += (
            f'[[networks]]\nname = "{name}"\nprotocol = "dicomweb"\n'
            f'url = "http://{sb.HOST}:{peer.http_port}/dicom-web"\n\n'
        )
    text += (
        f'[[networks]]\nname = "Wessex"\nprotocol = "dimse"\nae_title = "{wessex.aet}"\n'
        f'host = "{sb.HOST}"\nport = {wessex.port}\n'
    )
    path.write_text(text)
    return path


# The time cornerstone first drew an image (as tests/browser/conftest.py measures it).
FIRST_IMAGE_PROBE = """
    window.__firstImage = null;
    window.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
        if (window.__firstImage === null) window.__firstImage = performance.now();
    }, true);
"""


def viewer_rounds(
    n: int, workdir: Path, kent: sb.Receiver, netpacs: sb.Receiver, token: str
) -> None:
    """First image of a 60-slice 256x256 CT that Kent holds (passed through netpacs)
    against one netpacs holds, in headless Chromium, alternately, a fresh context each."""
    import subprocess

    from playwright.sync_api import sync_playwright

    remote_dir, local_dir = workdir / "viewer-kent", workdir / "viewer-local"
    remote = write_ct_series(remote_dir, 60, rows=256, columns=256, patient_id=NHS, seed=7)
    local = write_ct_series(local_dir, 60, rows=256, columns=256, patient_id=NHS, seed=8)
    with httpx.Client(timeout=60) as client:
        for path in remote:
            url = f"http://{sb.HOST}:{kent.http_port}/instances"
            client.post(url, content=path.read_bytes()).raise_for_status()
    subprocess.run(
        ["storescu", "-aet", "ESH_CT1", "-aec", "NETPACS", sb.HOST, str(netpacs.port)]
        + [str(p) for p in local],
        check=True,
        capture_output=True,
    )
    uids = {
        "Kent (through netpacs)": str(pydicom.dcmread(remote[0]).StudyInstanceUID),
        "netpacs (local)": str(pydicom.dcmread(local[0]).StudyInstanceUID),
    }
    base = f"http://{sb.HOST}:{netpacs.http_port}"
    headers = {"Authorization": f"Bearer {token}"}
    params = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}
    httpx.get(f"{base}/dicomweb/studies", params=params, headers=headers).raise_for_status()
    times: dict[str, list[float]] = {name: [] for name in uids}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        for _ in range(n):
            for name, uid in uids.items():
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.add_cookies([{"name": "netpacs_session", "value": token, "url": base}])
                page = context.new_page()
                errors: list[str] = []
                page.on(
                    "response",
                    lambda r, errors=errors: (
                        errors.append(f"{r.status} {r.url}") if r.status >= 400 else None
                    ),
                )
                page.add_init_script(FIRST_IMAGE_PROBE)
                page.goto(f"{base}/viewer?StudyInstanceUIDs={uid}", wait_until="commit")
                try:
                    page.wait_for_function("() => window.__firstImage !== null", timeout=60_000)
                except Exception:
                    raise sb.BenchError(f"{name}: no image in 60 s; {errors[:5]}") from None
                times[name].append(float(page.evaluate("window.__firstImage")) / 1000)
                context.close()
        browser.close()
    for name, xs in times.items():
        print(f"  first image, {name}: median {statistics.median(xs):.2f} s ({n} runs)")
    ratio = statistics.median(times["Kent (through netpacs)"]) / statistics.median(
        times["netpacs (local)"]
    )
    print(f"  ratio remote / local first image: {ratio:.2f} (target <= 1.5)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--studies", type=int, default=20, help="studies of the patient per network")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--viewer",
        type=int,
        default=0,
        metavar="N",
        help="also time the viewer's first image of a Kent study against a local one, N each",
    )
    args = p.parse_args()
    if not Path(wb.DICOMWEB_PLUGIN).exists():
        print("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb")
        return 2
    sb.WORK.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="federation-", dir=sb.WORK))
    started: list[sb.Receiver] = []
    try:
        for name in ("london", "kent", "wessex"):
            (workdir / name).mkdir()
            started.append(wb.start_orthanc_dicomweb(workdir / name))
        london, kent, wessex = started
        for peer in started:
            sb.wait_for_echo(peer)
        expected = set()
        for i, peer in enumerate(started):
            expected |= set(fill(peer, workdir / f"data-{i}", args.studies, 100 * i))
        os.environ["NETPACS_REGION_FILE"] = str(region(workdir / "region.toml", *started))
        (workdir / "netpacs").mkdir()
        netpacs = sb.start_netpacs(workdir / "netpacs", sb.DEFAULT_NETPACS_CMD)
        started.append(netpacs)
        sb.wait_for_echo(netpacs)
        base = f"http://{sb.HOST}:{netpacs.http_port}"
        wb.wait_for_http(f"{base}/dicomweb", netpacs)
        token = httpx.post(
            f"{base}/auth/token", data={"username": "rtp.admin", "password": "demo"}
        ).json()["access_token"]
        networks = [
            Network(
                "London",
                Protocol.DICOMWEB,
                dicomweb=DicomwebAccess(f"http://{sb.HOST}:{london.http_port}/dicom-web"),
            ),
            Network(
                "Kent",
                Protocol.DICOMWEB,
                dicomweb=DicomwebAccess(f"http://{sb.HOST}:{kent.http_port}/dicom-web"),
            ),
            Network(
                "Wessex",
                Protocol.DIMSE,
                dimse=DimseAccess(wessex.aet, sb.HOST, wessex.port),
            ),
        ]
        web = DicomwebPeer(max_bytes=4 << 20, max_studies=500, max_retrieve_bytes=1 << 30)
        dimse = DimsePeer(our_ae_title="NETPACS", max_studies=500)
        params = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}
        ratios, federated, slowest = [], [], []
        parallel: list[float] = []
        parallel_ratios: list[float] = []
        pool = cf.ThreadPoolExecutor(max_workers=3)
        per_network: dict[str, list[float]] = {n.name: [] for n in networks}
        failures = 0
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            for round_ in range(args.rounds + 3):
                times = []
                for n in networks:
                    t0 = time.perf_counter()
                    items = (web if n.protocol is Protocol.DICOMWEB else dimse).find_studies(n, NHS)
                    times.append(time.perf_counter() - t0)
                    assert len(items) == args.studies, (n.name, len(items))
                    if round_ >= 3:
                        per_network[n.name].append(times[-1])
                # The same three asked at once from here: what the networks cost when
                # they answer together on this machine, without netpacs.
                t0 = time.perf_counter()
                together = [
                    pool.submit(
                        (web if n.protocol is Protocol.DICOMWEB else dimse).find_studies, n, NHS
                    )
                    for n in networks
                ]
                for future in together:
                    future.result()
                at_once = time.perf_counter() - t0
                t0 = time.perf_counter()
                response = client.get(f"{base}/dicomweb/studies", params=params)
                elapsed = time.perf_counter() - t0
                found = {m["0020000D"]["Value"][0] for m in response.json()}
                if (
                    response.status_code != 200
                    or "warning" in response.headers
                    or found != expected
                ):
                    failures += 1
                    print(
                        f"round {round_}: {response.status_code} {response.headers.get('warning')}"
                    )
                if round_ >= 3:  # the first rounds warm connections and caches
                    federated.append(elapsed)
                    slowest.append(max(times))
                    ratios.append(elapsed / max(times))
                    parallel.append(at_once)
                    parallel_ratios.append(elapsed / at_once)
        web.close()
        pool.shutdown()
        if args.viewer:
            viewer_rounds(args.viewer, workdir, kent, netpacs, token)
        ms = lambda xs: f"{statistics.median(xs) * 1000:.1f} ms"  # noqa: E731
        print(f"{args.rounds} rounds, {args.studies} studies per network, 3 networks")
        for name, xs in per_network.items():
            print(f"  {name} direct: median {ms(xs)}")
        print(f"  slowest network per round: median {ms(slowest)}")
        print(f"  federated QIDO-RS through netpacs: median {ms(federated)}")
        print(
            f"  ratio federated / slowest: median {statistics.median(ratios):.2f} "
            f"(p90 {sorted(ratios)[int(len(ratios) * 0.9) - 1]:.2f}; target <= 1.2)"
        )
        print(f"  the three asked at once from the bench: median {ms(parallel)}")
        print(f"  ratio federated / asked at once: median {statistics.median(parallel_ratios):.2f}")
        return 1 if failures else 0
    finally:
        for receiver in started:
            receiver.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
