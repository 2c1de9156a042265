"""Study lookups for FHIR ImagingStudy: a patient's studies and their series, from the index.

Independent of FHIR: the adapter (``adapters/http/fhir.py``) maps these records to
resources. Every question goes through the query service (C-FIND matching, PS3.4
C.2.2.2), like C-FIND and QIDO-RS, so access control added there applies here too.

A patient identifier is a value with the issuers it may have been issued by
(DICOM Patient ID and Issuer of Patient ID, REGION.md: an identifier means nothing
without its issuer). Matching is exact: a value holding a DICOM wild card or value
delimiter (``*``, ``?``, ``\\``) matches nothing rather than being read as a pattern.
An NHS number matches every local identity linked to it (services.identity) and a
patient whose Patient ID is that number issued by ``NHS`` (or the NHS number OID);
a hospital number with its trust matches that identity, and with ``linked`` also the
identities linked to it by NHS number at other trusts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import first_int, first_str
from netpacs.domain.query import QueryError, QueryLevel, QueryModel
from netpacs.services.access import Principal
from netpacs.services.query import QueryService
from netpacs.services.studies import nhs_number_of, study_summary_identifier

_PATIENT_NAME = "00100010"
_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_STUDY_UID = "0020000D"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"
_TIMEZONE_OFFSET = "00080201"
_ACCESSION = "00080050"
_DESCRIPTION = "00081030"
_MODALITIES = "00080061"
_N_SERIES = "00201206"
_N_INSTANCES = "00201208"
_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_SERIES_NUMBER = "00200011"
_SERIES_DESCRIPTION = "0008103E"
_BODY_PART = "00180015"
_N_SERIES_INSTANCES = "00201209"
_NOT_EXACT = ("*", "?", "\\")
#: The most studies one FHIR search matches (beyond: an error asking to narrow it; no
#: patient has so many, so only a search that is not about one patient reaches it).
MAX_MATCHES = 10_000
#: The most series the studies of one page have (a study has tens; beyond: an error).
MAX_SERIES = 10_000
FHIR = "fhir"  # the interface named in the query latency histogram (services.metrics)

#: Issuers of Patient ID that mean "an NHS number".
NHS_NUMBER_ISSUERS = tuple(sorted(nhs_number.NHS_ISSUERS))


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    """A Patient ID and the issuers it may come from (None: any issuer; '' : none given)."""

    value: str
    issuers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_instance_uid: str
    series_number: int | None
    modality: str
    series_description: str
    body_part_examined: str
    number_of_instances: int | None


@dataclass(frozen=True, slots=True)
class StudyRecord:
    study_instance_uid: str
    patient_name: str  # DICOM PN, Alphabetic group
    patient_id: str
    issuer_of_patient_id: str
    nhs_number: str | None  # 10 valid digits, from Patient ID or Other Patient IDs
    study_date: str  # DA
    study_time: str  # TM
    timezone_offset: str  # Timezone Offset From UTC (0008,0201), '' when not given
    accession_number: str
    study_description: str
    modalities: tuple[str, ...]
    number_of_series: int | None
    number_of_instances: int | None
    series: tuple[SeriesRecord, ...]


def _summary_keys() -> dict[str, Any]:
    """A STUDY-level identifier returning what a resource shows (services.studies's study
    list summary, with the timezone offset that qualifies its date and time)."""
    keys = study_summary_identifier(())
    keys[_STUDY_UID] = {"vr": "UI"}
    keys[_TIMEZONE_OFFSET] = {"vr": "SH"}
    return keys


def _exact(value: str) -> bool:
    return bool(value) and not any(c in value for c in _NOT_EXACT)


class ImagingStudyService:
    """Which studies a patient identifier, a Study Instance UID or an accession selects."""

    def __init__(self, query: QueryService) -> None:
        self._query = query
        # The summaries a search already read, by Study Instance UID: its page is then
        # made from them, not asked again. The service is made for one request's
        # principal (for_principal), so nothing read here outlives that request.
        self._read: dict[str, dict[str, Any]] = {}

    def for_principal(self, principal: Principal) -> ImagingStudyService:
        return ImagingStudyService(self._query.for_principal(principal))

    def audited_together(self) -> contextlib.AbstractContextManager[None]:
        """Everything asked inside is audited in one commit at the block's end, before
        the caller answers (a search is several questions: services.query)."""
        return self._query.audited_together()

    def study_uids(
        self,
        *,
        patient: PatientIdentifier | None = None,
        study_instance_uids: Sequence[str] = (),
        accession_number: str | None = None,
        linked: bool = False,
    ) -> list[str]:
        """Study Instance UIDs matching all the criteria given, newest first.

        The search reads each match's summary with it (a patient has tens of studies, and
        the bound below holds), so that :meth:`studies` makes the page from what was read:
        two questions a search, not three."""
        keys = _summary_keys()
        # A partner network's wildcard goes to the query service, which refuses it.
        lenient = self._query.principal.partner is None
        if patient is not None:
            exact = _exact(patient.value) and all(not i or _exact(i) for i in patient.issuers or ())
            if not exact and lenient:
                return []
            keys[_PATIENT_ID]["Value"] = [patient.value]
            if patient.issuers is not None:
                # Several values are alternatives (OR); '""' matches an empty issuer.
                keys[_ISSUER]["Value"] = [i if i else '""' for i in patient.issuers]
        if study_instance_uids:
            keys[_STUDY_UID]["Value"] = list(study_instance_uids)
        if accession_number is not None:
            if not _exact(accession_number) and lenient:
                return []
            keys[_ACCESSION]["Value"] = [accession_number]
        answers = self._query.find(
            keys,
            level=QueryLevel.STUDY,
            model=QueryModel.STUDY_ROOT,
            limit=MAX_MATCHES + 1,  # bounded: read at once (index.query.compile)
            linked=linked,
            newest_first=True,
            interface=FHIR,
        )
        read = {first_str(a, _STUDY_UID): a for a in answers}
        if len(read) > MAX_MATCHES:
            raise QueryError(
                f"more than {MAX_MATCHES:,} studies match; narrow the search (a patient's "
                "studies, an accession number or a Study Instance UID)"
            )
        self._read.update(read)
        return list(read)

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        found = self.studies([study_instance_uid])
        return found[0] if found else None

    def studies(self, uids: Sequence[str]) -> list[StudyRecord]:
        """The studies with these UIDs (those stored), in the order given."""
        if not uids:
            return []
        answers = {uid: self._read[uid] for uid in uids if uid in self._read}
        unread = [uid for uid in uids if uid not in answers]
        if unread:
            identifier = _summary_keys()
            identifier[_STUDY_UID]["Value"] = unread
            found = self._query.find(
                identifier,
                level=QueryLevel.STUDY,
                model=QueryModel.STUDY_ROOT,
                limit=len(unread),  # one answer a UID at most: read at once (index.query.compile)
                interface=FHIR,
            )
            answers.update((first_str(a, _STUDY_UID), a) for a in found)
        if not answers:
            return []  # none to see: and a series question without UIDs would ask for all
        series = self._series(answers)
        return [
            self._record(answers[uid], series.get(uid, []))
            for uid in uids
            if uid and uid in answers
        ]

    @staticmethod
    def _record(a: dict[str, Any], series: list[SeriesRecord]) -> StudyRecord:
        return StudyRecord(
            study_instance_uid=first_str(a, _STUDY_UID),
            patient_name=first_str(a, _PATIENT_NAME),
            patient_id=first_str(a, _PATIENT_ID),
            issuer_of_patient_id=first_str(a, _ISSUER),
            nhs_number=nhs_number_of(a),
            study_date=first_str(a, _STUDY_DATE),
            study_time=first_str(a, _STUDY_TIME),
            timezone_offset=first_str(a, _TIMEZONE_OFFSET),
            accession_number=first_str(a, _ACCESSION),
            study_description=first_str(a, _DESCRIPTION),
            modalities=tuple(str(v) for v in (a.get(_MODALITIES) or {}).get("Value") or []),
            number_of_series=first_int(a, _N_SERIES),
            number_of_instances=first_int(a, _N_INSTANCES),
            series=tuple(series),
        )

    def _series(self, uids: Iterable[str]) -> dict[str, list[SeriesRecord]]:
        identifier: dict[str, Any] = {
            _STUDY_UID: {"vr": "UI", "Value": list(uids)},
            _SERIES_UID: {"vr": "UI"},
            _MODALITY: {"vr": "CS"},
            _SERIES_NUMBER: {"vr": "IS"},
            _SERIES_DESCRIPTION: {"vr": "LO"},
            _BODY_PART: {"vr": "CS"},
            _N_SERIES_INSTANCES: {"vr": "IS"},
        }
        out: dict[str, list[SeriesRecord]] = {}
        series = list(
            self._query.find(
                identifier,
                level=QueryLevel.SERIES,
                model=QueryModel.STUDY_ROOT,
                limit=MAX_SERIES + 1,  # bounded: read at once (index.query.compile)
                interface=FHIR,
            )
        )
        if len(series) > MAX_SERIES:
            raise QueryError(
                f"these studies have more than {MAX_SERIES:,} series; ask for fewer at a time"
                " (_count)"
            )
        for a in series:
            out.setdefault(first_str(a, _STUDY_UID), []).append(
                SeriesRecord(
                    series_instance_uid=first_str(a, _SERIES_UID),
                    series_number=first_int(a, _SERIES_NUMBER),
                    modality=first_str(a, _MODALITY),
                    series_description=first_str(a, _SERIES_DESCRIPTION),
                    body_part_examined=first_str(a, _BODY_PART),
                    number_of_instances=first_int(a, _N_SERIES_INSTANCES),
                )
            )
        return out
