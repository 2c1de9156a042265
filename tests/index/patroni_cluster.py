"""A Patroni cluster on 127.0.0.1 for fault tests: one etcd, PostgreSQL nodes run by
Patroni from the reference configuration in deploy/patroni (rendered here exactly as
``envsubst`` would render it in production).

PostgreSQL refuses to run as root, so under root Patroni (and with it every postgres)
runs as the ``postgres`` OS user, with an interpreter that user may execute and a copy
of Patroni and its dependencies from the test environment (and no other packages) on
its path.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from tests.conftest import ROOT, free_port, wait_for_port, wait_until

DEPLOY = ROOT / "deploy" / "patroni"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


def render(template: Path, values: dict[str, str]) -> str:
    """The deploy template with its ``${NAME}`` variables set (envsubst's syntax)."""
    return string.Template(template.read_text()).substitute(values)


@dataclass
class Node:
    name: str
    pg_port: int
    api_port: int
    data_dir: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])


@dataclass
class PatroniCluster:
    folder: Path
    etcd_port: int
    nodes: list[Node]
    netpacs_password: str
    _etcd: subprocess.Popen[bytes] | None = None
    _run_as: dict[str, Any] = field(default_factory=dict)
    _python: list[str] = field(default_factory=list)
    _pythonpath: str = ""

    @property
    def url(self) -> str:
        """netpacs's NETPACS_DATABASE_URL: libpq's multi-host form, primary only."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return (
            f"postgresql+psycopg://netpacs:{self.netpacs_password}@{hosts}/netpacs"
            "?target_session_attrs=read-write"
        )

    def members(self) -> list[dict[str, Any]]:
        """The cluster as Patroni's REST API of any answering node reports it."""
        for node in self.nodes:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{node.api}/cluster", timeout=2) as r,
            ):
                return list(json.load(r)["members"])
        return []

    def leader(self) -> str | None:
        for m in self.members():
            if m["role"] == "leader" and m["state"] == "running":
                return str(m["name"])
        return None

    def sync_standby(self) -> str | None:
        for m in self.members():
            if m["role"] == "sync_standby" and m["state"] == "streaming":
                return str(m["name"])
        return None

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def log(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    # -- start and stop -----------------------------------------------------------------
    def start(self) -> None:
        etcd_peer = free_port()
        self._etcd = subprocess.Popen(
            [
                "etcd",
                "--name=etcd1",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=etcd1=http://127.0.0.1:{etcd_peer}",
            ],
            stdout=(self.folder / "etcd.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.etcd_port, proc=self._etcd)
        self._python, self._run_as, self._pythonpath = patroni_runner(self.folder)
        for i, node in enumerate(self.nodes):
            self._start_node(node)
            if i == 0:  # the first node initialises the cluster; the others clone it
                wait_until(self.leader, timeout=90, what=f"{node.name} leading\n{self.log()}")
        wait_until(self.sync_standby, timeout=90, what=f"a synchronous standby\n{self.log()}")

    def _start_node(self, node: Node) -> None:
        env = dict(
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            HOME=str(self.folder),
            LANG="C.UTF-8",
            PYTHONPATH=self._pythonpath,
            PG_NETPACS_PASSWORD=self.netpacs_password,
        )
        node.proc = subprocess.Popen(
            [*self._python, "-m", "patroni", str(node.config)],
            env=env,
            cwd=self.folder,
            stdout=(self.folder / f"{node.name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            **self._run_as,
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
            with contextlib.suppress(OSError, ValueError, IndexError):  # a postgres left over
                os.kill(node.postmaster_pid(), signal.SIGKILL)
        if self._etcd is not None:
            self._etcd.terminate()
            try:
                self._etcd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._etcd.kill()
                self._etcd.wait()


def patroni_site(folder: Path) -> Path:
    """A copy of Patroni and what it imports (the etcd3 extra, psycopg) from this
    environment, in ``folder``: the postgres user can read it wherever the checkout and
    its virtual environment live (under /root, say)."""
    site = folder / "site"
    wanted = ["patroni", "psycopg", "psycopg-binary"]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": "etcd3"}):
                wanted.append(req.name)
        for file in dist.files or []:
            if ".." in file.parts:
                continue  # console scripts outside site-packages
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(file))), target)
    return site


def patroni_runner(folder: Path) -> tuple[list[str], dict[str, Any], str]:
    """The interpreter to run Patroni with, Popen's arguments to run it as the
    ``postgres`` OS user when this process is root, and its PYTHONPATH."""
    purelib = sysconfig.get_paths()["purelib"]
    if os.geteuid() != 0:
        return [sys.executable], {}, purelib
    pw = pwd.getpwnam("postgres")
    run_as: dict[str, Any] = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    purelib = str(patroni_site(folder))
    for path in [folder / "site", *(folder / "site").rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    candidates = [str(Path(sys.executable).resolve()), "/usr/bin/python3.11", "/usr/bin/python3"]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-S", "-c", "import patroni, patroni.dcs.etcd3, psycopg"],
                env={"PYTHONPATH": purelib, "HOME": str(folder)},
                cwd=folder,
                capture_output=True,
                check=False,
                **run_as,
            )
        except OSError:  # e.g. an interpreter under /root
            continue
        if probe.returncode == 0:
            # -S: only these site-packages, not the system's (another pyOpenSSL).
            return [python, "-S"], run_as, purelib
    raise RuntimeError(
        f"no Python interpreter the postgres user can run imports patroni from {purelib}"
    )


@contextmanager
def patroni_cluster(nodes: int = 2) -> Iterator[PatroniCluster]:
    """A running cluster: a primary and ``nodes - 1`` standbys, one synchronous."""
    if shutil.which("etcd") is None:
        raise RuntimeError("etcd is not installed: `make test-setup` installs etcd-server")
    folder = Path(tempfile.mkdtemp(prefix="netpacs-patroni-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    # The post-bootstrap script beside the configuration, where the postgres user can
    # read it whatever the permissions of the checkout.
    deploy = folder / "deploy"
    shutil.copytree(DEPLOY, deploy)
    etcd_port = free_port()
    secret = {k: secrets.token_hex(8) for k in ("su", "rep", "np")}
    members: list[Node] = []
    for i in range(1, nodes + 1):
        node = Node(
            name=f"pg{i}",
            pg_port=free_port(),
            api_port=free_port(),
            data_dir=folder / f"pg{i}",
            config=folder / f"pg{i}.yml",
        )
        node.config.write_text(
            render(
                DEPLOY / "patroni.yml",
                {
                    "PATRONI_NODE_NAME": node.name,
                    "PATRONI_RESTAPI": f"127.0.0.1:{node.api_port}",
                    "PG_LISTEN": f"127.0.0.1:{node.pg_port}",
                    "PG_DATA_DIR": str(node.data_dir),
                    "PG_BIN_DIR": str(PG_BIN_DIR),
                    "PG_SOCKET_DIR": str(folder),
                    "ETCD_HOSTS": f"127.0.0.1:{etcd_port}",
                    "PG_SUPERUSER_PASSWORD": secret["su"],
                    "PG_REPLICATION_PASSWORD": secret["rep"],
                    "PG_CLIENT_NETWORK": "127.0.0.1/32",
                    "PATRONI_DEPLOY_DIR": str(deploy),
                },
            )
        )
        members.append(node)
    if os.geteuid() == 0:
        for path in [*folder.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
    cluster = PatroniCluster(folder, etcd_port, members, netpacs_password=secret["np"])
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def kill_postmaster(node: Node) -> float:
    """SIGKILL ``node``'s postmaster (its backends die with it); returns when."""
    pid = node.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()
