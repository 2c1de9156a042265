"""Group-committing index writer: many concurrent stores, one transaction and one fsync.

Stores from every association hand their rows to one writer thread per process. It
takes whatever is waiting (up to ``max_batch``), writes it in one transaction and
resolves each caller's future only after COMMIT returns, so an acknowledgement
always follows a durable index row (ARCHITECTURE.md invariant 1). Processes sharing
one database never assume they are the only writer: every insert is
``ON CONFLICT DO NOTHING`` against a unique key, and a lost race is reported back,
not raised.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from netpacs.domain.outcomes import InvalidReason
from netpacs.index.db import DEFAULT_RETRY_SECONDS, lost_primary, retry_on_failover
from netpacs.index.records import InstanceRecord, PatientRow
from netpacs.index.schema import index_epoch, instance, patient, series, study

log = logging.getLogger(__name__)

_DEMOGRAPHICS = ("patient_name", "patient_birth_date", "patient_sex")


class NewStudyHook(Protocol):
    """Rules the service layer runs, in the writer's transaction, on each new study."""

    def __call__(
        self,
        conn: sa.Connection,
        record: InstanceRecord,
        patient_pk: int,
        now: dt.datetime,
    ) -> None: ...


class NewSeriesHook(Protocol):
    """Rules run in the writer's transaction when a series row is written (idempotent:
    it also runs again for a known series after the writer's caches are cleared)."""

    def __call__(
        self,
        conn: sa.Connection,
        record: InstanceRecord,
        study_pk: int,
        now: dt.datetime,
    ) -> None: ...


class OtherPatientHook(Protocol):
    """Rules run in the writer's transaction when an object names a study the index
    holds under another patient identity than the object's: None to add the object to
    the study, else why it is refused (the hook raises what a person must see)."""

    def __call__(
        self,
        conn: sa.Connection,
        record: InstanceRecord,
        study_pk: int,
        now: dt.datetime,
    ) -> str | None: ...


class NewInstanceHook(Protocol):
    """Rules run in the writer's transaction when an instance row is written or pointed
    at new content (an edge node queues it for the core, issue 13)."""

    def __call__(self, conn: sa.Connection, record: InstanceRecord) -> None: ...


class WriteStatus(enum.Enum):
    INSERTED = "inserted"
    EXISTS = "exists"  # the SOP Instance UID is already indexed
    REFUSED = "refused"  # the object contradicts the study or series it names


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: WriteStatus
    existing: dict[str, Any] | None = None  # the indexed row, when EXISTS
    refused: InvalidReason | None = None  # why, when REFUSED
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _KnownStudy:
    pk: int
    patient: tuple[str, str]  # (patient ID, issuer) of its patient when last read


class _JobFailed(Exception):
    """A job of a batch run without savepoints failed: run the batch again, isolated."""


@dataclass(slots=True)
class _Job:
    run: Callable[[sa.Connection], Any]
    future: Future[Any]
    # An append (IndexWriter.append): the row, inserted with the batch's other rows of
    # its table in one statement; ``run`` inserts it alone (when that statement fails).
    table: sa.Table | None = None
    row: dict[str, Any] | None = None


