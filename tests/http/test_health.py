"""GET /healthz and GET /readyz: open to load balancers, 503 naming what failed."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.revision import code_revisions
from tests.conftest import HttpApp, wait_until


@pytest.fixture
def http_settings() -> dict[str, Any]:
    return {"readiness_timeout_seconds": 1.0}


def _ready(app: HttpApp) -> tuple[int, dict[str, Any]]:
    time.sleep(1.05)  # past the answer the node keeps for a second
    with app.anonymous() as client:
        response = client.get("/readyz")
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


def test_healthz_and_readyz_answer_without_sign_in_and_nothing_else_does(
    http_app: HttpApp,
) -> None:
    with http_app.anonymous() as client:
        alive = client.get("/healthz")
        ready = client.get("/readyz")
        studies = client.get("/dicomweb/studies")
        health_like = client.get("/healthz/../dicomweb/studies")
    assert alive.status_code == 200 and alive.json() == {"status": "alive"}
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert {name: c["ok"] for name, c in body["checks"].items()} == {
        "database": True,
        "object store": True,
        "migrations": True,
    }
    assert body["checks"]["migrations"]["detail"] == f"at {code_revisions().head}"
    assert studies.status_code == 401
    assert health_like.status_code in (401, 404)


def test_readyz_is_503_naming_the_object_store_when_its_directory_cannot_be_written(
    http_app: HttpApp,
) -> None:
    objects = http_app.settings.effective_blob_dir
    assert _ready(http_app)[0] == 200
    # The directory's volume is gone (an unmounted share): root ignores permissions,
    # so the directory is replaced by a file.
    shutil.move(objects, objects.with_name("objects.away"))
    objects.write_text("not a directory")
    try:
        status, body = _ready(http_app)
        assert status == 503, body
        assert body["message"].startswith("not ready: object store: the object directory")
        assert str(objects) in body["message"]
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["object store"]["ok"] is False
    finally:
        objects.unlink()
        shutil.move(objects.with_name("objects.away"), objects)
    assert _ready(http_app)[0] == 200
    assert [p.name for p in (objects / "tmp").iterdir()] == []  # the probe left nothing


def set_revision(database_url: str, revision: str) -> None:
    """Stamp the index with ``revision``, as another release's migration would leave it."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _ready_at(app: HttpApp, revision: str) -> tuple[int, dict[str, Any]]:
    """/readyz with the index stamped ``revision``, then stamped back to the code's head."""
    set_revision(app.database_url, revision)
    try:
        return _ready(app)
    finally:
        set_revision(app.database_url, code_revisions().head)


def test_readyz_is_503_naming_the_migrations_when_the_database_is_behind_the_code(
    http_app: HttpApp,
) -> None:
    head = code_revisions().head
    status, body = _ready_at(http_app, "0001")
    assert status == 503, body
    assert body["message"] == (
        f"not ready: migrations: the database is at 0001, this code needs {head} "
        "(`netpacs serve` migrates at start)"
    )
    assert _ready(http_app)[0] == 200


def test_readyz_stays_ready_on_a_newer_release_schema_during_a_rolling_upgrade(
    http_app: HttpApp,
) -> None:
    status, body = _ready_at(http_app, "9999_from_the_next_release")
    assert status == 200, body
    assert "newer than this code's" in body["checks"]["migrations"]["detail"]


def test_readyz_is_503_on_a_schema_revision_no_netpacs_release_made(http_app: HttpApp) -> None:
    status, body = _ready_at(http_app, "abc123")
    assert status == 503, body
    detail = body["checks"]["migrations"]["detail"]
    assert detail == "the database is at abc123, a revision netpacs never made"


@pytest.fixture
def write_lock(http_app: HttpApp) -> Iterator[threading.Event]:
    """Another client holds the index's write lock (SQLite) or the row the probe writes
    (PostgreSQL) until the event is set."""
    release = threading.Event()
    held = threading.Event()
    engine = sa.create_engine(http_app.database_url)

    def hold() -> None:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
            held.set()
            release.wait(30)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(10)
        engine.dispose()


def test_readyz_is_503_within_its_bound_naming_the_database_when_it_takes_no_write(
    http_app: HttpApp, write_lock: threading.Event
) -> None:
    time.sleep(1.05)
    started = time.monotonic()
    with http_app.anonymous() as client:
        response = client.get("/readyz")
        took = time.monotonic() - started
        alive = client.get("/healthz")
    assert response.status_code == 503, response.text
    assert response.json()["message"].startswith("not ready: database: ")
    assert "migrations" not in response.json()["checks"]
    assert took < 2.5  # the 1 s bound, not the index's own 60 s lock wait
    assert alive.status_code == 200  # liveness does not depend on the index
    write_lock.set()
    wait_until(lambda: _ready(http_app)[0] == 200, what="ready again", timeout=15)


def test_a_balancer_asking_by_the_nodes_address_gets_the_checks_and_nothing_else(
    http_app: HttpApp,
) -> None:
    """Balancers and orchestrators name the node by its address in the Host header."""
    with http_app.anonymous(headers={"Host": "10.20.30.40:8080"}) as client:
        ready = client.get("/readyz")
        alive = client.get("/healthz")
        signin = client.get("/signin")
    assert (ready.status_code, alive.status_code) == (200, 200), ready.text
    assert signin.status_code == 400
    assert "does not answer to the host name '10.20.30.40'" in signin.json()["message"]
