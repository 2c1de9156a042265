"""Shared fixtures: index databases (SQLite and PostgreSQL), netpacs running as a server
or in this process, DCMTK.

Every test that takes ``database_url`` runs twice: on a SQLite file and on a fresh
PostgreSQL database (127.0.0.1:5432; `make test` starts the server where none runs).
``module_database_url`` does the same once per test module.

Two ways to reach netpacs:

- :class:`Netpacs` is a real ``netpacs serve`` (every process, every port), for tests
  where the wire is the point: DIMSE, MLLP, crashes, the CLI against a running server.
  ``netpacs`` starts one per test, ``module_netpacs`` one per test module.
- :class:`HttpApp` is the HTTP application the composition root builds, called in
  this process without a socket (``http_app`` per test, ``module_http_app`` per
  module), for tests of what the HTTP routes answer. It starts from a copy of an index
  already at the newest migration, so a fresh archive costs a file copy (SQLite) or a
  ``CREATE DATABASE ... TEMPLATE`` (PostgreSQL).

Under pytest-xdist each worker hands out ports from its own share of the range, and
every database and folder name is unique to its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import requests.adapters
import sqlalchemy as sa
from dicomweb_client import DICOMwebClient
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict, HTTPResponse

from netpacs.adapters.hl7.server import Hl7Endpoint
from netpacs.adapters.http.app import create_app
from netpacs.app.container import Archive, build_archive
from netpacs.app.roles import adt_service, http_services
from netpacs.app.settings import BUNDLED_DEMO_REGION, Settings
from netpacs.app.startup import prepare
from netpacs.domain.dicom.part10 import read_file_meta
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.peer import Peer
from netpacs.services.access_policy import Caller

ROOT = Path(__file__).resolve().parents[1]
NETPACS = ROOT / ".venv" / "bin" / "netpacs"
PG_ADMIN_URL = os.environ.get(
    "NETPACS_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_range() -> range:
    """The ports this process may hand out: below the kernel's ephemeral range, and under
    pytest-xdist this worker's share of them, so that two workers never pick the same."""
    high = _ephemeral_low()
    low = max(1024, min(10000, high - 2000))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = (high - low) // max(1, workers)
    return range(low + worker * share, low + (worker + 1) * share)


_PORTS = _port_range()
_handed_out: set[int] = set()


