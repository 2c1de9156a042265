"""Shared fixtures: index databases (SQLite and PostgreSQL), a running netpacs, DCMTK.

Every test that takes ``database_url`` runs twice: on a SQLite file and on a fresh
PostgreSQL database (127.0.0.1:5432; `make test` starts the server where none runs).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from netpacs.app.settings import BUNDLED_DEMO_REGION

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


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port for a server a test starts, never handed out twice in a run.

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` lies inside
    it, and an outgoing connection (to PostgreSQL, say) may take it as its source
    port between the test choosing it and the server binding it.
    """
    low = max(1024, min(10000, _EPHEMERAL_LOW - 2000))
    for _ in range(1000):
        port = random.randrange(low, _EPHEMERAL_LOW)
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


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"netpacs_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
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
                f"{self.base_url}/auth/token", data={"username": user, "password": password}
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
        deadline = time.monotonic() + 30
        # A process blocked in fsync dies only when the write completes: wait until the
        # workers are really gone, so that their listening socket is closed.
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            if time.monotonic() > deadline:
                raise TimeoutError("netpacs workers survived SIGKILL")
            time.sleep(0.05)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NETPACS), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture
def workstation_port() -> int:
    return free_port()


@pytest.fixture
def region_file(tmp_path: Path, workstation_port: int) -> Path:
    return write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})


@pytest.fixture
def netpacs(tmp_path: Path, database_url: str, region_file: Path) -> Iterator[Netpacs]:
    server = Netpacs(data_dir=tmp_path / "data", database_url=database_url, region_file=region_file)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (TCP_NODELAY on), capturing its output."""
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, env=env)


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
