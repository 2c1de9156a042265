"""The query service against a real archive, on SQLite and PostgreSQL (PS3.4 C.2.2.2, C.6)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from netpacs.app.container import Archive
from netpacs.domain.query import (
    QueryError,
    QueryLevel,
    QueryModel,
    QueryTimeout,
    RetrieveItem,
)
from netpacs.services import imaging_study
from netpacs.services.access import SYSTEM
from netpacs.services.imaging_study import ImagingStudyService, PatientIdentifier
from netpacs.services.query import QueryService

from .conftest import PATIENTS, SERIES_UID, SOP_CLASS, SOP_UID, STUDY_UID

P, ST, SE, IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE
PR, SR = QueryModel.PATIENT_ROOT, QueryModel.STUDY_ROOT

_NAME_BY_UID = {
    uid: name for table in (STUDY_UID, SERIES_UID, SOP_UID) for name, uid in table.items()
}
_PATIENT_BY_KEY = {(p.patient_id, p.issuer): p.name for p in PATIENTS}
_UNIQUE = {ST: "0020000D", SE: "0020000E", IM: "00080018"}


def ident(**keys: Any) -> dict[str, Any]:
    """A DICOM JSON identifier from keywords: None is a return key, a list is multi-valued,
    a dict is used as the element itself."""
    out: dict[str, Any] = {}
    for keyword, value in keys.items():
        tag_int = tag_for_keyword(keyword)
        assert tag_int is not None, keyword
        tag = f"{tag_int:08X}"
        vr = dictionary_VR(tag_int).split(" or ")[0]
        if isinstance(value, dict):
            out[tag] = value
        elif value is None:
            out[tag] = {"vr": vr}
        else:
            values = value if isinstance(value, list) else [value]
            if vr == "PN":
                values = [{"Alphabetic": v} for v in values]
            out[tag] = {"vr": vr, "Value": values}
    return out


def study_uids(*names: str) -> list[str]:
    return [STUDY_UID[n] for n in names]


def first(ds: dict[str, Any], tag: str) -> Any:
    values = ds.get(tag, {}).get("Value") or [None]
    return values[0]


def entity_name(ds: dict[str, Any], level: QueryLevel) -> str:
    if level is P:
        return _PATIENT_BY_KEY[(first(ds, "00100020"), first(ds, "00100021") or "")]
    return _NAME_BY_UID[first(ds, _UNIQUE[level])]


def with_identity(identifier: dict[str, Any], level: QueryLevel) -> dict[str, Any]:
    """The identifier plus the return keys that identify each answer."""
    needed = ["00100020", "00100021"] if level is P else [_UNIQUE[level]]
    extra = {tag: {"vr": dictionary_VR(int(tag, 16))} for tag in needed if tag not in identifier}
    return {**identifier, **extra}


def found(
    service: QueryService,
    identifier: dict[str, Any],
    level: QueryLevel,
    model: QueryModel = SR,
    **kw: Any,
) -> list[str]:
    results = service.find(with_identity(identifier, level), level=level, model=model, **kw)
    return [entity_name(ds, level) for ds in results]


@pytest.fixture(scope="module")
def service(populated_archive: Archive) -> QueryService:
    return QueryService(populated_archive.read_engine, principal=SYSTEM)


def _series(*names: str) -> set[str]:
    return set(names)


def _instances(*series_counts: tuple[str, int]) -> set[str]:
    return {f"{s}_{n}" for s, count in series_counts for n in range(1, count + 1)}


ALL_CT = _instances(("seA1a", 3), ("seA1b", 2), ("seB1a", 2), ("seC1a", 1))
ALL_INSTANCES = {name for name in SOP_UID}

MATCHING = [
    # -- PATIENT level (Patient Root) ----------------------------------------------------
    pytest.param(P, PR, {}, {"pA", "pB", "pC", "pD", "pE", "pF"}, id="patient-universal"),
    pytest.param(P, PR, ident(PatientID="100001"), {"pA", "pB"}, id="patient-id-two-issuers"),
    pytest.param(
        P,
        PR,
        ident(PatientID="100001", IssuerOfPatientID="RYR"),
        {"pB"},
        id="patient-id-and-issuer",
    ),
    pytest.param(P, PR, ident(IssuerOfPatientID="RTP"), {"pA", "pC"}, id="issuer-only"),
    pytest.param(
        P, PR, ident(IssuerOfPatientID="RTK"), {"pD", "pE"}, id="issuer-from-sending-trust"
    ),
    pytest.param(P, PR, ident(IssuerOfPatientID='""'), {"pF"}, id="issuer-empty-value"),
    pytest.param(P, PR, ident(PatientID="1000*"), {"pA", "pB"}, id="patient-id-wildcard"),
    pytest.param(
        P, PR, ident(PatientName="smith*"), {"pA", "pC"}, id="pn-wildcard-case-insensitive"
    ),
    pytest.param(
        P, PR, ident(PatientName="SMITH^JOHN"), {"pA"}, id="pn-single-value-case-insensitive"
    ),
    pytest.param(P, PR, ident(PatientName="Smith"), set(), id="pn-single-value-is-not-prefix"),
    pytest.param(P, PR, ident(PatientName="Mac_Donald*"), {"pD"}, id="pn-underscore-literal"),
    pytest.param(P, PR, ident(PatientName="mac?donald*"), {"pD", "pE"}, id="pn-question-mark"),
    pytest.param(
        P,
        PR,
        ident(PatientName="*"),
        {"pA", "pB", "pC", "pD", "pE", "pF"},
        id="pn-star-is-universal",
    ),
    pytest.param(
        P,
        PR,
        ident(PatientName=["jones^mary", "SMITH^anne"]),
        {"pB", "pC"},
        id="pn-multiple-values-or",
    ),
    pytest.param(
        P,
        PR,
        {"00100010": {"vr": "PN", "Value": ["nobody*"]}},
        {"pF"},
        id="pn-given-as-plain-string",
    ),
    pytest.param(
        P,
        PR,
        {"00100010": {"vr": "PN", "Value": ["JONES^MARY=ジョーンズ"]}},
        {"pB"},
        id="pn-plain-string-alphabetic-group",
    ),
    pytest.param(
        P,
        PR,
        ident(PatientBirthDate="19700101-19991231"),
        {"pB", "pC", "pE"},
        id="birth-date-range",
    ),
    pytest.param(
        P, PR, ident(PatientBirthDate="-19700101"), {"pA"}, id="birth-date-open-start-skips-empty"
    ),
    pytest.param(P, PR, ident(PatientBirthDate="20000101-"), {"pD"}, id="birth-date-open-end"),
    pytest.param(P, PR, ident(PatientBirthDate="19600101"), {"pA"}, id="birth-date-single"),
    pytest.param(P, PR, ident(PatientSex="F"), {"pB", "pC", "pD"}, id="sex"),
    pytest.param(P, PR, ident(PatientSex="f"), set(), id="cs-is-case-sensitive"),
    pytest.param(P, PR, ident(StudyDescription="CT*"), {"pA"}, id="relational-study-key"),
    pytest.param(P, PR, ident(ModalitiesInStudy="MR"), {"pA", "pB"}, id="relational-modalities"),
    pytest.param(
        P,
        PR,
        ident(StudyDate="20230115", Modality="MR"),
        {"pB"},
        id="relational-keys-on-one-descendant",
    ),
    pytest.param(
        P, PR, ident(NumberOfPatientRelatedStudies=2), {"pA", "pC"}, id="patient-count-match"
    ),
    # -- STUDY level ---------------------------------------------------------------------
    pytest.param(
        ST,
        SR,
        {},
        {"stA1", "stA2", "stB1", "stC1", "stC2", "stD1", "stE1", "stF1"},
        id="study-universal",
    ),
    pytest.param(
        ST, SR, ident(StudyInstanceUID=STUDY_UID["stB1"]), {"stB1"}, id="study-uid-single"
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyInstanceUID=study_uids("stA1", "stC1")),
        {"stA1", "stC1"},
        id="study-uid-list",
    ),
    pytest.param(
        ST,
        SR,
        {"0020000D": {"vr": "UI", "Value": [f"{STUDY_UID['stA1']}\\{STUDY_UID['stE1']}"]}},
        {"stA1", "stE1"},
        id="study-uid-list-backslash",
    ),
    pytest.param(ST, SR, ident(StudyDate="20230115"), {"stA1", "stB1"}, id="study-date-single"),
    pytest.param(
        ST,
        SR,
        ident(StudyDate="20230101-20231231"),
        {"stA1", "stA2", "stB1", "stD1", "stE1"},
        id="study-date-range",
    ),
    pytest.param(ST, SR, ident(StudyDate="-20221231"), {"stC1", "stF1"}, id="study-date-until"),
    pytest.param(ST, SR, ident(StudyDate="20240101-"), {"stC2"}, id="study-date-from"),
    pytest.param(
        ST,
        SR,
        ident(StudyDate=["20230115", "20240301"]),
        {"stA1", "stB1", "stC2"},
        id="study-date-multiple-values-or",
    ),
    pytest.param(
        ST, SR, ident(StudyDate="2023.01.15"), {"stA1", "stB1"}, id="study-date-acr-nema-form"
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyTime="0930-1000"),
        {"stA1", "stB1"},
        id="time-range-upper-minute-covers-fraction",
    ),
    pytest.param(
        ST, SR, ident(StudyTime="-0930"), {"stA1", "stD1", "stF1"}, id="time-until-skips-empty"
    ),
    pytest.param(
        ST, SR, ident(StudyTime="1430-"), {"stA2", "stC1"}, id="time-from-matches-hhmm-stored"
    ),
    pytest.param(ST, SR, ident(StudyTime="143000"), {"stA2"}, id="time-single-vs-stored-hhmm"),
    pytest.param(ST, SR, ident(StudyTime="14"), {"stA2"}, id="time-single-hour"),
    pytest.param(ST, SR, ident(StudyTime="100000"), {"stB1"}, id="time-single-vs-fraction"),
    pytest.param(ST, SR, ident(StudyTime="10:00-10:00"), {"stB1"}, id="time-with-colons"),
    pytest.param(ST, SR, ident(StudyTime="235959.5-"), set(), id="time-fraction-bound"),
    pytest.param(ST, SR, ident(AccessionNumber="ACC1001"), {"stA1"}, id="accession"),
    pytest.param(ST, SR, ident(AccessionNumber="ACC4002"), set(), id="accession-case-sensitive"),
    pytest.param(ST, SR, ident(AccessionNumber="acc*"), {"stE1"}, id="wildcard-case-sensitive"),
    pytest.param(
        ST, SR, ident(AccessionNumber="ACC100?"), {"stA1", "stA2"}, id="wildcard-question-mark"
    ),
    pytest.param(ST, SR, ident(AccessionNumber='""'), {"stC2"}, id="accession-empty-value"),
    pytest.param(
        ST, SR, ident(StudyID="1"), {"stA1", "stB1", "stD1", "stE1", "stF1"}, id="study-id"
    ),
    pytest.param(ST, SR, ident(StudyDescription="Dose 100%*"), {"stB1"}, id="percent-is-literal"),
    pytest.param(
        ST, SR, ident(StudyDescription="XR Hand [left]"), {"stD1"}, id="brackets-single-value"
    ),
    pytest.param(
        ST, SR, ident(StudyDescription="*[left]"), {"stD1"}, id="brackets-literal-in-wildcard"
    ),
    pytest.param(
        ST, SR, ident(StudyDescription="*hand*"), {"stE1"}, id="lo-wildcard-case-sensitive"
    ),
    pytest.param(
        ST,
        SR,
        ident(ReferringPhysicianName="house^gregory"),
        {"stA1", "stA2"},
        id="referring-pn-case-insensitive",
    ),
    pytest.param(
        ST, SR, ident(ReferringPhysicianName="quinn*"), {"stD1", "stE1"}, id="referring-pn-wildcard"
    ),
    pytest.param(
        ST, SR, ident(ModalitiesInStudy="CT"), {"stA1", "stB1", "stC1"}, id="modalities-in-study"
    ),
    pytest.param(
        ST, SR, ident(ModalitiesInStudy="PR"), {"stA2"}, id="modalities-in-study-any-series"
    ),
    pytest.param(
        ST,
        SR,
        ident(ModalitiesInStudy=["US", "CR"]),
        {"stC2", "stD1", "stE1"},
        id="modalities-in-study-or",
    ),
    pytest.param(
        ST,
        SR,
        ident(ModalitiesInStudy="C?"),
        {"stA1", "stB1", "stC1", "stD1", "stE1"},
        id="modalities-in-study-wildcard",
    ),
    pytest.param(
        ST,
        SR,
        ident(SOPClassesInStudy=SOP_CLASS["MR"]),
        {"stA2", "stB1"},
        id="sop-classes-in-study",
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyDate="20230101-20231231", ModalitiesInStudy="CT"),
        {"stA1", "stB1"},
        id="date-range-and-modality",
    ),
    pytest.param(
        ST,
        SR,
        ident(PatientName="smith*"),
        {"stA1", "stA2", "stC1", "stC2"},
        id="patient-name-at-study-level",
    ),
    pytest.param(
        ST,
        SR,
        ident(PatientID="100001", IssuerOfPatientID="RTP"),
        {"stA1", "stA2"},
        id="patient-identity-at-study-level",
    ),
    pytest.param(
        ST, PR, ident(PatientID="100001"), {"stA1", "stA2", "stB1"}, id="patient-root-study-level"
    ),
    pytest.param(
        ST,
        PR,
        {},
        {"stA1", "stA2", "stB1", "stC1", "stC2", "stD1", "stE1", "stF1"},
        id="patient-root-study-level-lenient",
    ),
    pytest.param(ST, SR, ident(Modality="PR"), {"stA2"}, id="relational-series-key"),
    pytest.param(
        ST, SR, ident(SeriesDescription="Head*"), {"stB1"}, id="relational-series-wildcard"
    ),
    pytest.param(ST, SR, ident(InstitutionName="York*"), {"stB1"}, id="relational-institution"),
    pytest.param(
        ST, SR, ident(SOPInstanceUID=SOP_UID["seC2a_2"]), {"stC2"}, id="relational-instance-key"
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyTime="0930-1000", TimezoneOffsetFromUTC="+0100"),
        {"stA1", "stB1"},
        id="timezone-offset-is-not-matched",
    ),
    pytest.param(
        ST, SR, ident(PatientAge="063Y"), {"stA1", "stA2"}, id="non-column-key-on-representative"
    ),
    pytest.param(ST, SR, ident(NumberOfStudyRelatedInstances=4), {"stA2"}, id="study-count-match"),
    pytest.param(
        ST,
        SR,
        ident(NumberOfStudyRelatedSeries=[1]),
        {"stC1", "stC2", "stD1", "stE1", "stF1"},
        id="study-series-count-match",
    ),
    pytest.param(
        ST,
        SR,
        ident(ReferencedStudySequence=[{}]),
        {"stA1", "stA2", "stB1", "stC1", "stC2", "stD1", "stE1", "stF1"},
        id="sequence-is-universal",
    ),
    # -- SERIES level --------------------------------------------------------------------
    pytest.param(
        SE,
        SR,
        ident(StudyInstanceUID=STUDY_UID["stA2"]),
        _series("seA2a", "seA2b", "seA2c"),
        id="series-of-study",
    ),
    pytest.param(
        SE,
        SR,
        ident(SeriesInstanceUID=[SERIES_UID["seA1b"], SERIES_UID["seF1a"]]),
        _series("seA1b", "seF1a"),
        id="series-uid-list",
    ),
    pytest.param(SE, SR, ident(Modality="MR"), _series("seA2a", "seA2b", "seB1b"), id="modality"),
    pytest.param(SE, SR, ident(Modality=["PR", "OT"]), _series("seA2c", "seF1a"), id="modality-or"),
    pytest.param(
        SE, SR, ident(SeriesNumber=2), _series("seA1b", "seA2b", "seB1b"), id="series-number"
    ),
    pytest.param(
        SE,
        SR,
        {"00200011": {"vr": "IS", "Value": ['""']}},
        _series("seA2c"),
        id="series-number-empty-value",
    ),
    pytest.param(
        SE,
        SR,
        ident(SeriesDescription="T? *"),
        _series("seA2a", "seA2b"),
        id="series-description-wildcard",
    ),
    pytest.param(
        SE, SR, ident(SeriesDescription="t*"), set(), id="series-description-case-sensitive"
    ),
    pytest.param(
        SE,
        SR,
        ident(BodyPartExamined="HEAD"),
        _series("seA2a", "seA2b", "seB1a", "seB1b"),
        id="body-part",
    ),
    pytest.param(
        SE,
        SR,
        ident(SeriesDate="20230115"),
        _series("seA1a", "seA1b", "seB1a", "seB1b"),
        id="series-date",
    ),
    pytest.param(
        SE, SR, ident(SeriesTime="0935-0940"), _series("seA1a", "seA1b"), id="series-time-range"
    ),
    pytest.param(
        SE,
        SR,
        ident(SeriesTime="-0939"),
        _series("seA1a", "seD1a", "seF1a"),
        id="series-time-until",
    ),
    pytest.param(SE, SR, ident(SeriesTime="1431"), _series("seA2a"), id="series-time-single-hhmm"),
    pytest.param(
        SE, SR, ident(InstitutionName="St Peter's"), _series("seD1a", "seE1a"), id="institution"
    ),
    pytest.param(
        SE, SR, ident(StationName="ESH_CT1"), _series("seA1a", "seA1b", "seC1a"), id="station"
    ),
    pytest.param(
        SE, SR, ident(StationName="SPH_CR*"), _series("seE1a"), id="underscore-literal-in-wildcard"
    ),
    pytest.param(
        SE,
        SR,
        ident(StationName="SPH?CR1"),
        _series("seD1a", "seE1a"),
        id="question-mark-matches-one",
    ),
    pytest.param(
        SE, SR, ident(PatientID="300003"), _series("seD1a"), id="patient-key-at-series-level"
    ),
    pytest.param(
        SE,
        SR,
        ident(StudyDate="20230115", Modality="MR"),
        _series("seB1b"),
        id="study-and-series-keys",
    ),
    pytest.param(
        SE, SR, ident(ImageType="DERIVED"), _series("seA1b"), id="non-column-multi-valued"
    ),
    pytest.param(
        SE,
        SR,
        ident(NumberOfSeriesRelatedInstances=2),
        _series("seA1b", "seA2b", "seB1a", "seC2a"),
        id="series-count-match",
    ),
    pytest.param(
        SE,
        PR,
        ident(PatientID="100001", IssuerOfPatientID="RYR"),
        _series("seB1a", "seB1b"),
        id="patient-root-series-level",
    ),
    # -- IMAGE level ---------------------------------------------------------------------
    pytest.param(
        IM,
        SR,
        ident(SeriesInstanceUID=SERIES_UID["seA1a"]),
        _instances(("seA1a", 3)),
        id="instances-of-series",
    ),
    pytest.param(
        IM,
        SR,
        ident(SOPInstanceUID=[SOP_UID["seA1a_1"], SOP_UID["seF1a_1"]]),
        {"seA1a_1", "seF1a_1"},
        id="sop-uid-list",
    ),
    pytest.param(IM, SR, ident(SOPClassUID=SOP_CLASS["CT"]), ALL_CT, id="sop-class"),
    pytest.param(
        IM,
        SR,
        ident(InstanceNumber=2),
        {"seA1a_2", "seA1b_2", "seA2b_2", "seB1a_2", "seC2a_2"},
        id="instance-number",
    ),
    pytest.param(
        IM, SR, ident(Rows=8), _instances(("seA2a", 1), ("seA2b", 2), ("seB1b", 1)), id="rows"
    ),
    pytest.param(IM, SR, ident(NumberOfFrames=3), _instances(("seC2a", 2)), id="number-of-frames"),
    pytest.param(IM, SR, ident(ContentDate="20221231"), {"seC1a_1"}, id="content-date"),
    pytest.param(
        IM, SR, ident(ContentTime="2359"), {"seC1a_1"}, id="content-time-minute-covers-fraction"
    ),
    pytest.param(
        IM,
        SR,
        ident(PatientName="jones*"),
        _instances(("seB1a", 2), ("seB1b", 1)),
        id="patient-key-at-image-level",
    ),
    pytest.param(
        IM,
        SR,
        ident(ImageType="DERIVED"),
        _instances(("seA1b", 2)),
        id="metadata-single-value-multi-valued-attribute",
    ),
    pytest.param(
        IM,
        SR,
        ident(ImageType="ORIG*"),
        ALL_INSTANCES - {"seA1b_1", "seA1b_2"},
        id="metadata-wildcard",
    ),
    pytest.param(
        IM,
        SR,
        ident(ImageComments="seA1a image 2 \\ with a backslash"),
        {"seA1a_2"},
        id="metadata-text-backslash-is-not-a-delimiter",
    ),
    pytest.param(
        IM,
        SR,
        ident(ImageComments="*image 1 \\*"),
        {f"{s}_1" for s in SERIES_UID},
        id="metadata-text-wildcard",
    ),
    pytest.param(IM, SR, ident(SliceThickness=2.5), ALL_CT, id="metadata-decimal"),
    pytest.param(
        IM,
        SR,
        ident(PatientAge="047Y", Modality="CT"),
        _instances(("seB1a", 2)),
        id="metadata-and-column-keys",
    ),
    pytest.param(
        IM,
        SR,
        ident(AcquisitionDateTime="20230115-20230115"),
        _instances(("seA1a", 3), ("seA1b", 2), ("seB1a", 2), ("seB1b", 1)),
        id="metadata-dt-day-range",
    ),
    pytest.param(
        IM,
        SR,
        ident(AcquisitionDateTime="2023011509-2023011509"),
        _instances(("seA1a", 3), ("seA1b", 2)),
        id="metadata-dt-hour-range",
    ),
    pytest.param(
        IM,
        SR,
        ident(AcquisitionDateTime="-2022"),
        {"seC1a_1", "seF1a_1"},
        id="metadata-dt-until-year",
    ),
    pytest.param(
        IM,
        SR,
        ident(AcquisitionDateTime="202306201431"),
        {"seA2a_1"},
        id="metadata-dt-single-minute",
    ),
    pytest.param(
        IM, SR, ident(PatientAge='""', Modality="CT"), {"seC1a_1"}, id="metadata-empty-value"
    ),
    pytest.param(IM, SR, ident(OtherPatientIDs="X*"), set(), id="metadata-absent-attribute"),
    pytest.param(
        IM,
        SR,
        ident(PixelData=None, SeriesInstanceUID=SERIES_UID["seD1a"]),
        {"seD1a_1"},
        id="bulk-data-return-key",
    ),
]


@pytest.mark.parametrize(("level", "model", "identifier", "expected"), MATCHING)
def test_matching(
    service: QueryService,
    level: QueryLevel,
    model: QueryModel,
    identifier: dict[str, Any],
    expected: set[str],
) -> None:
    names = found(service, identifier, level, model)
    assert len(names) == len(set(names)), f"duplicate answers: {names}"
    assert set(names) == expected


def test_studies_come_in_date_time_order(service: QueryService) -> None:
    assert found(service, {}, ST) == [
        "stF1",
        "stC1",
        "stA1",
        "stB1",
        "stD1",
        "stE1",
        "stA2",
        "stC2",
    ]


def test_series_without_number_come_last(service: QueryService) -> None:
    names = found(service, ident(StudyInstanceUID=STUDY_UID["stA2"]), SE)
    assert names == ["seA2a", "seA2b", "seA2c"]


def test_instances_come_in_instance_number_order(service: QueryService) -> None:
    names = found(service, ident(StudyInstanceUID=STUDY_UID["stA1"]), IM)
    assert names == ["seA1a_1", "seA1a_2", "seA1a_3", "seA1b_1", "seA1b_2"]


@pytest.mark.parametrize("python_filter", [False, True], ids=["sql", "python-filter"])
def test_limit_and_offset_page_through_the_same_order(
    service: QueryService, python_filter: bool
) -> None:
    identifier = ident(ImageType="ORIG*") if python_filter else {}
    everything = found(service, identifier, IM)
    pages = [found(service, identifier, IM, limit=5, offset=o) for o in range(0, 20, 5)]
    assert [name for page in pages for name in page] == everything
    assert found(service, identifier, IM, limit=0) == []
    assert found(service, identifier, IM, limit=2, offset=len(everything) - 1) == everything[-1:]


def test_study_answer_has_exactly_the_requested_keys(service: QueryService) -> None:
    identifier = ident(
        StudyInstanceUID=STUDY_UID["stA2"],
        StudyDate=None,
        StudyTime=None,
        AccessionNumber=None,
        StudyID=None,
        StudyDescription=None,
        ReferringPhysicianName=None,
        ModalitiesInStudy=None,
        SOPClassesInStudy=None,
        NumberOfStudyRelatedSeries=None,
        NumberOfStudyRelatedInstances=None,
        PatientName=None,
        PatientID=None,
        IssuerOfPatientID=None,
        PatientBirthDate=None,
        PatientSex=None,
        QueryRetrieveLevel="STUDY",
    )
    [answer] = service.find(identifier, level=ST, model=SR)
    assert answer == {
        "00080020": {"vr": "DA", "Value": ["20230620"]},
        "00080030": {"vr": "TM", "Value": ["1430"]},
        "00080050": {"vr": "SH", "Value": ["ACC1002"]},
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
        "00080061": {"vr": "CS", "Value": ["MR", "PR"]},
        "00080062": {"vr": "UI", "Value": sorted([SOP_CLASS["MR"], SOP_CLASS["PR"]])},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "house^gregory"}]},
        "00081030": {"vr": "LO", "Value": ["MR Brain"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Smith^John"}]},
        "00100020": {"vr": "LO", "Value": ["100001"]},
        "00100021": {"vr": "LO", "Value": ["RTP"]},
        "00100030": {"vr": "DA", "Value": ["19600101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "0020000D": {"vr": "UI", "Value": [STUDY_UID["stA2"]]},
        "00200010": {"vr": "SH", "Value": ["2"]},
        "00201206": {"vr": "IS", "Value": [3]},
        "00201208": {"vr": "IS", "Value": [4]},
    }


@pytest.mark.parametrize(
    ("patient", "studies", "series", "instances"),
    [
        ("pA", 2, 5, 9),
        ("pB", 1, 2, 3),
        ("pC", 2, 2, 3),
        ("pF", 1, 1, 1),
    ],
)
def test_patient_counts(
    service: QueryService, patient: str, studies: int, series: int, instances: int
) -> None:
    pat = next(p for p in PATIENTS if p.name == patient)
    identifier = ident(
        PatientID=pat.patient_id,
        IssuerOfPatientID=pat.issuer or '""',
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
    )
    [answer] = service.find(identifier, level=P, model=PR)
    assert first(answer, "00201200") == studies
    assert first(answer, "00201202") == series
    assert first(answer, "00201204") == instances


def test_issuer_is_returned_even_when_unknown(service: QueryService) -> None:
    answers = list(service.find(ident(PatientID=None, IssuerOfPatientID=None), level=P, model=PR))
    by_id = {(first(a, "00100020"), first(a, "00100021")) for a in answers}
    assert ("100001", "RTP") in by_id and ("100001", "RYR") in by_id
    assert ("300003", "RTK") in by_id
    assert ("400004", None) in by_id
    assert all("00100021" in a for a in answers)


def test_series_answer_values(service: QueryService) -> None:
    identifier = ident(
        SeriesInstanceUID=SERIES_UID["seA2c"],
        Modality=None,
        SeriesNumber=None,
        SeriesDescription=None,
        BodyPartExamined=None,
        SeriesDate=None,
        SeriesTime=None,
        InstitutionName=None,
        StationName=None,
        NumberOfSeriesRelatedInstances=None,
        StudyInstanceUID=None,
        NumberOfStudyRelatedInstances=None,
    )
    [answer] = service.find(identifier, level=SE, model=SR)
    assert answer["00080060"] == {"vr": "CS", "Value": ["PR"]}
    assert answer["00200011"] == {"vr": "IS"}  # no series number: present, empty
    assert answer["0008103E"] == {"vr": "LO"}
    assert answer["00080031"] == {"vr": "TM", "Value": ["150000"]}
    assert answer["00081010"] == {"vr": "SH", "Value": ["ESH_WS1"]}
    assert answer["00201209"] == {"vr": "IS", "Value": [1]}
    assert answer["0020000D"] == {"vr": "UI", "Value": [STUDY_UID["stA2"]]}
    assert answer["00201208"] == {"vr": "IS", "Value": [4]}


def test_image_answer_values_from_columns_and_metadata(service: QueryService) -> None:
    identifier = ident(
        SOPInstanceUID=SOP_UID["seC2a_2"],
        SOPClassUID=None,
        InstanceNumber=None,
        ContentDate=None,
        ContentTime=None,
        Rows=None,
        Columns=None,
        NumberOfFrames=None,
        ImageType=None,
        ImageComments=None,
        PatientAge=None,
        PixelData=None,
        AvailableTransferSyntaxUID=None,
        InstanceAvailability=None,
        RetrieveAETitle=None,
    )
    [answer] = service.find(identifier, level=IM, model=SR)
    assert answer["00080016"] == {"vr": "UI", "Value": [SOP_CLASS["US"]]}
    assert answer["00200013"] == {"vr": "IS", "Value": [2]}
    assert answer["00080023"] == {"vr": "DA", "Value": ["20240301"]}
    assert answer["00080033"] == {"vr": "TM"}
    assert answer["00280010"] == {"vr": "US", "Value": [16]}
    assert answer["00280011"] == {"vr": "US", "Value": [16]}
    assert answer["00280008"] == {"vr": "IS", "Value": [3]}
    assert answer["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]}
    assert answer["00204000"] == {"vr": "LT", "Value": ["seC2a image 2 \\ with a backslash"]}
    assert answer["00101010"] == {"vr": "AS"}
    assert "BulkDataURI" not in answer["7FE00010"]
    assert answer["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert answer["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert answer["00080054"] == {"vr": "AE"}  # the adapter fills it in


def test_keys_of_lower_levels_come_back_empty(service: QueryService) -> None:
    identifier = ident(
        StudyInstanceUID=STUDY_UID["stB1"],
        Modality=None,
        NumberOfSeriesRelatedInstances=None,
        SOPInstanceUID=None,
    )
    [answer] = service.find(identifier, level=ST, model=SR)
    assert answer["00080060"] == {"vr": "CS"}
    assert answer["00201209"] == {"vr": "IS"}
    assert answer["00080018"] == {"vr": "UI"}


def test_unknown_and_private_keys_come_back_empty(service: QueryService) -> None:
    identifier = {
        "0020000D": {"vr": "UI", "Value": [STUDY_UID["stA1"]]},
        "00091010": {"vr": "LO"},
        "00101000": {"vr": "LO"},  # Other Patient IDs: not in the objects
    }
    [answer] = service.find(identifier, level=ST, model=SR)
    assert answer["00091010"] == {"vr": "LO"}
    assert answer["00101000"] == {"vr": "LO"}


def test_study_level_metadata_keys_come_from_a_representative_instance(
    service: QueryService,
) -> None:
    identifier = ident(
        StudyInstanceUID=STUDY_UID["stB1"], PatientAge=None, ReferencedStudySequence=None
    )
    [answer] = service.find(identifier, level=ST, model=SR)
    assert answer["00101010"] == {"vr": "AS", "Value": ["047Y"]}
    [item] = answer["00081110"]["Value"]
    assert item["00081155"] == {"vr": "UI", "Value": [f"{STUDY_UID['stB1']}.9"]}


def test_sequence_items_carry_only_the_requested_keys(service: QueryService) -> None:
    identifier = ident(
        SOPInstanceUID=SOP_UID["seA1a_1"], ReferencedStudySequence=[{"00081155": {"vr": "UI"}}]
    )
    [answer] = service.find(identifier, level=IM, model=SR)
    assert answer["00081110"] == {
        "vr": "SQ",
        "Value": [{"00081155": {"vr": "UI", "Value": [f"{STUDY_UID['stA1']}.9"]}}],
    }


@pytest.mark.parametrize(
    ("requested", "returned"),
    [
        ({"vr": "CS", "Value": ["ISO_IR 100"]}, ["ISO_IR 100"]),
        ({"vr": "CS"}, ["ISO_IR 192"]),
        ({"vr": "CS", "Value": [None, "ISO 2022 IR 87"]}, ["", "ISO 2022 IR 87"]),
        (None, None),
    ],
)
def test_specific_character_set(
    service: QueryService, requested: dict[str, Any] | None, returned: list[str] | None
) -> None:
    identifier = ident(StudyInstanceUID=STUDY_UID["stA1"])
    if requested is not None:
        identifier["00080005"] = requested
    [answer] = service.find(identifier, level=ST, model=SR)
    if returned is None:
        assert "00080005" not in answer
    else:
        assert answer["00080005"] == {"vr": "CS", "Value": returned}
    assert set(answer) == {"0020000D", "00080052"} | ({"00080005"} if requested else set())


def test_results_are_streamed_and_release_the_connection(
    service: QueryService, populated_archive: Archive
) -> None:
    results = service.find({}, level=IM, model=SR)
    assert iter(results) is results
    next(results)
    assert populated_archive.read_engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    results.close()  # type: ignore[attr-defined]
    assert populated_archive.read_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


BAD = [
    pytest.param(P, SR, {}, "Study Root", id="patient-level-in-study-root"),
    pytest.param(ST, SR, ident(StudyDate="2023-01-15"), "StudyDate", id="iso-date"),
    pytest.param(ST, SR, ident(StudyDate="2023"), "not a date", id="short-date"),
    pytest.param(ST, SR, ident(StudyDate="20230101-20230201-20230301"), "range", id="double-range"),
    pytest.param(ST, SR, ident(StudyTime="930"), "StudyTime", id="bad-time"),
    pytest.param(
        IM, SR, ident(AcquisitionDateTime="2023-01"), "AcquisitionDateTime", id="bad-datetime"
    ),
    pytest.param(SE, SR, ident(SeriesNumber="two"), "SeriesNumber", id="not-a-number"),
    pytest.param(ST, SR, ident(StudyInstanceUID="1.2.*"), "wild cards", id="uid-wildcard"),
    pytest.param(ST, SR, {"PatientName": {"vr": "PN"}}, "not a tag", id="keyword-as-key"),
    pytest.param(ST, SR, {"00100010": "smith"}, "PatientName", id="element-not-object"),
    pytest.param(ST, SR, ident(QueryRetrieveLevel="SERIES"), "differs", id="level-mismatch"),
    pytest.param(ST, SR, ident(QueryRetrieveLevel="FRAME"), "not valid", id="unknown-level"),
    pytest.param(ST, SR, ident(PatientName="SMI\x00TH"), "NUL", id="nul-in-text"),
    pytest.param(
        SE, SR, ident(SeriesNumber="-99999999999999999999"), "outside the range", id="int-overflow"
    ),
    pytest.param(IM, SR, ident(InstanceNumber="4294967296"), "outside the range", id="is-overflow"),
    pytest.param(IM, SR, ident(SliceThickness="inf"), "finite", id="float-infinite"),
    pytest.param(
        ST, SR, ident(ProtocolName="*a" * 65), r"over 64 wild cards \(65\)", id="wild-cards"
    ),
    pytest.param(ST, SR, ident(StudyDescription="x" * 1025), "over 1024 characters", id="too-long"),
]


@pytest.mark.parametrize(("level", "model", "identifier", "message"), BAD)
def test_bad_identifiers_raise_query_error_at_call_time(
    service: QueryService,
    level: QueryLevel,
    model: QueryModel,
    identifier: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(QueryError, match=message):
        service.find(identifier, level=level, model=model)  # not iterated


def test_negative_limit_is_a_query_error(service: QueryService) -> None:
    with pytest.raises(QueryError, match="negative"):
        service.find({}, level=ST, model=SR, limit=-1)


def test_many_stars_on_stored_json_match_in_linear_time(service: QueryService) -> None:
    """Issue 17: each ``*`` was a backtracking ``.*``; 64 stars now take milliseconds."""
    start = time.monotonic()
    assert found(service, ident(ImageType="*A" * 63 + "*"), IM) == []
    assert len(found(service, ident(ImageType="*O*R*I*G*I*N*A*L*"), IM)) > 0
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("python_filter", [False, True], ids=["sql", "python-filter"])
def test_a_query_over_its_time_limit_stops_and_releases_the_connection(
    populated_archive: Archive, python_filter: bool
) -> None:
    hasty = QueryService(populated_archive.read_engine, principal=SYSTEM, time_limit=1e-6)
    identifier = ident(ImageType="*I*") if python_filter else {}
    results = hasty.find(with_identity(identifier, IM), level=IM, model=SR)
    with pytest.raises(QueryTimeout, match="query stopped: over its 1e-06 s work limit"):
        list(results)
    assert populated_archive.read_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_time_a_caller_takes_between_answers_is_not_charged_to_the_query(
    populated_archive: Archive,
) -> None:
    patient = QueryService(populated_archive.read_engine, principal=SYSTEM, time_limit=0.5)
    answers = 0
    for _ in patient.find(with_identity({}, IM), level=IM, model=SR, limit=3):
        time.sleep(0.3)  # a slow C-FIND peer
        answers += 1
    assert answers == 3


# -- retrieve ----------------------------------------------------------------------------

RETRIEVE = [
    pytest.param(
        ST,
        SR,
        ident(StudyInstanceUID=STUDY_UID["stA1"]),
        ["seA1a_1", "seA1a_2", "seA1a_3", "seA1b_1", "seA1b_2"],
        id="study",
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyInstanceUID=study_uids("stA1", "stC1")),
        ["seC1a_1", "seA1a_1", "seA1a_2", "seA1a_3", "seA1b_1", "seA1b_2"],
        id="study-uid-list",
    ),
    pytest.param(SE, SR, ident(SeriesInstanceUID=SERIES_UID["seA2c"]), ["seA2c_1"], id="series"),
    pytest.param(
        SE,
        PR,
        ident(
            PatientID="100001",
            StudyInstanceUID=STUDY_UID["stA2"],
            SeriesInstanceUID=[SERIES_UID["seA2a"], SERIES_UID["seA2b"]],
        ),
        ["seA2a_1", "seA2b_1", "seA2b_2"],
        id="series-hierarchical",
    ),
    pytest.param(
        IM,
        SR,
        ident(SOPInstanceUID=[SOP_UID["seF1a_1"], SOP_UID["seB1b_1"]]),
        ["seF1a_1", "seB1b_1"],
        id="image-uid-list",
    ),
    pytest.param(
        P,
        PR,
        ident(PatientID="100001", IssuerOfPatientID="RYR"),
        ["seB1a_1", "seB1a_2", "seB1b_1"],
        id="patient-with-issuer",
    ),
    pytest.param(
        P,
        PR,
        ident(PatientID="100001"),
        [
            "seA1a_1",
            "seA1a_2",
            "seA1a_3",
            "seA1b_1",
            "seA1b_2",
            "seB1a_1",
            "seB1a_2",
            "seB1b_1",
            "seA2a_1",
            "seA2b_1",
            "seA2b_2",
            "seA2c_1",
        ],
        id="patient-id-at-two-issuers",
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyInstanceUID=STUDY_UID["stA2"], Modality="MR"),
        ["seA2a_1", "seA2b_1", "seA2b_2"],
        id="other-matching-keys",
    ),
    pytest.param(
        IM,
        SR,
        ident(SOPInstanceUID=[SOP_UID["seA1a_1"], SOP_UID["seA1b_1"]], ImageType="DERIVED"),
        ["seA1b_1"],
        id="image-metadata-key",
    ),
    pytest.param(
        ST,
        SR,
        ident(StudyInstanceUID=STUDY_UID["stA1"], ImageType="DERIVED"),
        ["seA1a_1", "seA1a_2", "seA1a_3", "seA1b_1", "seA1b_2"],
        id="metadata-keys-ignored-above-image-level",
    ),
    pytest.param(ST, SR, ident(StudyInstanceUID="1.2.3.4"), [], id="unknown-study"),
]


@pytest.mark.parametrize(("level", "model", "identifier", "expected"), RETRIEVE)
def test_instances_for_retrieve(
    service: QueryService,
    level: QueryLevel,
    model: QueryModel,
    identifier: dict[str, Any],
    expected: list[str],
) -> None:
    items = service.instances_for_retrieve(identifier, level=level, model=model)
    assert [_NAME_BY_UID[i.sop_instance_uid] for i in items] == expected


def test_retrieve_item_locates_the_stored_object(
    service: QueryService, populated_archive: Archive
) -> None:
    [item] = service.instances_for_retrieve(
        ident(SeriesInstanceUID=SERIES_UID["seD1a"]), level=SE, model=SR
    )
    assert isinstance(item, RetrieveItem)
    assert item.sop_class_uid == SOP_CLASS["CR"]
    assert item.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    data = populated_archive.blobs.get_range(item.blob_key, 0, item.blob_size)
    assert len(data) == item.blob_size
    assert data[128:132] == b"DICM"
    assert item.sop_instance_uid.encode() in data[item.dataset_offset :]


@pytest.mark.parametrize(
    ("level", "model", "identifier", "message"),
    [
        pytest.param(ST, SR, ident(PatientID="100001"), "StudyInstanceUID", id="no-unique-key"),
        pytest.param(
            SE, SR, ident(SeriesInstanceUID=None), "SeriesInstanceUID", id="unique-key-empty"
        ),
        pytest.param(P, SR, ident(PatientID="100001"), "Study Root", id="patient-in-study-root"),
        pytest.param(P, PR, ident(PatientID="1000*"), "exact", id="wildcard-patient-id"),
    ],
)
def test_bad_retrieve_identifiers(
    service: QueryService,
    level: QueryLevel,
    model: QueryModel,
    identifier: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(QueryError, match=message):
        service.instances_for_retrieve(identifier, level=level, model=model)


def test_a_fhir_search_matching_more_studies_than_it_answers_asks_to_be_narrowed(
    service: QueryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies = ImagingStudyService(service)
    smith = PatientIdentifier("100001", ("RTP",))  # two studies
    assert len(studies.study_uids(patient=smith)) == 2
    monkeypatch.setattr(imaging_study, "MAX_MATCHES", 1)
    with pytest.raises(QueryError, match="more than 1 studies match; narrow the search"):
        studies.study_uids(patient=smith)
    assert len(studies.study_uids(patient=PatientIdentifier("100001", ("RYR",)))) == 1
