"""The core as the edge's cache jobs ask it: QIDO-RS, WADO-RS and the change feed over
the edge's upstream client (adapters.transports.upstream), as the edge itself.

Bytes and JSON in, the values of domain.changes out; what the core sends is checked
(types, sizes) before it is believed: a peer's answer is input like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netpacs.domain import nhs_number
from netpacs.domain.changes import Change, ChangePage, PatientOfStudy, SeriesFound, StudyFound
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable

DICOMWEB = "/dicomweb"
QIDO_LIMIT = 1000  # studies of one patient, series of one study, instances of one series
UID_BATCH = 100  # study UIDs per QIDO-RS question (the URL stays short)
#: Seconds a whole object may take to arrive (the 2 s bound is for interactive answers).
FETCH_TIMEOUT = 120.0
QUERY_TIMEOUT = 10.0

_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_NAME = "00100010"
_BIRTH = "00100030"
_SEX = "00100040"
_OTHER_IDS = "00101002"
_STUDY_UID = "0020000D"
_STUDY_DATE = "00080020"
_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_BODY_PART = "00180015"
_SOP_UID = "00080018"


class CoreAnswerError(UpstreamUnavailable):
    """The core answered with something that is not what was asked for."""


def _value(item: Any, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, as text ('' when absent)."""
    if not isinstance(item, dict):
        return ""
    element = item.get(tag)
    if not isinstance(element, dict):
        return ""
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))[:200]
    return str(first)[:200]


def _nhs_number(item: Any) -> str | None:
    """The NHS number in Other Patient IDs Sequence, as the core answers it."""
    element = item.get(_OTHER_IDS) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    for other in values if isinstance(values, list) else []:
        if nhs_number.is_nhs_issuer(_value(other, _ISSUER)):
            number = _value(other, _PATIENT_ID)
            if nhs_number.is_valid(number):
                return number
    return None


class CoreArchiveClient:
    """:class:`netpacs.services.edge.prefetch.CoreArchive` over DICOMweb and JSON."""

    def __init__(self, upstream: UpstreamPort) -> None:
        self._up = upstream

    def _json(self, path: str, params: dict[str, Any], timeout: float = QUERY_TIMEOUT) -> Any:
        response = self._up.get(path, params=params, timeout=timeout)
        if response.status_code in (204, 404):  # none (404: gone, or not ours to see)
            return []
        if response.status_code != 200:
            raise CoreAnswerError(
                f"the core answered {path} with HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise CoreAnswerError(f"the core's answer to {path} is not JSON: {exc}") from None

    def _list(self, path: str, params: dict[str, Any]) -> list[Any]:
        answer = self._json(path, {"limit": QIDO_LIMIT, **params})
        if not isinstance(answer, list):
            raise CoreAnswerError(f"the core's answer to {path} is not a list")
        return answer

    def find_studies(self, patient_id: str, issuer: str) -> list[StudyFound]:
        answers = self._list(
            f"{DICOMWEB}/studies",
            {"PatientID": patient_id, "IssuerOfPatientID": issuer, "linked": "true"},
        )
        return [
            StudyFound(
                _value(a, _STUDY_UID),
                _value(a, _STUDY_DATE),
                _value(a, _PATIENT_ID),
                _value(a, _ISSUER),
            )
            for a in answers
            if _value(a, _STUDY_UID)
        ]

    def series_of(self, study_uid: str) -> list[SeriesFound]:
        answers = self._list(
            f"{DICOMWEB}/studies/{study_uid}/series", {"includefield": "BodyPartExamined"}
        )
        return [
            SeriesFound(_value(a, _SERIES_UID), _value(a, _MODALITY), _value(a, _BODY_PART))
            for a in answers
            if _value(a, _SERIES_UID)
        ]

    def instances_of(self, study_uid: str, series_uid: str) -> list[str]:
        answers = self._list(f"{DICOMWEB}/studies/{study_uid}/series/{series_uid}/instances", {})
        return [_value(a, _SOP_UID) for a in answers if _value(a, _SOP_UID)]

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes | None:
        path = f"{DICOMWEB}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        response = self._up.get(
            path,
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=FETCH_TIMEOUT,
        )
        if response.status_code == 404:  # deleted since it was listed
            return None
        if response.status_code != 200:
            raise CoreAnswerError(f"the core answered {path} with HTTP {response.status_code}")
        return response.content

    def patients_of(self, study_uids: Sequence[str]) -> list[PatientOfStudy]:
        found: list[PatientOfStudy] = []
        for start in range(0, len(study_uids), UID_BATCH):
            batch = list(study_uids[start : start + UID_BATCH])
            answers = self._list(
                f"{DICOMWEB}/studies",
                {
                    "StudyInstanceUID": ",".join(batch),
                    "includefield": "PatientSex,OtherPatientIDsSequence",
                },
            )
            for a in answers:
                uid = _value(a, _STUDY_UID)
                if uid not in batch or not _value(a, _PATIENT_ID):
                    continue
                found.append(
                    PatientOfStudy(
                        uid,
                        _value(a, _PATIENT_ID),
                        _value(a, _ISSUER),
                        _value(a, _NAME),
                        _value(a, _BIRTH),
                        _value(a, _SEX),
                        _nhs_number(a),
                    )
                )
        return found

    def changes(self, after: int | None, limit: int) -> ChangePage:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        answer = self._json("/edge/changes", params)
        try:
            changes = tuple(Change.from_json(c) for c in answer["changes"])
            return ChangePage(
                changes,
                int(answer["cursor"]),
                bool(answer.get("more")),
                resync=bool(answer.get("resync")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CoreAnswerError(f"the core's change feed answer is not one: {exc}") from None
