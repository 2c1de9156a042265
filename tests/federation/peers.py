"""The neighbouring networks of the federation tests, as real archives on free ports:
Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) over DICOMweb or DIMSE, and small
HTTP servers that answer badly (garbage, a huge body, nothing at all)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pydicom

from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.synthetic import write_ct_series
from tests.conftest import free_port, wait_until

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: The test patient: an NHS number of the 999 test range with a valid check digit.
NHS = "9990001235"


@dataclass
class Orthanc:
    name: str
    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def upload(self, *paths: Path) -> None:
        with httpx.Client(timeout=30) as client:
            for path in paths:
                response = client.post(f"{self.rest}/instances", content=path.read_bytes())
                assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_orthanc(
    workdir: Path, name: str, aet: str, *, modalities: dict[str, list[object]] | None = None
) -> Orthanc:
    """An Orthanc with its DICOMweb plugin at ``/dicom-web`` and a DICOM port."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": name,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities or {},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [ORTHANC, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    peer = Orthanc(name, aet, dicom_port, http_port, workdir, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc {name} exited:\n{peer.log()}")
        try:
            return httpx.get(f"{peer.rest}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=60, what=f"Orthanc {name} answering")
    return peer


def patient_study(folder: Path, *, patient_id: str = NHS, slices: int = 2, seed: int = 0) -> str:
    """A small CT study of the test patient written to ``folder``; its Study UID."""
    paths = write_ct_series(
        folder,
        slices,
        rows=64,
        columns=64,
        patient_id=patient_id,
        patient_name="FED^FIONA",
        seed=seed,
    )
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


# -- peers that answer badly ----------------------------------------------------------------


class BadPeer:
    """An HTTP server on a free port answering every GET with ``body`` (a callable that
    writes to the handler), in a thread; ``stop`` ends it."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.port = free_port()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def garbage(handler: BaseHTTPRequestHandler) -> None:
    body = b"<html>this is not DICOM JSON"
    handler.send_response(200)
    handler.send_header("Content-Type", "application/dicom+json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def huge(handler: BaseHTTPRequestHandler) -> None:
    """A chunked answer that would go on for 10 GB (it stops when we hang up)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/dicom+json")
    handler.end_headers()  # no length: read until closed
    chunk = b"[" + b" " * (1 << 20)
    for _ in range(10 * 1024):
        handler.wfile.write(chunk)
        chunk = b" " * (1 << 20)


MIXED_STUDY = "1.2.826.0.1.3680043.10.543.14.1"  # a study of the test patient at "Rye"


def mixed(handler: BaseHTTPRequestHandler, also: list[str] | None = None) -> None:
    """A JSON answer with one good study of the test patient, one of another patient
    (as an archive that ignores the matching key would send), and one unreadable item;
    and a copy of each study UID in ``also`` (studies we hold too)."""
    ours = {
        "0020000D": {"vr": "UI", "Value": [MIXED_STUDY]},
        "00100020": {"vr": "LO", "Value": [NHS]},
        "00081030": {"vr": "LO", "Value": ["CT CHEST"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "FED^FIONA"}]},
        "00201208": {"vr": "IS", "Value": ["12"]},
        "7FE00010": {"vr": "OB", "InlineBinary": "AAAA"},  # not a study attribute: dropped
    }
    other = {**ours, "00100020": {"vr": "LO", "Value": ["9990001243"]}}
    other["0020000D"] = {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.543.14.2"]}
    unreadable = {"00100020": {"vr": "LO", "Value": [NHS]}, "0020000D": {"Value": ["x y"]}}
    copies = [{**ours, "0020000D": {"vr": "UI", "Value": [uid]}} for uid in also or []]
    body = json.dumps([ours, other, unreadable, "not an object", *copies]).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/dicom+json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Silent:
    """A TCP port that accepts connections and never answers (a hung archive)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        self.sock.close()


def region_with_networks(path: Path, networks: str, *, workstation_port: int | None = None) -> Path:
    """The bundled demo region with its ``[[networks]]`` replaced by ``networks`` (and
    East Surrey's workstation RTP_WS1 on ``workstation_port``)."""
    text = BUNDLED_DEMO_REGION.read_text()
    if workstation_port is not None:
        old = 'ae_title = "RTP_WS1"\nhost = "127.0.0.1"\nport = 11201'
        assert old in text
        text = text.replace(old, old.replace("11201", str(workstation_port)))
    start = text.index("[[networks]]")
    path.write_text(text[:start] + networks)
    return path


def dicomweb_network(name: str, url: str, timeout: float = 2.0) -> str:
    return (
        f'[[networks]]\nname = "{name}"\nprotocol = "dicomweb"\nurl = "{url}"\n'
        f"timeout_seconds = {timeout}\n\n"
    )


def dimse_network(name: str, aet: str, port: int, retrieve: str = "get") -> str:
    return (
        f'[[networks]]\nname = "{name}"\nprotocol = "dimse"\nae_title = "{aet}"\n'
        f'host = "127.0.0.1"\nport = {port}\nretrieve = "{retrieve}"\n\n'
    )
