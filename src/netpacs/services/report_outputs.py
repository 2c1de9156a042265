"""The outputs of a signed report: a DICOM Basic Text SR in the study and an HL7 ORU^R01.

When a report is signed final or an addendum is added (services.reporting), two
things leave netpacs:

* a **Basic Text SR** (PS3.3 A.35.1, SOP Class 1.2.840.10008.5.1.4.1.1.88.11) stored in
  the reported study through the ingest service, so that every viewer, C-FIND and
  QIDO-RS sees it like any other object. It is built with highdicom, which implements
  the Enhanced, Comprehensive and Comprehensive 3D SR IODs but no Basic Text SR class:
  the content tree is made of highdicom's content items (CONTAINER, TEXT, CODE, PNAME
  only, all that PS3.3 A.35.1.3.1 allows in a Basic Text SR) and the document is
  highdicom's SR base class with the Basic Text SR SOP Class. Each version (the final
  report, then the report with every addendum so far) is a new instance in one series
  "Radiology report" of the study, COMPLETE and VERIFIED, naming its predecessor
  (PS3.3 C.17.2.3, Predecessor Documents Sequence).
* a **result** for the requesting trust's results listener, queued in the outbox inside
  the signing transaction (index.outbox) as what it says: the signed report, the names
  of the trust's feed and a control id fixed here. The results job (services.jobs)
  sends it, and its transport renders it as an HL7 v2.4 ORU^R01 (adapters.hl7.oru).

Report sections (domain.report.sections) are coded with the headings of PS3.16 CID 7001
"Diagnostic Imaging Report Heading" where one fits the heading, else with a local code
of netpacs's private coding scheme ``99NETPACS`` (PS3.16 8: "99" designates a private
scheme) that keeps the heading as its meaning.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pydicom
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from netpacs.domain.outbox import QueuedResult
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import Region, ResultsHeader
from netpacs.domain.report import SignedReport, sections
from netpacs.index import outbox
from netpacs.index.schema import instance, series, study
from netpacs.services.ingest import IngestService
from netpacs.services.reporting.ordered import order_of_study

if TYPE_CHECKING:
    from highdicom.sr import CodedConcept, ContainerContentItem, TextContentItem
    from highdicom.sr.sop import _SR

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SR_SERIES_DESCRIPTION = "Radiology report"
SR_SERIES_NUMBER = 9901  # after the modality's series, as report series are placed
MANUFACTURER = "netpacs"
#: The SR is made inside netpacs for a user; no Protocol value names that yet, and
#: IMPORT is the one that is never queued for reporting nor named a network transfer.
SR_PROTOCOL = Protocol.REPORT
PRIVATE_SCHEME = "99NETPACS"


class ReportOutputError(RuntimeError):
    """An output of a signed report could not be made; the message says why."""


# -- codes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (value, coding scheme, meaning), named as highdicom's
    ``CodedConcept`` names them. Kept as plain values here: the HL7 results adapter
    reads them too, and highdicom (a quarter of a second to import) is loaded only
    when an SR is made."""

    value: str
    scheme_designator: str
    meaning: str

    def concept(self) -> CodedConcept:
        from highdicom.sr import CodedConcept

        return CodedConcept(self.value, self.scheme_designator, self.meaning)


@dataclass(frozen=True, slots=True)
class Heading:
    """A report heading: its CID 7001 code and the concept of the text under it."""

    code: Code
    text_code: Code


def _ln(value: str, meaning: str) -> Code:
    return Code(value, "LN", meaning)


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


DOCUMENT_TITLE = _ln("18748-4", "Diagnostic Imaging Report")  # CID 7000
OBSERVER_TYPE = _dcm("121005", "Observer Type")
PERSON = _dcm("121006", "Person")
PERSON_OBSERVER_NAME = _dcm("121008", "Person Observer Name")
ADDENDUM = _ln("55107-7", "Addendum")
#: OBX-3 of report lines under no heading CID 7001 knows (radiology narrative).
NARRATIVE = _ln("18782-3", "Radiology Study observation (narrative)")

_HEADINGS: dict[str, Heading] = {}


def _heading(names: Sequence[str], code: Code, text_code: Code) -> None:
    for name in names:
        _HEADINGS[name] = Heading(code, text_code)