def _temporary_directories_in_memory() -> None:
    """tmp_path and its kin on tmpfs where there is a roomy one (pytest's own setting).

    Stores fdatasync every object: on this machine's disk a test run spends minutes
    in them, on tmpfs none. Nothing tested here depends on the disk (a SIGKILL keeps
    the page cache; no test cuts the power). A container's /dev/shm is often 64 MB,
    so it is used only with 4 GiB and a million inodes free.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return
    room = os.statvfs(shm)
    if room.f_bavail * room.f_frsize >= 4 << 30 and room.f_favail >= 1_000_000:
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(shm))


_temporary_directories_in_memory()


def free_port() -> int:
    """A free TCP port for a server a test starts, never handed out twice in a run.

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` lies inside
    it, and an outgoing connection (to PostgreSQL, say) may take it as its source
    port between the test choosing it and the server binding it.
    """
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def wait_until(
    condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition"
) -> Any:
    """Poll ``condition`` until it returns something true (returned), or fail after
    ``timeout`` seconds: a wait on what a test expects instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


@contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database, empty or a copy of ``template``; dropped afterwards."""
    name = f"netpacs_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, empty index database for one test module, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'index.sqlite'}"
        return
    with postgres_database() as url:
        yield url


def write_region(path: Path, workstation_ports: dict[str, int]) -> Path:
    """The bundled demo region with the given workstation AEs moved to test ports."""
    text = BUNDLED_DEMO_REGION.read_text()
    for ae, port in workstation_ports.items():
        text, n = re.subn(
            rf'(ae_title = "{ae}"\nhost = "127.0.0.1"\nport = )\d+', rf"\g<1>{port}", text
        )
        assert n == 1, f"workstation {ae} not in the demo region"
    path.write_text(text)
    return path


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (TCP_NODELAY on), capturing its output."""
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, env=env)


# -- a real server ---------------------------------------------------------------------


@dataclass
class Netpacs:
    """A real `netpacs serve` process started by a test."""

    data_dir: Path
    database_url: str
    region_file: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    mllp_port: int = field(default_factory=free_port)
    processes: int = 2
    http_processes: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Demo mode: users <ods>.<role> with password "demo" (issue 5). Tests of what
    # the archive does act as East Sussex's PACS administrator, who sees everything.
    user: str = "rxc.admin"
    _tokens: dict[str, str] = field(default_factory=dict)
    _client: httpx.Client | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            NETPACS_DATA_DIR=str(self.data_dir),
            NETPACS_DATABASE_URL=self.database_url,
            NETPACS_DIMSE_PORT=str(self.port),
            NETPACS_HTTP_PORT=str(self.http_port),
            NETPACS_MLLP_PORT=str(self.mllp_port),
            NETPACS_REGION_FILE=str(self.region_file),
            NETPACS_DIMSE_PROCESSES=str(self.processes),
            NETPACS_HTTP_PROCESSES=str(self.http_processes),
            NETPACS_DEMO="true",
            TCP_NODELAY="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> Netpacs:
        self.log_path = self.data_dir.parent / f"netpacs-{self.port}.log"
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(NETPACS), "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        workers = self.processes + self.http_processes + 1  # one MLLP worker
        while self.log()[before:].count("listening on port") < workers:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netpacs exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"netpacs did not start:\n{self.log()}")
            time.sleep(0.05)
        wait_for_port(self.port, proc=self.proc)
        wait_for_port(self.http_port, proc=self.proc)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicomweb"

    def token(self, user: str | None = None, password: str = "demo") -> str:
        """An access token from POST /auth/token (as API clients get one)."""
        user = user or self.user
        if user not in self._tokens:
            response = httpx.post(
                f"{self.base_url}/auth/token",
                data={"username": user, "password": password},
                timeout=60,  # a password hash on a busy machine, in a process just started
            )
            assert response.status_code == 200, response.text
            self._tokens[user] = response.json()["access_token"]
        return self._tokens[user]

    def auth(self, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    @property
    def http(self) -> httpx.Client:
        """An HTTP client signed in as :attr:`user` (bearer token)."""
        if self._client is None:
            self._client = httpx.Client(headers=self.auth(), timeout=120)
        return self._client

    def store(self, *paths: Path, aet: str = "EDGH_CT1") -> None:
        """Send Part 10 files with DCMTK storescu from ``aet``, as a modality would; fail
        the test on error."""
        result = dcmtk(
            "storescu", "-aet", aet, "-aec", "NETPACS", "127.0.0.1", str(self.port),
            *map(str, paths),
        )  # fmt: skip
        assert result.returncode == 0 and "Failed" not in result.stderr, result.stderr

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._tokens.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server and every worker process (a crash, not a shutdown)."""
        if self.proc is None:
            return
        found = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        pids = [int(p) for p in found.stdout.split()] + [self.proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        # A process blocked in fsync dies only when the write completes: wait until the
        # workers are really gone, so that their listening socket is closed.
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
            what="the end of every netpacs worker after SIGKILL",
        )
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NETPACS), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def workstation_port() -> int:
    """The port of workstation RTP_WS1 (a DCMTK storescp when a test starts one): the same
    for a whole module, so that a server shared by the module knows where to send."""
    return free_port()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The modules and tests collected are frozen (as ``netpacs serve`` freezes what its
    workers inherit): the collector's full passes in this process skip them."""
    gc.freeze()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report ends with the last lines of each netpacs server it used:
    a failure seen only in CI can then be read from CI's output."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, Netpacs) and value.log_path is not None:
                tail = "\n".join(value.log().splitlines()[-60:])
                report.sections.append((f"netpacs log of fixture {name!r} (last 60 lines)", tail))
    return report


@pytest.fixture
def region_file(tmp_path: Path, workstation_port: int) -> Path:
    return write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})


@pytest.fixture(scope="module")
def module_region_file(tmp_path_factory: pytest.TempPathFactory, workstation_port: int) -> Path:
    folder = tmp_path_factory.mktemp("region")
    return write_region(folder / "region.toml", {"RTP_WS1": workstation_port})


@pytest.fixture
def netpacs(tmp_path: Path, database_url: str, region_file: Path) -> Iterator[Netpacs]:
    server = Netpacs(data_dir=tmp_path / "data", database_url=database_url, region_file=region_file)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_netpacs(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str, module_region_file: Path
) -> Iterator[Netpacs]:
    """One real server for a whole test module, on each backend. Its tests share the
    archive: each uses its own patients and UIDs and asserts on its own data only."""
    server = Netpacs(
        data_dir=tmp_path_factory.mktemp("netpacs") / "data",
        database_url=module_database_url,
        region_file=module_region_file,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storescp(tmp_path: Path, workstation_port: int) -> Iterator[Path]:
    """A DCMTK storescp acting as workstation RTP_WS1 that accepts every transfer syntax
    (+xa); yields the folder it writes to."""
    with workstation(tmp_path / "ws1", workstation_port, "+xa") as out:
        yield out


@contextmanager
def workstation(out: Path, port: int, *options: str) -> Iterator[Path]:
    """DCMTK storescp as workstation RTP_WS1 on ``port`` writing to ``out``."""
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "RTP_WS1", "-od", str(out), *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    wait_for_port(port, proc=proc)
    try:
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the HTTP application in this process ----------------------------------------------


class AsgiTransport(httpx.BaseTransport):
    """Requests of synchronous httpx clients answered by an ASGI app in this process.

    httpx's ASGITransport is asynchronous: it runs here on an event loop of our own,
    in a thread, as a server's loop would. Closing a client leaves it open (several
    clients share it); :meth:`shutdown` ends it.
    """

    def __init__(self, app: Any, timeout: float = 120) -> None:
        self._asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asgi", daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def call() -> httpx.Response:
            response = await self._asgi.handle_async_request(copy)
            raw = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            return httpx.Response(
                response.status_code, headers=response.headers, stream=httpx.ByteStream(raw)
            )

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(timeout=self._timeout)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


class RequestsOverAsgi(requests.adapters.BaseAdapter):
    """A requests adapter that sends through an :class:`AsgiTransport`, for clients built
    on requests (dicomweb-client, schemathesis)."""

    def __init__(self, transport: AsgiTransport) -> None:
        super().__init__()
        self._client = httpx.Client(transport=transport, timeout=120)

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **_kwargs: Any
    ) -> requests.Response:
        body = request.body
        if body is None:
            content = b""
        elif isinstance(body, str):
            content = body.encode()
        elif isinstance(body, bytes):
            content = body
        else:
            content = b"".join(body)  # a generator of chunks (a chunked upload)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "transfer-encoding"}
        answer = self._client.request(
            str(request.method), str(request.url), headers=headers, content=content
        )
        headers = HTTPHeaderDict()
        for name, value in answer.headers.multi_items():
            if name.lower() != "content-encoding":  # httpx decoded the content already
                headers.add(name, value)
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.reason_phrase
        response.headers = CaseInsensitiveDict(headers)
        response._content = answer.content
        response.raw = HTTPResponse(
            body=io.BytesIO(answer.content),
            headers=headers,
            status=answer.status_code,
            reason=answer.reason_phrase,
            version=11,
            preload_content=False,
        )
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        self._client.close()


class _IndexTemplates:
    """Index databases at the newest migration with the demo users, made once per test
    session (per xdist worker) by ``prepare``; each app starts from a copy."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._sqlite: Path | None = None
        self._postgres: str | None = None
        self._stack = contextlib.ExitStack()

    def _prepare(self, url: str, name: str) -> None:
        prepare(Settings(data_dir=self._folder / name, database_url=url, demo=True))

    @contextmanager
    def database(self, backend: str, folder: Path) -> Iterator[str]:
        if backend == "sqlite":
            if self._sqlite is None:
                template = self._folder / "sqlite" / "index.sqlite"
                self._prepare(f"sqlite:///{template}", "sqlite")
                self._sqlite = template
            for file in self._sqlite.parent.glob("index.sqlite*"):
                shutil.copyfile(file, folder / file.name)
            yield f"sqlite:///{folder / 'index.sqlite'}"
            return
        if self._postgres is None:
            url = self._stack.enter_context(postgres_database())
            self._prepare(url, "postgresql")
            self._postgres = url.rsplit("/", 1)[1]
        with postgres_database(template=self._postgres) as url:
            yield url

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def index_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_IndexTemplates]:
    templates = _IndexTemplates(tmp_path_factory.mktemp("index-templates"))
    try:
        yield templates
    finally:
        templates.close()


@dataclass
class HttpApp:
    """netpacs's HTTP application in this process, as an HTTP worker builds it.

    Requests go through the ASGI interface without a socket; sign-in is real (tokens
    from POST /auth/token). Data arrives as it would from outside: STOW-RS through the
    app, C-STORE and ADT through the services the DIMSE and MLLP workers call.
    """

    settings: Settings
    archive: Archive
    transport: AsgiTransport
    # Tests of what the archive does act as East Sussex's PACS administrator.
    user: str = "rxc.admin"
    base_url: str = "http://testserver"
    _tokens: dict[str, str] = field(default_factory=dict)
    _client: httpx.Client | None = None

    @classmethod
    def start(cls, settings: Settings) -> HttpApp:
        """The composition root's steps for an HTTP worker (app/roles.py, run_http)."""
        prepare(settings)
        archive = build_archive(settings)
        app = create_app(http_services(archive, settings))
        return cls(settings, archive, AsgiTransport(app))

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def database_url(self) -> str:
        return self.settings.effective_database_url

    @property
    def region_file(self) -> Path:
        return self.settings.effective_region_file

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicomweb"

    def anonymous(self, **kwargs: Any) -> httpx.Client:
        """A client that has not signed in."""
        kwargs.setdefault("timeout", 120)
        return httpx.Client(transport=self.transport, base_url=self.base_url, **kwargs)

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client signed in as ``user`` (default :attr:`user`) with a bearer token."""
        headers = {**self.auth(user), **kwargs.pop("headers", {})}
        return self.anonymous(headers=headers, **kwargs)

    def token(self, user: str | None = None, password: str = "demo") -> str:
        """An access token from POST /auth/token (as API clients get one)."""
        user = user or self.user
        if user not in self._tokens:
            with self.anonymous() as c:
                response = c.post("/auth/token", data={"username": user, "password": password})
            assert response.status_code == 200, response.text
            self._tokens[user] = response.json()["access_token"]
        return self._tokens[user]

    def auth(self, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    @property
    def http(self) -> httpx.Client:
        """A client signed in as :attr:`user`."""
        if self._client is None:
            self._client = self.client()
        return self._client

    def session(self) -> requests.Session:
        """A requests session whose requests to this app (at its base URL or its public
        URL) this app answers."""
        session = requests.Session()
        adapter = RequestsOverAsgi(self.transport)
        for url in (self.base_url, self.settings.public_url):
            if url:
                session.mount(url, adapter)
        return session

    def dicomweb(self, user: str | None = None) -> DICOMwebClient:
        """dicomweb-client signed in as ``user``."""
        return DICOMwebClient(self.dicomweb_url, session=self.session(), headers=self.auth(user))

    def store(self, *paths: Path, aet: str = "EDGH_CT1") -> None:
        """Store Part 10 files as an association from modality ``aet`` would: the AE
        admitted by the access policy, each data set in its own transfer syntax stored
        through one audited batch (the DIMSE adapter's steps, without the wire)."""
        caller = self.archive.access.calling_ae(aet, "127.0.0.1")
        assert isinstance(caller, Caller), caller
        ae = caller.ae
        origin = Origin(
            Protocol.DIMSE,
            ae_title=aet,
            trust=ae.trust if ae else None,
            site=ae.site if ae else None,
        )
        with self.archive.stores.session(caller.principal, origin) as batch:
            for path in paths:
                data = path.read_bytes()
                meta = read_file_meta(data)
                outcome = batch.store_dataset(
                    data[meta.dataset_offset :],
                    transfer_syntax_uid=meta.transfer_syntax_uid,
                    sop_class_uid=meta.media_storage_sop_class_uid,
                    sop_instance_uid=meta.media_storage_sop_instance_uid,
                )
                assert outcome.status.ok, (path, outcome)

    def adt(self, message: str) -> str:
        """Apply an HL7 v2 message as the MLLP worker does; the acknowledgement's text."""
        service, engine = adt_service(self.settings)
        try:
            endpoint = Hl7Endpoint(service, service.caller(Peer("127.0.0.1")))
            return endpoint(message.encode("utf-8")).decode("utf-8")
        finally:
            engine.dispose()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.transport.shutdown()
        self.archive.close()


@contextmanager
def http_app_on(
    templates: _IndexTemplates, backend: str, folder: Path, **settings: Any
) -> Iterator[HttpApp]:
    """An :class:`HttpApp` with its own data directory and index, in demo mode;
    ``settings`` override the test defaults (``region_file``, ``public_url``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    with templates.database(backend, folder) as url:
        app = HttpApp.start(
            Settings(
                **{
                    "data_dir": folder / "data",
                    "database_url": url,
                    "demo": True,
                    # the Host of HttpApp's requests (http://testserver)
                    "allowed_hosts": "testserver",
                    **settings,
                }
            )
        )
        try:
            yield app
        finally:
            app.close()


@pytest.fixture
def http_settings() -> dict[str, Any]:
    """Settings of ``http_app`` beyond the test defaults; a module that needs others
    (a region file, a public URL) overrides this fixture."""
    return {}


@pytest.fixture(params=["sqlite", "postgresql"])
def http_app(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    index_templates: _IndexTemplates,
    http_settings: dict[str, Any],
) -> Iterator[HttpApp]:
    """netpacs's HTTP app in this process with an archive of its own, on each backend."""
    with http_app_on(index_templates, request.param, tmp_path / "app", **http_settings) as app:
        yield app


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_http_app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    index_templates: _IndexTemplates,
) -> Iterator[HttpApp]:
    """One in-process HTTP app for a whole test module, on each backend."""
    with http_app_on(index_templates, request.param, tmp_path_factory.mktemp("app")) as app:
        yield app
