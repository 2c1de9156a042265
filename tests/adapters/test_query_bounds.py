"""Hostile queries (issue 17, item 11): wild cards on an attribute the index has no
column for are matched in linear time, a pathological matching value is refused, and a
query that works longer than its limit is stopped with a clear error; through a real
``netpacs serve`` with QIDO-RS (HTTP) and C-FIND (DCMTK findscu).

Before the fix each ``*`` became ``.*`` in a backtracking regular expression: a
14-star pattern against a 30-character value did not finish, and held the worker's
interpreter lock so that unrelated requests waited too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Netpacs, dcmtk
from tests.factories import ct_dataset, write

# ProtocolName (0018,1030) has no column in the index: it is matched on stored JSON.
LONG_A = "a" * 30
A_THEN_B = "a" * 20 + "b"
STARS_THEN_B = "*a" * 14 + "*b"  # 15 stars: only A_THEN_B
STARS_OF_A = "*a" * 14 + "*"  # 15 stars: LONG_A and A_THEN_B
BOUND = 1.0  # seconds a hostile query may take to answer


class Stored:
    def __init__(self, server: Netpacs, folder: Path) -> None:
        self.patient = f"QB{generate_uid()[-8:]}"
        self.by_protocol: dict[str, str] = {}
        paths = []
        for i, protocol in enumerate((LONG_A, A_THEN_B, "xyz")):
            uid = generate_uid()
            self.by_protocol[protocol] = uid
            ds = ct_dataset(StudyInstanceUID=uid, PatientID=self.patient, ProtocolName=protocol)
            paths.append(write(ds, folder / f"{i}.dcm"))
        server.store(*paths)  # from EDGH_CT1, a modality of RXC: RXC sees them


@pytest.fixture(scope="module")
def server(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


@pytest.fixture(scope="module")
def stored(server: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    return Stored(server, tmp_path_factory.mktemp("in"))


def qido(server: Netpacs, timeout: float = 10, **params: str) -> httpx.Response:
    return server.http.get(f"{server.dicomweb_url}/studies", params=params, timeout=timeout)


def uids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {m["0020000D"]["Value"][0] for m in response.json()}


def findscu(server: Netpacs, folder: Path, *keys: str) -> tuple[str, list[pydicom.Dataset]]:
    """C-FIND (Study Root, STUDY level) from RXC_WS1: findscu's log and its answers."""
    out = folder / f"find-{generate_uid()[-8:]}"
    out.mkdir()
    args = ["-S", "-d", "-aet", "RXC_WS1", "-aec", "NETPACS", "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys):
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port), timeout=30)
    return result.stdout + result.stderr, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*"))]


def test_qido_with_fifteen_stars_on_an_unindexed_attribute_answers_within_a_second(
    server: Netpacs, stored: Stored
) -> None:
    server.auth()  # signed in before the clock starts
    start = time.monotonic()
    only_b = qido(server, PatientID=stored.patient, ProtocolName=STARS_THEN_B)
    both = qido(server, PatientID=stored.patient, ProtocolName=STARS_OF_A)
    upper = qido(server, PatientID=stored.patient, ProtocolName=STARS_OF_A.upper())
    one_char = qido(server, PatientID=stored.patient, ProtocolName="x?z")
    elapsed = time.monotonic() - start

    assert uids(only_b) == {stored.by_protocol[A_THEN_B]}
    assert uids(both) == {stored.by_protocol[LONG_A], stored.by_protocol[A_THEN_B]}
    assert uids(upper) == set()  # LO is matched case-sensitively
    assert uids(one_char) == {stored.by_protocol["xyz"]}
    assert elapsed < 4 * BOUND


def test_cfind_with_fifteen_stars_on_an_unindexed_attribute_answers_within_a_second(
    server: Netpacs, stored: Stored, tmp_path: Path
) -> None:
    start = time.monotonic()
    log, answers = findscu(
        server, tmp_path, f"PatientID={stored.patient}", f"ProtocolName={STARS_THEN_B}"
    )
    elapsed = time.monotonic() - start

    assert [a.StudyInstanceUID for a in answers] == [stored.by_protocol[A_THEN_B]], log
    assert elapsed < BOUND + 1  # findscu's own start and association included


def test_an_unrelated_request_stays_fast_while_hostile_queries_run(
    server: Netpacs, stored: Stored
) -> None:
    stop = threading.Event()
    done: list[float] = []

    def hostile() -> None:
        with httpx.Client(headers=server.auth(), timeout=30) as client:
            while not stop.is_set():
                t = time.monotonic()
                client.get(
                    f"{server.dicomweb_url}/studies",
                    params={"ProtocolName": STARS_THEN_B, "limit": "1000"},
                )
                done.append(time.monotonic() - t)

    assert qido(server, ProtocolName=STARS_THEN_B).status_code == 200  # connections warm
    threads = [threading.Thread(target=hostile) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        latencies = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            t = time.monotonic()
            response = qido(server, PatientID=stored.patient, StudyDate="20261101")
            latencies.append(time.monotonic() - t)
            assert response.status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert done, "no hostile query finished"
    # Before the fix, the hostile queries never ended and nothing else was answered.
    assert max(latencies) < 2 * BOUND, latencies
    assert max(done) < 2 * BOUND, done


def test_qido_with_too_many_wild_cards_or_too_long_a_value_is_refused_with_400(
    server: Netpacs, stored: Stored
) -> None:
    stars = qido(server, ProtocolName="*a" * 65)
    assert stars.status_code == 400
    assert "ProtocolName (0018,1030): over 64 wild cards (65)" in stars.json()["message"]
    long = qido(server, StudyDescription="x" * 1025)
    assert long.status_code == 400
    assert "StudyDescription (0008,1030): over 1024 characters" in long.json()["message"]


def test_cfind_with_too_many_wild_cards_fails_with_an_error_comment(
    server: Netpacs, stored: Stored, tmp_path: Path
) -> None:
    log, answers = findscu(server, tmp_path, "ProtocolName=" + "*a" * 65)
    assert answers == []
    assert "DIMSE Status                  : 0xa900" in log, log
    assert "ProtocolName (0018,1030): over 64 wild cards (65)" in log  # Error Comment


# -- the time limit ------------------------------------------------------------------------


@pytest.fixture
def hasty(tmp_path: Path, region_file: Path) -> Iterator[Netpacs]:
    """A server whose queries may work a microsecond: every query with an answer is over.
    (SQLite only, to keep this short: tests/services/test_query.py stops a query on
    both backends.)"""
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        processes=1,
        extra_env={"NETPACS_QUERY_TIMEOUT_SECONDS": "0.000001"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_query_over_its_time_limit_is_stopped_with_503_and_cfind_out_of_resources(
    hasty: Netpacs, tmp_path: Path
) -> None:
    stored = Stored(hasty, tmp_path / "in")

    response = qido(hasty, PatientID=stored.patient)
    assert response.status_code == 503, response.text
    assert "query stopped: over its 1e-06 s work limit" in response.json()["message"]

    log, answers = findscu(hasty, tmp_path, f"PatientID={stored.patient}")
    assert answers == []
    assert "DIMSE Status                  : 0xa700" in log, log
    assert "query stopped: over its 1e-06 s work limit" in log  # the Error Comment