# PS3.16 CID 7001 (headings, LOINC) and CID 7002 (the text under them).
_heading(["history", "clinical history"], _ln("11329-0", "History"), _ln("11329-0", "History"))
_heading(
    ["clinical details", "clinical information", "clinical indication"],
    _ln("55752-0", "Clinical Information"),
    _ln("55752-0", "Clinical Information"),
)
_heading(
    ["indication", "indications", "reason for study", "reason for request"],
    _ln("18785-6", "Indications for Procedure"),
    _ln("18785-6", "Indications for Procedure"),
)
_heading(["request"], _ln("55115-0", "Request"), _ln("55115-0", "Request"))
_heading(
    ["technique", "procedure", "protocol"],
    _ln("55111-9", "Current Procedure Descriptions"),
    _dcm("121065", "Procedure Description"),
)
_heading(
    ["comparison", "comparisons", "prior", "priors", "previous"],
    _ln("55114-3", "Prior Procedure Descriptions"),
    _dcm("121065", "Procedure Description"),
)
_heading(["findings", "finding", "report"], _ln("59776-5", "Findings"), _dcm("121071", "Finding"))
_heading(
    ["impression", "impressions", "opinion"],
    _ln("19005-8", "Impressions"),
    _dcm("121073", "Impression"),
)
_heading(
    ["recommendation", "recommendations", "advice", "plan"],
    _ln("18783-1", "Recommendations"),
    _dcm("121075", "Recommendation"),
)
_heading(["conclusion", "conclusions"], _ln("55110-1", "Conclusions"), _dcm("121077", "Conclusion"))
_heading(["summary"], _ln("55112-7", "Summary"), _ln("55112-7", "Summary"))
_heading(
    ["complications", "complication"],
    _ln("55109-3", "Complications"),
    _ln("55109-3", "Complications"),
)


def heading_code(heading: str) -> Heading | None:
    """The CID 7001 heading for a report heading (``Findings``, ``CONCLUSION``); None."""
    return _HEADINGS.get(" ".join(heading.lower().split()))


def _private_code(heading: str) -> Code:
    value = re.sub(r"[^A-Z0-9]", "", heading.upper())[:16] or "TEXT"
    return Code(value, PRIVATE_SCHEME, heading[:64])


# -- names and times -------------------------------------------------------------------

_TITLES = {"dr", "prof", "professor", "mr", "mrs", "ms", "miss", "mx", "sir", "dame"}


@dataclass(frozen=True, slots=True)
class PersonName:
    """A person's name split into the parts DICOM PN and HL7 XPN/XCN share."""

    family: str
    given: str = ""
    prefix: str = ""

    @classmethod
    def of(cls, display_name: str, username: str) -> PersonName:
        """From a display name ("Dr Ruth Younger"); the user name when there is none."""
        words = display_name.replace("^", " ").split()
        prefix = ""
        if len(words) > 1 and words[0].lower().rstrip(".") in _TITLES:
            prefix, words = words[0], words[1:]
        if not words:
            return cls(family=username)
        return cls(family=words[-1], given=" ".join(words[:-1]), prefix=prefix)

    @property
    def dicom(self) -> str:
        """PS3.5 6.2 PN: family^given^middle^prefix^suffix (empty tail dropped)."""
        return "^".join([self.family, self.given, "", self.prefix]).rstrip("^")


def _utc(when: dt.datetime) -> dt.datetime:
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _dicom_dt(when: dt.datetime) -> str:
    return _utc(when).strftime("%Y%m%d%H%M%S") + "+0000"


# -- the Basic Text SR -----------------------------------------------------------------


@functools.cache
def _basic_text_sr_class() -> Callable[..., _SR]:
    """A Basic Text SR document (PS3.3 A.35.1) on highdicom's SR base class, made on
    first use (highdicom is imported then; see :class:`Code`).

    highdicom has no class of its own for this IOD (see the module docstring); the base
    class writes the SR Document General and Content modules, the patient and study
    modules copied from the evidence, and the evidence sequences.
    """
    from highdicom.sr.sop import _SR

    class BasicTextSR(_SR):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(sop_class_uid=BASIC_TEXT_SR, **kwargs)

    return BasicTextSR


def sr_content(signed: SignedReport) -> ContainerContentItem:
    """The content tree: the report's sections, then each addendum (PS3.3 A.35.1.3.1)."""
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ContentSequence,
        PnameContentItem,
        RelationshipTypeValues,
    )

    author = PersonName.of(signed.author.name, signed.author.username)
    has_context = RelationshipTypeValues.HAS_OBS_CONTEXT
    items: list[Any] = [
        CodeContentItem(OBSERVER_TYPE.concept(), PERSON.concept(), has_context),
        PnameContentItem(PERSON_OBSERVER_NAME.concept(), author.dicom, has_context),
    ]
    for title, body in sections(signed.text):
        known = heading_code(title)
        if known is None:
            items.append(_text(_private_code(title), body))
        else:
            items.append(_container(known.code, [_text(known.text_code, body)]))
    for addendum in signed.addenda:
        who = PersonName.of(addendum.author.name, addendum.author.username)
        items.append(
            _container(
                ADDENDUM,
                [
                    PnameContentItem(PERSON_OBSERVER_NAME.concept(), who.dicom, has_context),
                    _text(ADDENDUM, addendum.text.strip()),
                ],
            )
        )
    root = ContainerContentItem(DOCUMENT_TITLE.concept(), is_content_continuous=False)
    root.ContentSequence = ContentSequence(items)
    return root


