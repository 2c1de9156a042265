"""Typed records of what the index keeps about one stored object, row by row.

Ingest (and reindex) builds an :class:`InstanceRecord` from an object's parsed header;
the index writer inserts its rows, and the rules it runs on a new study or series
(services.identity, the reporting worklist) read the record's origin and header.
Field names are the index columns (``index.schema``): :meth:`values` gives the
parameters of an insert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.outcomes import Origin


class _Row:
    __slots__ = ()

    def values(self) -> dict[str, Any]:
        """Column name -> value, for an insert or update (the slots are the fields)."""
        names: tuple[str, ...] = self.__slots__
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True, slots=True)
class PatientRow(_Row):
    patient_id: str
    issuer: str  # of the Patient ID: the object's, else the sending trust's ODS code
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    nhs_number: str | None = None  # linked by the regional record's rules, never here


@dataclass(frozen=True, slots=True)
class StudyRow(_Row):
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    origin_trust: str | None
    origin_site: str | None


@dataclass(frozen=True, slots=True)
class SeriesRow(_Row):
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    series_date: str
    series_time: str
    institution_name: str
    station_name: str


@dataclass(frozen=True, slots=True)
class InstanceRow(_Row):
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    content_date: str
    content_time: str
    image_rows: int | None
    image_columns: int | None
    number_of_frames: int | None
    blob_key: str
    blob_size: int
    blob_crc32: int
    dataset_offset: int
    metadata_json: str  # the whole header as DICOM JSON, bulk data as references
    origin_protocol: str
    origin_ae: str | None
    origin_trust: str | None
    origin_user: str | None


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index keeps about one stored object, and where it came from."""

    patient: PatientRow
    study: StudyRow
    series: SeriesRow
    instance: InstanceRow
    origin: Origin  # who sent it (the worklist queues what modalities and users send)
    header: JsonDataset  # the parsed header, for the rules run on a new study or series