class IndexWriter:
    """One writer thread; ``insert``/``replace`` block until their commit."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_batch: int = 64,
        on_new_study: NewStudyHook | None = None,
        on_new_series: NewSeriesHook | None = None,
        on_other_patient: OtherPatientHook | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        on_new_instance: NewInstanceHook | None = None,
    ) -> None:
        self._on_new_instance = on_new_instance
        self._engine = engine
        self._retry_seconds = retry_seconds
        self._committing = False
        self._on_new_study = on_new_study
        self._on_new_series = on_new_series
        self._on_other_patient = on_other_patient
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._dialect = engine.dialect.name
        self._study: dict[str, _KnownStudy] = {}
        self._series_pk: dict[str, tuple[int, str]] = {}  # -> (pk, its Study Instance UID)
        self._patient_pk: dict[tuple[str, str], int] = {}
        # (study UID, patient ID, issuer) another identity than the study's that the
        # hook let into the study (an object without issuer, a merged identity).
        self._admitted: set[tuple[str, str, str]] = set()
        self._epoch: int | None = None
        self._statements = _Statements(self._dialect)
        self._appends: dict[str, sa.Insert] = {}  # table name -> its INSERT (append)
        # Held by whoever runs a batch: the writer thread, or a caller that found the
        # writer idle and nothing waiting (see _run_here).
        self._turn = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="index-writer", daemon=True)
        self._thread.start()

    # -- public API (any thread) -----------------------------------------------------
    def insert(self, record: InstanceRecord) -> WriteResult:
        return self._submit(lambda conn: self._insert(conn, record))  # type: ignore[no-any-return]

    def replace(self, record: InstanceRecord) -> dict[str, Any] | WriteResult:
        """Point an indexed instance at new content; returns the previous row (or the
        refusal, when the new content contradicts the study or series it names)."""
        return self._submit(lambda conn: self._replace(conn, record))  # type: ignore[no-any-return]

    def execute(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run ``fn`` inside a writer transaction (for maintenance writes)."""
        return self._submit(fn)

    def append(self, table: sa.Table, row: dict[str, Any]) -> None:
        """Insert ``row`` into ``table``; returns once it is committed. The rows that
        concurrent callers append while a batch commits go in the next batch, all of
        one table in one INSERT (e.g. the audit messages of concurrent requests: one
        statement and one fsync for all of them)."""
        fut: Future[Any] = Future()
        stmt = self._appends.get(table.name)
        if stmt is None:  # built once: its cache key is then memoized
            stmt = self._appends[table.name] = sa.insert(table)
        job = _Job(lambda conn: conn.execute(stmt, row), fut, table, row)
        if not self._run_here(job):
            self._queue.put(job)
        fut.result()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _submit(self, fn: Callable[[sa.Connection], Any]) -> Any:
        fut: Future[Any] = Future()
        job = _Job(fn, fut)
        if not self._run_here(job):
            self._queue.put(job)
        return fut.result()

    def _run_here(self, job: _Job) -> bool:
        """Run ``job`` as a batch of its own in the calling thread when no batch is
        running and none is waiting; False: the writer thread takes it, with the others.

        Alone, a job gains nothing from the writer thread but two thread wake-ups (the
        writer's, then the caller's): about a millisecond of every store on one
        association, and of every audited search on a quiet server. Concurrent callers
        still find a batch running and queue, and the writer thread commits them
        together when it ends."""
        if self._closed or not self._turn.acquire(blocking=False):
            return False
        try:
            if not self._queue.empty():  # others wait: all of them together, in order
                return False
            self._run_batch([job])
            return True
        finally:
            self._turn.release()

    # -- writer thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._turn:  # after a caller's own batch (_run_here), if one runs
                batch = [job]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        """Run the batch in one transaction; when the primary goes away (failover) the
        whole batch runs again on the new one, for up to ``retry_seconds``: the callers
        wait meanwhile, and none is answered before its rows are committed."""
        try:
            results = retry_on_failover(
                self._engine,
                lambda: self._try_batch(batch),
                retry_seconds=self._retry_seconds,
                on_retry=self._forget_caches,
                committing=lambda: self._committing,
            )
        except Exception as exc:
            log.exception("index commit failed for a batch of %d", len(batch))
            self._forget_caches()
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, value, err in results:
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(value)

    def _try_batch(self, batch: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        """One attempt at the batch's transaction. A job's own error fails that job
        only, but an error that says the primary went away fails the attempt.

        Jobs run first without a savepoint each (two round trips per job fewer: on
        PostgreSQL a SAVEPOINT and a RELEASE per stored instance). A job's error is
        rare (a refusal is a value, not an error); then the transaction is rolled back
        and the batch runs again with a savepoint around each job."""
        if len(batch) > 1 and any(job.table is None for job in batch):
            try:
                return self._attempt(batch, isolate=False)
            except _JobFailed:
                self._forget_caches()
        return self._attempt(batch, isolate=True)

    def _attempt(
        self, batch: list[_Job], *, isolate: bool
    ) -> list[tuple[_Job, Any, BaseException | None]]:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        self._committing = False
        appended = [job for job in batch if job.table is not None]
        with self._engine.connect() as conn, conn.begin() as trans:
            if len(appended) < len(batch):  # appends do not use the cached ids
                self._check_epoch(conn)
            alone = len(batch) == 1  # no savepoint needed: the job is the transaction
            if appended and not alone:
                results += self._append_all(conn, appended)
                batch = [job for job in batch if job.table is None]
            if alone:
                job = batch[0]
                try:
                    results.append((job, job.run(conn), None))
                except Exception as exc:
                    if lost_primary(exc):
                        raise
                    trans.rollback()
                    self._forget_caches()
                    results.append((job, None, exc))
            elif not isolate:
                for job in batch:
                    try:
                        results.append((job, job.run(conn), None))
                    except Exception as exc:
                        if lost_primary(exc):
                            raise
                        raise _JobFailed from exc  # rolls the transaction back
            else:
                for job in batch:
                    savepoint = conn.begin_nested()
                    try:
                        value = job.run(conn)
                        savepoint.commit()
                        results.append((job, value, None))
                    except Exception as exc:  # one bad row must not fail the batch
                        if lost_primary(exc):
                            raise
                        savepoint.rollback()
                        self._forget_caches()
                        results.append((job, None, exc))
            if trans.is_active:
                self._committing = True
                trans.commit()
        return results

    def _append_all(
        self, conn: sa.Connection, jobs: list[_Job]
    ) -> list[tuple[_Job, Any, BaseException | None]]:
        """The appended rows, one INSERT per table (in a savepoint); when one fails, each
        row alone, so that one bad row fails its own caller only."""
        by_table: dict[str, list[_Job]] = {}
        for job in jobs:
            assert job.table is not None
            by_table.setdefault(job.table.name, []).append(job)
        results: list[tuple[_Job, Any, BaseException | None]] = []
        for group in by_table.values():
            table = group[0].table
            assert table is not None
            savepoint = conn.begin_nested()
            try:
                rows = [job.row for job in group if job.row is not None]
                conn.execute(self._appends[table.name], rows)
                savepoint.commit()
                results += [(job, None, None) for job in group]
                continue
            except Exception as exc:
                if lost_primary(exc):
                    raise
                savepoint.rollback()
            for job in group:
                savepoint = conn.begin_nested()
                try:
                    job.run(conn)
                    savepoint.commit()
                    results.append((job, None, None))
                except Exception as exc:
                    if lost_primary(exc):
                        raise
                    savepoint.rollback()
                    results.append((job, None, exc))
        return results

    def _check_epoch(self, conn: sa.Connection) -> None:
        """Drop the cached ids when another process removed or renumbered rows."""
        epoch = conn.execute(self._statements.epoch).scalar()
        if epoch != self._epoch:
            self._forget_caches()
            self._epoch = epoch

    def _forget_caches(self) -> None:
        self._study.clear()
        self._series_pk.clear()
        self._patient_pk.clear()
        self._admitted.clear()

    def _upsert(self, conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> int:
        stmts = self._statements
        pk = conn.execute(stmts.insert[table.name], values).scalar()
        if pk is None:
            keys = {k: values[k] for k in stmts.keys[table.name]}
            pk = conn.execute(stmts.select_pk[table.name], keys).scalar_one()
        return int(pk)

    def _parents(
        self, conn: sa.Connection, record: InstanceRecord, now: dt.datetime
    ) -> int | WriteResult:
        """The series row the instance goes in (made with its study and patient when
        new), or the refusal when the object contradicts the study or series it names:
        an object is never added to a study of another patient, nor to a series of
        another study (issue 17). A refused object makes no row."""
        study_uid = record.study.study_instance_uid
        series_uid = record.series.series_instance_uid
        cached = self._series_pk.get(series_uid)
        known = cached or self._find_series(conn, series_uid)
        if known is not None and known[1] != study_uid:
            return WriteResult(
                WriteStatus.REFUSED,
                refused=InvalidReason.SERIES_MISMATCH,
                detail=f"Series Instance UID {series_uid} belongs to another study than "
                f"{study_uid}: refused",
            )
        study_pk = self._study_of(conn, record, now)
        if isinstance(study_pk, WriteResult):
            return study_pk
        if cached is not None:
            return cached[0]
        if known is None:
            values = {**record.series.values(), "study_fk": study_pk, "created_at": now}
            found = conn.execute(self._statements.insert["series"], values).scalar()
            known = (int(found), study_uid) if found is not None else None
        if known is None:  # another process made it just now
            known = self._find_series(conn, series_uid)
            if known is None or known[1] != study_uid:
                raise RuntimeError(f"series {series_uid} was made in another study meanwhile")
        if self._on_new_series is not None:
            self._on_new_series(conn, record, study_pk, now)
        self._series_pk[series_uid] = known
        if len(self._series_pk) > 10_000:
            self._forget_caches()
        return known[0]

    def _find_series(self, conn: sa.Connection, series_uid: str) -> tuple[int, str] | None:
        row = conn.execute(self._statements.series_study, {"uid": series_uid}).first()
        return None if row is None else (int(row.id), str(row.study_instance_uid))

    def _study_of(
        self, conn: sa.Connection, record: InstanceRecord, now: dt.datetime
    ) -> int | WriteResult:
        """The study row the object names (made with its patient when new); a study the
        index holds under another patient identity is the hook's to decide."""
        study_uid = record.study.study_instance_uid
        pkey = (record.patient.patient_id, record.patient.issuer)
        known = self._study.get(study_uid) or self._find_study(conn, study_uid)
        if known is None:
            patient_pk = self._patient_pk.get(pkey)
            if patient_pk is None:
                patient_pk = self._upsert(
                    conn, patient, {**record.patient.values(), "created_at": now}
                )
                self._fill_blanks(conn, patient_pk, record.patient)
            values = {**record.study.values(), "patient_fk": patient_pk, "created_at": now}
            study_pk = conn.execute(self._statements.insert["study"], values).scalar()
            if study_pk is not None:
                if self._on_new_study is not None:
                    self._on_new_study(conn, record, patient_pk, now)
                self._patient_pk[pkey] = patient_pk
                self._study[study_uid] = _KnownStudy(int(study_pk), pkey)
                return int(study_pk)
            known = self._find_study(conn, study_uid)  # another process made it just now
            assert known is not None
        self._study[study_uid] = known
        if pkey == known.patient or (study_uid, *pkey) in self._admitted:
            return known.pk
        if self._on_other_patient is not None:
            why = self._on_other_patient(conn, record, known.pk, now)
            if why is not None:
                return WriteResult(
                    WriteStatus.REFUSED, refused=InvalidReason.PATIENT_MISMATCH, detail=why
                )
        self._admitted.add((study_uid, *pkey))
        return known.pk

    def _find_study(self, conn: sa.Connection, study_uid: str) -> _KnownStudy | None:
        row = conn.execute(self._statements.study_patient, {"uid": study_uid}).first()
        if row is None:
            return None
        return _KnownStudy(int(row.id), (str(row.patient_id), str(row.issuer)))

    @staticmethod
    def _fill_blanks(conn: sa.Connection, pk: int, row: PatientRow) -> None:
        """Demographics the patient row lacks (e.g. made by an ADT message that did not
        send them) taken from the object; what the row has is never overwritten."""
        given = {c: getattr(row, c) or "" for c in _DEMOGRAPHICS}
        if not any(given.values()):
            return
        conn.execute(
            sa.update(patient)
            .where(
                patient.c.id == pk,
                sa.or_(*(patient.c[c] == "" for c, v in given.items() if v)),
            )
            .values(
                {
                    c: sa.case((patient.c[c] == "", v), else_=patient.c[c])
                    for c, v in given.items()
                    if v
                }
            )
        )

    def _insert(self, conn: sa.Connection, record: InstanceRecord) -> WriteResult:
        now = dt.datetime.now(dt.UTC)
        series_pk = self._parents(conn, record, now)
        if isinstance(series_pk, WriteResult):
            return series_pk
        params = {**record.instance.values(), "series_fk": series_pk, "received_at": now}
        pk = conn.execute(self._statements.insert["instance"], params).scalar()
        if pk is not None:
            if self._on_new_instance is not None:
                self._on_new_instance(conn, record)
            return WriteResult(WriteStatus.INSERTED)
        row = conn.execute(
            sa.select(instance).where(
                instance.c.sop_instance_uid == record.instance.sop_instance_uid
            )
        ).one()
        if row.blob_key == record.instance.blob_key:
            # Our own row: the COMMIT of an earlier attempt succeeded but its answer was
            # lost with the old primary (each store writes under a new blob key).
            return WriteResult(WriteStatus.INSERTED)
        return WriteResult(WriteStatus.EXISTS, existing=dict(row._mapping))

    def _replace(self, conn: sa.Connection, record: InstanceRecord) -> dict[str, Any] | WriteResult:
        now = dt.datetime.now(dt.UTC)
        uid = record.instance.sop_instance_uid
        old = conn.execute(sa.select(instance).where(instance.c.sop_instance_uid == uid)).one()
        series_pk = self._parents(conn, record, now)
        if isinstance(series_pk, WriteResult):
            return series_pk
        conn.execute(
            sa.update(instance)
            .where(instance.c.sop_instance_uid == uid)
            .values(**record.instance.values(), series_fk=series_pk, received_at=now)
        )
        if self._on_new_instance is not None:
            self._on_new_instance(conn, record)
        return dict(old._mapping)


def bump_epoch(conn: sa.Connection) -> None:
    """Tell every index writer that ids it cached may be gone or reused: call it in the
    transaction that deletes patient, study or series rows."""
    conn.execute(
        sa.update(index_epoch).where(index_epoch.c.id == 1).values(epoch=index_epoch.c.epoch + 1)
    )


class _Statements:
    """Insert statements built once, executed with parameters (compiled-cache hits)."""

    _UNIQUE: ClassVar[dict[str, list[str]]] = {
        "patient": ["patient_id", "issuer"],
        "study": ["study_instance_uid"],
        "series": ["series_instance_uid"],
        "instance": ["sop_instance_uid"],
    }

    def __init__(self, dialect: str) -> None:
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.keys = self._UNIQUE
        self.epoch = sa.select(index_epoch.c.epoch).where(index_epoch.c.id == 1)
        self.study_patient = (
            sa.select(study.c.id, patient.c.patient_id, patient.c.issuer)
            .select_from(study.join(patient, patient.c.id == study.c.patient_fk))
            .where(study.c.study_instance_uid == sa.bindparam("uid"))
        )
        self.series_study = (
            sa.select(series.c.id, study.c.study_instance_uid)
            .select_from(series.join(study, study.c.id == series.c.study_fk))
            .where(series.c.series_instance_uid == sa.bindparam("uid"))
        )
        self.insert: dict[str, Any] = {}
        self.select_pk: dict[str, sa.Select[Any]] = {}
        for table in (patient, study, series, instance):
            cols = [
                c.name for c in table.columns if c.name != "id" and not c.info.get("by_database")
            ]
            stmt = make(table).values({c: sa.bindparam(c) for c in cols})
            self.insert[table.name] = stmt.on_conflict_do_nothing(
                index_elements=self._UNIQUE[table.name]
            ).returning(table.c.id)
            where = sa.and_(*(table.c[k] == sa.bindparam(k) for k in self._UNIQUE[table.name]))
            self.select_pk[table.name] = sa.select(table.c.id).where(where)