def _text(code: Code, value: str) -> TextContentItem:
    from highdicom.sr import RelationshipTypeValues, TextContentItem

    # UT in a TEXT item: at most 2**32-2 bytes, so any report fits (PS3.3 C.17.3.2.1).
    return TextContentItem(code.concept(), value or "-", RelationshipTypeValues.CONTAINS)


def _container(code: Code, items: Sequence[Any]) -> ContainerContentItem:
    from highdicom.sr import ContainerContentItem, ContentSequence, RelationshipTypeValues

    container = ContainerContentItem(
        code.concept(),
        is_content_continuous=False,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = ContentSequence(list(items))
    return container


def build_sr(
    signed: SignedReport,
    *,
    study_header: Dataset,
    evidence: Sequence[Dataset],
    previous_versions: Sequence[Dataset],
    series_instance_uid: str,
    sop_instance_uid: str,
    organisation: str,
    institution_name: str,
) -> _SR:
    """The Basic Text SR of ``signed``, version ``signed.sequence`` (module docstring).

    ``study_header`` is any stored instance of the study (patient and study modules are
    copied from it); ``evidence`` the instances reported on (Current Requested Procedure
    Evidence); ``previous_versions`` the SRs this one supersedes.
    """
    if study_header.get("StudyInstanceUID") != signed.study_instance_uid:
        raise ReportOutputError(
            f"the study header given is of study {study_header.get('StudyInstanceUID')}, "
            f"not of the reported study {signed.study_instance_uid}"
        )
    header = Dataset()
    header.update(study_header)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        if keyword not in header:
            setattr(header, keyword, "")
    for keyword in ("AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        if keyword not in header:
            setattr(header, keyword, None)
    author = PersonName.of(signed.author.name, signed.author.username)
    sr = _basic_text_sr_class()(
        evidence=[header, *evidence],
        content=sr_content(signed),
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=signed.sequence,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        institution_name=institution_name,
        verifying_observer_name=author.dicom,
        verifying_organization=organisation,
        previous_versions=list(previous_versions) or None,
        record_evidence=False,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SR_SERIES_DESCRIPTION,
        content_date=_utc(signed.event_at).date(),
        content_time=_utc(signed.event_at).time().replace(microsecond=0),
    )
    # The patient as the index links the study (issuer included), so that the SR joins
    # the study's patient even when the image header left the issuer out.
    sr.PatientID = signed.patient_id
    sr.IssuerOfPatientID = signed.issuer
    sr.TimezoneOffsetFromUTC = "+0000"
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: report text and names as typed
    sr.InstanceCreationDate = sr.ContentDate
    sr.InstanceCreationTime = sr.ContentTime
    sr.VerifyingObserverSequence = _verifiers(signed, organisation)
    return sr


def _verifiers(signed: SignedReport, organisation: str) -> list[Dataset]:
    """The report's author at signing, then each addendum's author (PS3.3 C.17.2)."""
    out = []
    people = [(signed.author.name, signed.author.username, signed.signed_at)]
    people += [(a.author.name, a.author.username, a.at) for a in signed.addenda]
    for name, username, at in people:
        item = Dataset()
        item.VerifyingObserverName = PersonName.of(name, username).dicom
        item.VerifyingOrganization = organisation
        item.VerificationDateTime = _dicom_dt(at)
        item.VerifyingObserverIdentificationCodeSequence = []
        out.append(item)
    return out


def sr_part10(sr: Dataset) -> bytes:
    """The SR as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return buffer.getvalue()


def dataset_from_json(metadata: dict[str, Any]) -> Dataset:
    """A pydicom data set from the index's DICOM JSON (no bulk data there to fetch)."""
    kept = {
        tag: element
        for tag, element in metadata.items()
        if isinstance(element, dict) and "BulkDataURI" not in element
    }
    return Dataset.from_json(kept)


# -- the result for the requesting trust --------------------------------------------------


def new_control_id(report_event_pk: int) -> str:
    """MSH-10 (at most 20 characters): the report event, and randomness so that an
    index restored or rebuilt elsewhere never repeats an id the trust has seen."""
    return f"NPR{report_event_pk}{secrets.token_hex(8)}"[:20]


# -- the service -----------------------------------------------------------------------


class ReportOutputs:
    """Queues the ORU of a signed report and stores its SR (used by services.reporting)."""

    def __init__(
        self, *, ingest: IngestService, region: Region, read_engine: sa.Engine, ae_title: str
    ) -> None:
        self._ingest = ingest
        self._region = region
        self._read = read_engine
        self._ae_title = ae_title

    def queue_result(self, conn: sa.Connection, signed: SignedReport, report_event_pk: int) -> None:
        """Queue the result (ORU) for the requesting trust in ``conn``'s transaction (it
        commits or rolls back with the signature). What it says is decided here, once:
        the transport renders the same message from it at every attempt."""
        row = conn.execute(
            sa.select(study.c.study_date, study.c.study_time).where(
                study.c.study_instance_uid == signed.study_instance_uid
            )
        ).first()
        trust = self._region.trust(signed.requesting_trust)
        names = trust.results_header if trust is not None else ResultsHeader()
        order = order_of_study(
            conn,
            signed.study_instance_uid,
            accession_number=signed.accession_number,
            trust=signed.requesting_trust,
        )
        result = QueuedResult(
            control_id=new_control_id(report_event_pk),
            created_at=dt.datetime.now(dt.UTC),
            names=ResultsHeader(
                sending_application=names.sending_application or self._ae_title,
                sending_facility=names.sending_facility,
                receiving_application=names.receiving_application,
                receiving_facility=names.receiving_facility or signed.requesting_trust,
            ),
            report=signed,
            study_date=(row.study_date or "") if row else "",
            study_time=(row.study_time or "") if row else "",
            placer_order_number=order.placer_order_number if order is not None else "",
            filler_order_number=order.filler_order_number if order is not None else "",
            order_accession_number=order.accession_number if order is not None else "",
        )
        outbox.queue_result(
            conn, result, trust=signed.requesting_trust, report_event_pk=report_event_pk
        )

    def store_sr(self, signed: SignedReport) -> str:
        """Build the SR of ``signed`` and store it in its study; its SOP Instance UID.

        Raises :class:`ReportOutputError` when the study has no stored instance to take
        the patient from, or the archive refuses the SR.
        """
        header, evidence, previous = self._study_objects(signed.study_instance_uid)
        series_uid = report_series_uid(signed.study_instance_uid)
        sop_uid = generate_uid(prefix=None)
        trust = self._region.trust(signed.author.trust)
        organisation = trust.name if trust is not None else signed.author.trust or "netpacs"
        sr = build_sr(
            signed,
            study_header=header,
            evidence=evidence,
            previous_versions=previous,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            organisation=organisation,
            institution_name=organisation,
        )
        outcome = self._ingest.store_part10(
            sr_part10(sr),
            origin=Origin(SR_PROTOCOL, user=signed.author.username, trust=signed.author.trust),
            study_instance_uid=signed.study_instance_uid,
        )
        if not outcome.status.ok:
            raise ReportOutputError(
                f"the archive refused the report SR of study {signed.study_instance_uid} "
                f"({outcome.status.value}): {outcome.message}"
            )
        return sop_uid

    def _study_objects(self, study_uid: str) -> tuple[Dataset, list[Dataset], list[Dataset]]:
        """(a header of the study, the instances reported on, earlier report SRs)."""
        report_series = report_series_uid(study_uid)
        query = (
            sa.select(
                instance.c.id,
                instance.c.sop_instance_uid,
                instance.c.sop_class_uid,
                series.c.series_instance_uid,
            )
            .select_from(
                instance.join(series, series.c.id == instance.c.series_fk).join(
                    study, study.c.id == series.c.study_fk
                )
            )
            .where(study.c.study_instance_uid == study_uid)
            .order_by(instance.c.id)
        )
        with self._read.connect() as conn:
            rows = conn.execute(query).all()
            reported = [r for r in rows if r.series_instance_uid != report_series]
            if not reported:
                raise ReportOutputError(
                    f"study {study_uid} has no stored instance: the report SR needs the "
                    "patient and study attributes of one"
                )
            meta = conn.execute(
                sa.select(instance.c.metadata_json).where(instance.c.id == reported[0].id)
            ).scalar_one()
        header = dataset_from_json(orjson.loads(meta))

        def ref(r: Any) -> Dataset:
            ds = Dataset()
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = r.series_instance_uid
            ds.SOPInstanceUID = r.sop_instance_uid
            ds.SOPClassUID = r.sop_class_uid
            return ds

        evidence = [ref(r) for r in reported[1:]]
        previous = [ref(r) for r in rows if r.series_instance_uid == report_series]
        return header, evidence, previous


_REPORT_SERIES = uuid.UUID("5f0c4a8e-6a51-4d0e-9a36-6e6574706163")  # netpacs's namespace


def report_series_uid(study_uid: str) -> str:
    """The series of a study's report SRs: the same for every version of the report."""
    return f"2.25.{uuid.uuid5(_REPORT_SERIES, study_uid).int}"
