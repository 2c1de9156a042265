"""The synthetic demo region: patients, studies and ADT messages of every trust, loaded in-process.

``netpacs demo-data`` makes a region like the one REGION.md describes and stores it
through the ingest service, as if each site's modalities had sent it. Everything is
made up and the same seed always gives the same region, UIDs included:

- People have common British names, birth dates and sex. Most have a valid NHS number
  in the range reserved for testing (``999 ...``, never issued to a person); a few
  have none, and a couple have a deliberately invalid one (one with a wrong check
  digit, one whose check digit would be 10), which netpacs must flag, never link.
- Each trust issues its own hospital numbers (:data:`HOSPITAL_NUMBER_FORMATS`):

  ==== ================ ===========
  RTP  RTP + 7 digits   RTP0412345
  RTK  K + 6 digits     K123456
  RXC  7 digits         1234567
  RPC  QV + 6 digits    QV123456
  RA2  7 digits         1234567
  RYR  7 digits         1234567
  ==== ================ ===========

  Other trusts (another region file) get their ODS code and 7 digits.
- Some people attend two or three trusts, under a different hospital number at each,
  linked only by their NHS number. A few hospital numbers are deliberately issued by
  two trusts of the same (plain digits) format to two different people.
- Studies are CT, MR, CR, DX, US and MG from every site, sent by the site's modality
  AEs (``<SITE>_CT1``, ``_MR1``, ``_US1``; CR, DX and MG through ``<SITE>_CR1``: the
  demo region has no other AEs). Every object carries PatientID = the hospital number,
  Issuer of Patient ID = the ODS code and, when the person has an NHS number, an
  Other Patient IDs Sequence item with it and issuer ``NHS``.
- One HL7 v2.4 ADT^A04 per local identity is written to ``<data_dir>/demo/adt/``.
- After them, three planted cases for the reconciliation page
  (:func:`reconciliation_cases`): a trust sends a birth date ten years off for a
  person known at another trust; a trust registers a person a second time under a
  new hospital number; a trust sends a second NHS number for a hospital number.

The model (:func:`build_region`) and the messages (:func:`adt_messages`) are usable
without loading anything, e.g. to send the ADT messages over MLLP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import io
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import sqlalchemy as sa
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)
from tqdm import tqdm

from netpacs.app.container import Archive, build_archive
from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION, Settings
from netpacs.domain import nhs_number
from netpacs.domain.outcomes import Origin, Protocol, StoreOutcome, StoreStatus
from netpacs.domain.region import AEKind, Region, Site
from netpacs.index.db import make_engine
from netpacs.index.schema import study as study_table
from netpacs.services.ingest import IngestService
from netpacs.services.maintenance import run_bounded
from netpacs.synthetic import make_ct_series

log = logging.getLogger(__name__)

__all__ = [
    "HOSPITAL_NUMBER_FORMATS",
    "DemoRegion",
    "DemoSeries",
    "DemoStudy",
    "Identity",
    "LoadSummary",
    "Modality",
    "NhsNumberStatus",
    "Person",
    "adt_messages",
    "build_region",
    "datasets",
    "load",
    "main",
    "part10",
    "write_adt",
]

#: Hospital number format per ODS code: (prefix, number of digits).
HOSPITAL_NUMBER_FORMATS: dict[str, tuple[str, int]] = {
    "RTP": ("RTP", 7),
    "RTK": ("K", 6),
    "RXC": ("", 7),
    "RPC": ("QV", 6),
    "RA2": ("", 7),
    "RYR": ("", 7),
}
#: Dates of the demo studies (fixed, so that a seed always gives the same region).
FIRST_STUDY_DAY = dt.date(2021, 1, 4)
LAST_STUDY_DAY = dt.date(2025, 12, 19)
#: The NHS number range reserved for test data: never a real person's.
_TEST_NHS_PREFIX = "999"
_UUID_NAMESPACE = uuid.UUID("5d1c7c1e-4f0b-4b8e-9a59-6e6574706163")
_MANUFACTURER = "netpacs synthetic"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Common surnames and given names in England and Wales (no real person's data).
_FAMILY_NAMES = _words(
    "SMITH JONES WILLIAMS TAYLOR BROWN DAVIES EVANS WILSON THOMAS JOHNSON ROBERTS "
    "ROBINSON THOMPSON WRIGHT WALKER WHITE EDWARDS HUGHES GREEN HALL LEWIS HARRIS CLARKE "
    "PATEL JACKSON WOOD TURNER MARTIN COOPER HILL WARD MORRIS MOORE CLARK LEE KING BAKER "
    "HARRISON MORGAN ALLEN JAMES SCOTT PHILLIPS WATSON DAVIS PARKER PRICE BENNETT YOUNG "
    "GRIFFITHS MITCHELL KELLY COOK CARTER RICHARDSON BAILEY COLLINS BELL SHAW MURPHY "
    "MILLER COX RICHARDS KHAN MARSHALL ANDERSON SIMPSON ELLIS ADAMS SINGH BEGUM WILKINSON "
    "FOSTER CHAPMAN POWELL WEBB ROGERS GRAY MASON ALI HUNT HUSSAIN CAMPBELL MATTHEWS OWEN "
    "PALMER HOLMES MILLS BARNES KNIGHT LLOYD BUTLER RUSSELL BARKER FISHER STEVENS JENKINS "
    "MURRAY DIXON HARVEY O'BRIEN SMITH-JONES FLETCHER"
)
_GIVEN_NAMES = {
    "F": _words(
        "Olivia Amelia Isla Ava Mia Grace Sophia Lily Freya Emily Ivy Ella Rosie Evie "
        "Poppy Charlotte Margaret Susan Patricia Elizabeth Sarah Helen Karen Julie Claire "
        "Joanne Rachel Nicola Emma Hannah Jessica Priya Aisha Fatima Zara Jean Joan "
        "Doreen Sian Megan Catherine"
    ),
    "M": _words(
        "Oliver George Noah Arthur Harry Leo Jack Charlie Oscar Jacob Henry Thomas "
        "William James David John Michael Robert Paul Mark Richard Peter Andrew Stephen "
        "Christopher Daniel Matthew Mohammed Ahmed Rajesh Arjun Ravi Dylan Rhys Callum "
        "Kieran Brian Kenneth Graham Alan"
    ),
}


class Modality(enum.Enum):
    """Modality (0008,0060) of a demo study."""

    CT = "CT"
    MR = "MR"
    CR = "CR"
    DX = "DX"
    US = "US"
    MG = "MG"


class NhsNumberStatus(enum.Enum):
    VALID = "valid"
    NONE = "none"  # never traced: images and ADT carry only the hospital number
    WRONG_CHECK_DIGIT = "wrong check digit"
    CHECK_DIGIT_TEN = "check digit 10"


@dataclass(frozen=True, slots=True)
class Person:
    """One synthetic human being, who may attend several trusts."""

    key: int
    family_name: str
    given_name: str
    sex: str  # M or F (DICOM and HL7 table 0001 alike)
    birth_date: dt.date
    nhs_number: str | None  # as every trust records it; invalid when the status says so
    nhs_number_status: NhsNumberStatus

    @property
    def patient_name(self) -> str:
        """DICOM PN: FAMILY^Given."""
        return f"{self.family_name}^{self.given_name}"


@dataclass(frozen=True, slots=True)
class Identity:
    """A local identity: the person's hospital number at one trust (issuer: ODS code)."""

    person: Person
    trust: str
    hospital_number: str


@dataclass(frozen=True, slots=True)
class DemoSeries:
    series_instance_uid: str
    series_number: int
    description: str
    sop_instance_uids: tuple[str, ...]
    views: tuple[str, ...] = ()  # projection images: view (and laterality) per instance


@dataclass(frozen=True, slots=True)
class DemoStudy:
    identity: Identity
    site: Site
    ae_title: str
    modality: Modality
    study_instance_uid: str
    accession_number: str
    study_date: dt.date
    study_time: str  # HHMMSS
    description: str
    body_part: str
    referring_physician_name: str
    series: tuple[DemoSeries, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.sop_instance_uids) for s in self.series)

    @property
    def institution_name(self) -> str:
        """The hospital's name, without the town REGION.md adds in brackets."""
        return self.site.name.split(" (", 1)[0]


@dataclass(frozen=True, slots=True)
class DemoRegion:
    """The whole synthetic region: people, their local identities and their studies."""

    seed: int
    persons: tuple[Person, ...]
    identities: tuple[Identity, ...]
    studies: tuple[DemoStudy, ...]

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.studies)

    def shared_hospital_numbers(self) -> dict[str, list[Identity]]:
        """Hospital numbers issued by more than one trust (to different people)."""
        by_number: dict[str, list[Identity]] = {}
        for identity in self.identities:
            by_number.setdefault(identity.hospital_number, []).append(identity)
        return {n: ids for n, ids in by_number.items() if len({i.trust for i in ids}) > 1}


# -- the model -------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a name-based UUID: the same seed, the same UIDs."""
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UUID_NAMESPACE, name).int}"


def _nhs_number(rng: random.Random, status: NhsNumberStatus, used: set[str]) -> str | None:
    """A number of the range kept for test data (``999``) with the status asked for.

    Never one already given to someone else: one NHS number on two people is a
    conflict for a person to resolve, not something the demo should make by chance.
    """
    if status is NhsNumberStatus.NONE:
        return None
    while True:
        first_nine = _TEST_NHS_PREFIX + f"{rng.randrange(10**6):06d}"
        check = nhs_number.check_digit(first_nine)
        if status is NhsNumberStatus.CHECK_DIGIT_TEN:
            number = first_nine + str(rng.randrange(10)) if check == 10 else None
        elif check == 10:
            number = None
        elif status is NhsNumberStatus.VALID:
            number = first_nine + str(check)
        else:
            number = first_nine + str((check + 1 + rng.randrange(9)) % 10)
        if number is not None and number not in used:
            used.add(number)
            return number


def _hospital_number(rng: random.Random, trust: str, used: set[str]) -> str:
    prefix, digits = HOSPITAL_NUMBER_FORMATS.get(trust, (trust, 7))
    while True:
        number = prefix + f"{rng.randrange(10 ** (digits - 1), 10**digits):0{digits}d}"
        if number not in used:  # accidental collisions would blur the planted ones
            used.add(number)
            return number


def _persons(n: int, rng: random.Random) -> list[Person]:
    statuses = [NhsNumberStatus.VALID] * n
    order = rng.sample(range(n), n)
    special = [NhsNumberStatus.WRONG_CHECK_DIGIT, NhsNumberStatus.CHECK_DIGIT_TEN]
    special += [NhsNumberStatus.NONE] * max(1, n * 4 // 100)
    for i, status in zip(order[: max(0, n - 1)], special, strict=False):
        statuses[i] = status
    persons = []
    used: set[str] = set()
    for key in range(n):
        sex = rng.choice("MF")
        age_days = rng.randrange(365 * 2, 365 * 92)
        persons.append(
            Person(
                key=key,
                family_name=rng.choice(_FAMILY_NAMES),
                given_name=rng.choice(_GIVEN_NAMES[sex]),
                sex=sex,
                birth_date=LAST_STUDY_DAY - dt.timedelta(days=age_days),
                nhs_number=_nhs_number(rng, statuses[key], used),
                nhs_number_status=statuses[key],
            )
        )
    return persons


def _identities(persons: list[Person], region: Region, rng: random.Random) -> list[Identity]:
    trusts = [t.ods_code for t in region.trusts]
    weights = [len(t.sites) for t in region.trusts]  # bigger trusts see more patients
    valid = [p.key for p in persons if p.nhs_number_status is NhsNumberStatus.VALID]
    n = len(persons)
    multi = rng.sample(valid, min(len(valid), max(1, n * 20 // 100)))
    n_three = max(1, n * 5 // 100)
    attends = {key: 3 if i < n_three else 2 for i, key in enumerate(multi)}
    used: set[str] = set()
    identities = []
    for p in persons:
        home = trusts[p.key] if p.key < len(trusts) else rng.choices(trusts, weights)[0]
        others = [t for t in trusts if t != home]
        chosen = [home, *rng.sample(others, min(len(others), attends.get(p.key, 1) - 1))]
        identities += [Identity(p, t, _hospital_number(rng, t, used)) for t in chosen]
    return _plant_collisions(identities, rng)


def _plant_collisions(identities: list[Identity], rng: random.Random) -> list[Identity]:
    """Give a few people the hospital number another trust issued to someone else.

    Only between trusts whose numbers look alike (the same format), as happens when
    two trusts both number their patients with plain digits; each pair of such trusts
    gets one before any pair gets a second.
    """
    wanted = max(1, len({i.person.key for i in identities}) // 50)
    out = list(identities)
    positions = list(range(len(out)))
    rng.shuffle(positions)
    taken: set[int] = set()  # identity positions already part of a collision
    pairs: set[frozenset[str]] = set()
    for fresh_pairs_only in (True, False):
        for a in positions:
            if len(taken) == 2 * wanted:
                return out
            b = _collision_partner(out, a, positions, taken, pairs if fresh_pairs_only else set())
            if b is not None:
                out[b] = dataclasses.replace(out[b], hospital_number=out[a].hospital_number)
                taken.update((a, b))
                pairs.add(frozenset((out[a].trust, out[b].trust)))
    return out


def _collision_partner(
    out: list[Identity],
    a: int,
    positions: list[int],
    taken: set[int],
    avoid: set[frozenset[str]],
) -> int | None:
    """An identity of another person at another trust of the same number format as ``a``."""
    first = out[a]
    fmt = HOSPITAL_NUMBER_FORMATS.get(first.trust)
    if a in taken or fmt is None:
        return None
    for b in positions:
        second = out[b]
        if not (
            b in taken
            or second.trust == first.trust
            or HOSPITAL_NUMBER_FORMATS.get(second.trust) != fmt
            or frozenset((first.trust, second.trust)) in avoid
            or second.person.key == first.person.key
            or second.person.birth_date == first.person.birth_date
        ):
            return b
    return None


# Per modality: (study description, Body Part Examined, series descriptions).
_PROCEDURES: dict[Modality, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    Modality.CT: (
        ("CT ABDOMEN PELVIS WITH CONTRAST", "ABDOMENPELVIS", ("AXIAL 5.0 SOFT TISSUE",)),
        ("CT CHEST ABDOMEN PELVIS WITH CONTRAST", "CHESTABDPELVIS", ("AXIAL 5.0 PORTAL",)),
        ("CT KUB", "ABDOMENPELVIS", ("AXIAL 3.0 LOW DOSE",)),
        ("CT AORTA ANGIOGRAM", "ABDOMEN", ("AXIAL 1.0 ARTERIAL",)),
    ),
    Modality.MR: (
        ("MR HEAD", "HEAD", ("T2 AXIAL", "T1 AXIAL")),
        ("MR LUMBAR SPINE", "LSPINE", ("T2 SAGITTAL", "T1 SAGITTAL")),
        ("MR KNEE LEFT", "KNEE", ("PD FS CORONAL", "PD SAGITTAL")),
        ("MR LIVER", "LIVER", ("T2 HASTE AXIAL", "T1 DIXON AXIAL")),
    ),
    Modality.CR: (
        ("XR CHEST PA", "CHEST", ("PA",)),
        ("XR KNEE RIGHT", "KNEE", ("AP", "LAT")),
        ("XR HAND LEFT", "HAND", ("PA", "OBL")),
        ("XR PELVIS", "PELVIS", ("AP",)),
    ),
    Modality.DX: (
        ("XR CHEST", "CHEST", ("PA",)),
        ("XR LUMBAR SPINE", "LSPINE", ("AP", "LAT")),
        ("XR ANKLE RIGHT", "ANKLE", ("AP", "LAT")),
        ("XR SHOULDER LEFT", "SHOULDER", ("AP",)),
    ),
    Modality.US: (
        ("US ABDOMEN", "ABDOMEN", ("ABDOMEN",)),
        ("US PELVIS", "PELVIS", ("PELVIS",)),
        ("US NECK", "NECK", ("THYROID",)),
        ("US RENAL TRACT", "KIDNEY", ("KIDNEYS",)),
    ),
    Modality.MG: (
        ("MG BILATERAL SCREENING", "BREAST", ("R CC", "L CC", "R MLO", "L MLO")),
        ("MG LEFT SYMPTOMATIC", "BREAST", ("L CC", "L MLO")),
        ("MG RIGHT SYMPTOMATIC", "BREAST", ("R CC", "R MLO")),
    ),
}
#: How often each modality comes up: a shuffled deck of these, dealt study by study,
#: so that every modality appears in any run of a few dozen studies.
_DECK = {Modality.CR: 3, Modality.DX: 2, Modality.CT: 3, Modality.MR: 2, Modality.US: 3}
_DECK[Modality.MG] = 1
#: The AE each modality arrives from (a site's CR AE stands in for DX and MG rooms).
_AE_SUFFIX = {
    Modality.CT: "_CT1",
    Modality.MR: "_MR1",
    Modality.CR: "_CR1",
    Modality.DX: "_CR1",
    Modality.US: "_US1",
    Modality.MG: "_CR1",
}


class _Dealer:
    """Deals modalities from a shuffled deck, skipping cards that do not suit a patient."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._deck: list[Modality] = []

    def deal(self, person: Person, day: dt.date) -> Modality:
        age = (day - person.birth_date).days // 365
        for _ in range(2):
            for i, card in enumerate(self._deck):
                if card is not Modality.MG or (person.sex == "F" and age >= 40):
                    return self._deck.pop(i)
            cards = [m for m, n in _DECK.items() for _ in range(n)]
            self._rng.shuffle(cards)
            self._deck += cards
        return Modality.CR


def _modality_ae(region: Region, site: Site, modality: Modality) -> str | None:
    aes = [a.ae_title for a in region.aes if a.site == site.code and a.kind is AEKind.MODALITY]
    wanted = site.code + _AE_SUFFIX[modality]
    return wanted if wanted in aes else (aes[0] if aes else None)


def _study(
    namespace: str,
    index: int,
    identity: Identity,
    *,
    site: Site,
    ae_title: str,
    modality: Modality,
    day: dt.date,
    accession: str,
    rng: random.Random,
) -> DemoStudy:
    description, body_part, series_names = rng.choice(_PROCEDURES[modality])
    study_uid = _uid(namespace, "study", index)
    series = []
    for number, name in enumerate(series_names, start=1):
        views: tuple[str, ...] = ()
        if modality is Modality.CT:
            count = rng.randint(10, 20)
        elif modality is Modality.MR:
            count = rng.randint(6, 10)
        elif modality is Modality.US:
            count = rng.randint(1, 3)
        else:  # projection radiography: one series per view, one image each
            count, views = 1, (name,)
        series_uid = _uid(namespace, "series", index, number)
        sops = tuple(_uid(namespace, "instance", index, number, i) for i in range(count))
        series.append(DemoSeries(series_uid, number, name, sops, views))
    referrer = rng.choice(_FAMILY_NAMES).title()
    return DemoStudy(
        identity=identity,
        site=site,
        ae_title=ae_title,
        modality=modality,
        study_instance_uid=study_uid,
        accession_number=accession,
        study_date=day,
        study_time=f"{rng.randint(8, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
        description=description,
        body_part=body_part,
        referring_physician_name=f"{referrer}^{rng.choice('ABCDEFGHJKLMNPRSTW')}^^Dr",
        series=tuple(series),
    )


def _studies(
    namespace: str, identities: list[Identity], region: Region, rng: random.Random
) -> list[DemoStudy]:
    dealer = _Dealer(rng)
    next_site: Counter[str] = Counter()  # round robin, so that every site sends studies
    accession_counter: Counter[tuple[str, int]] = Counter()
    studies: list[DemoStudy] = []
    for identity in identities:
        trust = region.trust(identity.trust)
        if trust is None or not trust.sites:
            continue
        first = max(FIRST_STUDY_DAY, identity.person.birth_date + dt.timedelta(days=1))
        span = (LAST_STUDY_DAY - first).days
        count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        days = sorted(first + dt.timedelta(days=rng.randrange(span + 1)) for _ in range(count))
        for day in days:
            site = trust.sites[next_site[trust.ods_code] % len(trust.sites)]
            next_site[trust.ods_code] += 1
            modality = dealer.deal(identity.person, day)
            ae_title = _modality_ae(region, site, modality)
            if ae_title is None:
                continue
            accession_counter[site.code, day.year] += 1
            n = accession_counter[site.code, day.year]
            accession = f"{site.code}{day.year % 100:02d}{n:06d}"
            studies.append(
                _study(
                    namespace,
                    len(studies),
                    identity,
                    site=site,
                    ae_title=ae_title,
                    modality=modality,
                    day=day,
                    accession=accession,
                    rng=rng,
                )
            )
    return studies


def build_region(patients: int, seed: int, *, region: Region | None = None) -> DemoRegion:
    """The synthetic region of ``patients`` people; the same arguments, the same region.

    ``region`` defaults to the bundled demo region (REGION.md's six trusts).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    region = region or load_region(BUNDLED_DEMO_REGION)
    rng = random.Random(f"netpacs demo {seed}")
    persons = _persons(patients, rng)
    identities = _identities(persons, region, rng)
    # UIDs depend on everything that shapes the region, so that two different regions
    # never give one UID to two different objects.
    namespace = f"{seed}/{patients}/{','.join(t.ods_code for t in region.trusts)}"
    studies = _studies(namespace, identities, region, rng)
    return DemoRegion(seed, tuple(persons), tuple(identities), tuple(studies))


# -- images ------------------------------------------------------------------------------

_Image = npt.NDArray[np.float64]


def _pixel_rng(sop_instance_uid: str) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(sop_instance_uid.encode()).digest()[:8])
    )


def _canvas(rows: int, columns: int) -> tuple[_Image, _Image]:
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    return x, y


def _paint(
    image: _Image, x: _Image, y: _Image, shapes: Sequence[tuple[float, float, float, float, float]]
) -> None:
    """Paint ellipses (cx, cy, a, b, value) in order; later ones cover earlier ones."""
    for cx, cy, a, b, value in shapes:
        image[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0] = value


def _mr_pixels(body_part: str, weighting: str, zf: float, gen: np.random.Generator) -> _Image:
    x, y = _canvas(128, 128)
    t2 = weighting.startswith(("T2", "PD"))
    fat, fluid, soft, dark = 900.0, (1800.0 if t2 else 250.0), 600.0, 80.0
    s = 0.75 + 0.25 * np.sin(np.pi * zf)
    image = np.zeros_like(x)
    if body_part == "HEAD":
        shapes = [
            (0.0, 0.0, 0.80 * s, 0.92 * s, fat),
            (0.0, 0.0, 0.74 * s, 0.86 * s, dark),
            (0.0, 0.0, 0.70 * s, 0.82 * s, fluid * 0.6 + 300),
            (0.0, 0.0, 0.64 * s, 0.76 * s, soft + (150 if not t2 else 0)),
            (-0.12, -0.05, 0.07, 0.25 * s, fluid),
            (0.12, -0.05, 0.07, 0.25 * s, fluid),
        ]
    else:
        shapes = [
            (0.0, 0.0, 0.85, 0.62, fat),
            (0.0, 0.0, 0.78, 0.55, soft),
            (0.0, 0.35, 0.12, 0.10, dark),
            (0.0, 0.35, 0.09, 0.07, fluid * 0.5),
            (-0.35 * s, -0.05, 0.22, 0.18, soft * 1.2),
            (0.30, 0.05, 0.10 * s, 0.12, fluid),
        ]
    _paint(image, x, y, shapes)
    return image + gen.normal(0.0, 25.0, image.shape)


def _xray_pixels(body_part: str, view: str, rows: int, gen: np.random.Generator) -> _Image:
    """A projection radiograph: air dark, bone bright (MONOCHROME2)."""
    x, y = _canvas(rows, rows)
    image = np.full_like(x, 300.0)
    if body_part == "CHEST":
        shapes = [
            (0.0, 0.1, 0.92, 0.95, 2000.0),
            (-0.42, -0.05, 0.30, 0.62, 900.0),
            (0.42, -0.05, 0.30, 0.62, 900.0),
            (0.0, 0.05, 0.14, 0.85, 2600.0),
            (0.12, 0.30, 0.28, 0.22, 2300.0),
        ]
    elif body_part == "BREAST":
        side = -1.0 if view.startswith("R") else 1.0
        shapes = [(side * 1.0, 0.0, 0.95, 0.85, 1500.0), (side * 0.75, -0.1, 0.35, 0.35, 2200.0)]
    else:
        tilt = 0.25 if view in ("LAT", "OBL") else 0.0
        shapes = [
            (tilt, 0.0, 0.45, 1.1, 1600.0),
            (tilt, 0.0, 0.16, 1.1, 3200.0),
            (tilt, 0.0, 0.09, 1.1, 2500.0),
        ]
    _paint(image, x, y, shapes)
    return image + gen.normal(0.0, 40.0, image.shape)


def _us_pixels(gen: np.random.Generator) -> _Image:
    """A B-mode sector: speckle in a fan from the probe at the top, a dark cystic organ."""
    x, y = _canvas(128, 128)
    depth = y + 1.0
    inside = (np.abs(x) <= depth * 0.7) & (x**2 + depth**2 <= 3.6)
    speckle = gen.rayleigh(45.0, x.shape) * (1.0 + 0.6 * (np.abs(y - 0.1) < 0.08))
    cx, cy = gen.uniform(-0.3, 0.3), gen.uniform(0.1, 0.5)
    organ = ((x - cx) / 0.3) ** 2 + ((y - cy) / 0.2) ** 2 <= 1.0
    speckle[organ] *= 0.15
    return np.where(inside, speckle, 0.0)


def _uint(image: _Image, bits: int) -> bytes:
    """Little-endian unsigned pixel data of ``bits`` stored bits."""
    dtype = np.dtype("<u1") if bits <= 8 else np.dtype("<u2")
    return np.clip(np.rint(image), 0, (1 << bits) - 1).astype(dtype).tobytes()


# -- data sets -----------------------------------------------------------------------------


def _base(study: DemoStudy, series: DemoSeries) -> Dataset:
    """Patient, study, series and equipment attributes shared by a series' instances."""
    person = study.identity.person
    day = study.study_date.strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = person.patient_name
    ds.PatientID = study.identity.hospital_number
    ds.IssuerOfPatientID = study.identity.trust
    ds.PatientBirthDate = person.birth_date.strftime("%Y%m%d")
    ds.PatientSex = person.sex
    age = (study.study_date - person.birth_date).days // 365
    ds.PatientAge = f"{age:03d}Y"
    if person.nhs_number is not None:
        item = Dataset()
        item.PatientID = person.nhs_number
        item.IssuerOfPatientID = "NHS"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = DicomSequence([item])
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.accession_number[-6:].lstrip("0") or "1"
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.Modality = study.modality.value
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = str(series.series_number)
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = study.body_part
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = f"SYNTHETIC {study.modality.value}"
    ds.InstitutionName = study.institution_name
    ds.StationName = study.ae_title
    return ds


def _with_meta(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def _grey(ds: Dataset, *, rows: int, columns: int, bits: int, pixels: bytes) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", pixels)


def _ct(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    frame_uid = _uid(study.study_instance_uid, "frame", series.series_number)
    slices = make_ct_series(
        len(series.sop_instance_uids),
        study_uid=study.study_instance_uid,
        rows=128,
        columns=128,
        seed=int(hashlib.sha256(series.series_instance_uid.encode()).hexdigest()[:8], 16),
    )
    for ds, sop_uid in zip(slices, series.sop_instance_uids, strict=True):
        del ds.InstitutionAddress
        ds.update(base)
        ds.FrameOfReferenceUID = frame_uid
        yield _with_meta(ds, ds.SOPClassUID, sop_uid)


def _mr(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    frame_uid = _uid(study.study_instance_uid, "frame")
    sagittal = "SAGITTAL" in series.description
    n = len(series.sop_instance_uids)
    for i, sop_uid in enumerate(series.sop_instance_uids):
        ds = Dataset()
        ds.update(base)
        t2 = series.description.startswith(("T2", "PD"))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "4000" if t2 else "550"
        ds.EchoTime = "100" if t2 else "12"
        ds.EchoTrainLength = "16" if t2 else "3"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "6"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = str(i + 1)
        offset = (i - (n - 1) / 2) * 6.0
        if sagittal:
            ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = [f"{offset:.1f}", "-120", "120"]
        else:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.ImagePositionPatient = ["-120", "-120", f"{offset:.1f}"]
        ds.SliceLocation = f"{offset:.1f}"
        ds.PixelSpacing = ["1.875", "1.875"]
        ds.WindowCenter = "900" if t2 else "500"
        ds.WindowWidth = "1800" if t2 else "1000"
        zf = (i + 0.5) / n
        pixels = _mr_pixels(study.body_part, series.description, zf, _pixel_rng(sop_uid))
        _grey(ds, rows=128, columns=128, bits=12, pixels=_uint(pixels, 12))
        yield _with_meta(ds, MRImageStorage, sop_uid)


def _projection(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    classes = {
        Modality.CR: ComputedRadiographyImageStorage,
        Modality.DX: DigitalXRayImageStorageForPresentation,
        Modality.MG: DigitalMammographyXRayImageStorageForPresentation,
    }
    for i, (sop_uid, view) in enumerate(zip(series.sop_instance_uids, series.views, strict=True)):
        ds = Dataset()
        ds.update(base)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = str(i + 1)
        laterality, _, position = view.rpartition(" ")
        ds.ViewPosition = position
        if study.modality is Modality.CR:
            ds.PatientOrientation = ["L", "F"]
        else:
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "US"
            ds.LossyImageCompression = "00"
            ds.ImageLaterality = laterality or "U"
            ds.PatientOrientation = ["A", "R" if laterality == "L" else "L"]
            if study.modality is Modality.MG:
                ds.BreastImplantPresent = "NO"
                ds.PartialView = "NO"
        ds.ImagerPixelSpacing = (
            ["0.5", "0.5"] if study.modality is not Modality.MG else ["0.4", "0.4"]
        )
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"
        pixels = _xray_pixels(study.body_part, view, 256, _pixel_rng(sop_uid))
        _grey(ds, rows=256, columns=256, bits=12, pixels=_uint(pixels, 12))
        yield _with_meta(ds, classes[study.modality], sop_uid)


def _us(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    for i, sop_uid in enumerate(series.sop_instance_uids):
        ds = Dataset()
        ds.update(base)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.InstanceNumber = str(i + 1)
        ds.PatientOrientation = ""
        _grey(ds, rows=128, columns=128, bits=8, pixels=_uint(_us_pixels(_pixel_rng(sop_uid)), 8))
        yield _with_meta(ds, UltrasoundImageStorage, sop_uid)


def datasets(study: DemoStudy) -> Iterator[Dataset]:
    """The instances of one demo study, each with file meta (explicit VR little endian)."""
    make = {Modality.CT: _ct, Modality.MR: _mr, Modality.US: _us}.get(study.modality, _projection)
    for series in study.series:
        yield from make(study, series)


def part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, file meta, data set)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# -- HL7 ADT ---------------------------------------------------------------------------------


def _registered(demo: DemoRegion) -> dict[tuple[str, str, int], dt.date]:
    """When each identity was registered: the day before its first study."""
    first: dict[tuple[str, str, int], dt.date] = {}
    for s in demo.studies:
        key = (s.identity.trust, s.identity.hospital_number, s.identity.person.key)
        first[key] = min(first.get(key, s.study_date), s.study_date)
    return first


def adt_messages(demo: DemoRegion) -> list[bytes]:
    """One HL7 v2.4 ADT^A04 (register a patient) per local identity, segments ended by CR.

    MSH-3/4 is the trust's patient administration system (``PAS`` at its ODS code) and
    MSH-10 a control id unique in the region for the seed (``DEMO-<seed>-<n>``).
    PID-3 holds the hospital number (assigning authority the ODS code, type MR) and,
    when known, the NHS number (assigning authority ``NHS``, type NH).
    """
    registered = _registered(demo)
    messages = []
    for n, identity in enumerate(demo.identities, start=1):
        person = identity.person
        key = (identity.trust, identity.hospital_number, person.key)
        day = registered.get(key, FIRST_STUDY_DAY) - dt.timedelta(days=1)
        stamp = day.strftime("%Y%m%d") + "0700"
        control_id = f"DEMO-{demo.seed % 100000}-{n:05d}"
        pid3 = f"{identity.hospital_number}^^^{identity.trust}^MR"
        if person.nhs_number is not None:
            pid3 += f"~{person.nhs_number}^^^NHS^NH"
        segments = [
            f"MSH|^~\\&|PAS|{identity.trust}|NETPACS|REGION|{stamp}||ADT^A04^ADT_A01|"
            f"{control_id}|P|2.4",
            f"EVN|A04|{stamp}",
            f"PID|1||{pid3}||{person.family_name}^{person.given_name}||"
            f"{person.birth_date:%Y%m%d}|{person.sex}",
            "PV1|1|O",
        ]
        messages.append(("\r".join(segments) + "\r").encode("ascii"))
    return messages


def _adt(
    demo: DemoRegion, control: str, trigger: str, pid3: str, person: Person, **kw: str
) -> bytes:
    stamp = f"{LAST_STUDY_DAY:%Y%m%d}1200"
    birth = kw.get("birth_date", f"{person.birth_date:%Y%m%d}")
    segments = [
        f"MSH|^~\\&|PAS|{kw.get('trust', '')}|NETPACS|REGION|{stamp}||ADT^{trigger}^ADT_A01|"
        f"DEMO-{demo.seed % 100000}-{control}|P|2.4",
        f"EVN|{trigger}|{stamp}",
        f"PID|1||{pid3}||{person.family_name}^{person.given_name}||{birth}|{person.sex}",
        "PV1|1|O",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def reconciliation_cases(demo: DemoRegion) -> list[tuple[str, bytes]]:
    """ADT messages that each need a person's decision, with what they plant.

    Chosen from the region deterministically; they come after the A04s.
    """
    cases: list[tuple[str, bytes]] = []
    valid = [
        p for p in demo.persons if p.nhs_number_status is NhsNumberStatus.VALID and p.nhs_number
    ]
    by_person: dict[int, list[Identity]] = {}
    for identity in demo.identities:
        by_person.setdefault(identity.person.key, []).append(identity)
    travellers = [p for p in valid if len(by_person.get(p.key, [])) >= 2]
    stay_at_home = [p for p in valid if len(by_person.get(p.key, [])) == 1]
    if travellers:
        person = travellers[0]
        identity = by_person[person.key][1]
        born = person.birth_date
        typo = born.replace(year=born.year - 10, day=min(born.day, 28))
        pid3 = f"{identity.hospital_number}^^^{identity.trust}^MR~{person.nhs_number}^^^NHS^NH"
        cases.append(
            (
                f"birth date ten years off for {identity.hospital_number} at {identity.trust}",
                _adt(
                    demo,
                    "R1",
                    "A08",
                    pid3,
                    person,
                    birth_date=f"{typo:%Y%m%d}",
                    trust=identity.trust,
                ),
            )
        )
    if len(travellers) > 1:
        person = travellers[1]
        identity = by_person[person.key][0]
        used = {i.hospital_number for i in demo.identities}
        number = _hospital_number(random.Random(demo.seed + 1), identity.trust, used)
        pid3 = f"{number}^^^{identity.trust}^MR~{person.nhs_number}^^^NHS^NH"
        cases.append(
            (
                f"{person.family_name} registered again at {identity.trust} as {number}",
                _adt(demo, "R2", "A04", pid3, person, trust=identity.trust),
            )
        )
    if stay_at_home:
        person = stay_at_home[0]
        identity = by_person[person.key][0]
        used_numbers = {p.nhs_number for p in demo.persons if p.nhs_number}
        other = _nhs_number(random.Random(demo.seed + 2), NhsNumberStatus.VALID, used_numbers)
        pid3 = f"{identity.hospital_number}^^^{identity.trust}^MR~{other}^^^NHS^NH"
        cases.append(
            (
                f"second NHS number for {identity.hospital_number} at {identity.trust}",
                _adt(demo, "R3", "A08", pid3, person, trust=identity.trust),
            )
        )
    return cases


def write_adt(demo: DemoRegion, directory: Path) -> list[Path]:
    """Write :func:`adt_messages` as ``A04-<n>.hl7`` files, replacing earlier ones."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.hl7"):
        old.unlink()
    paths = []
    for n, message in enumerate(adt_messages(demo), start=1):
        path = directory / f"A04-{n:05d}.hl7"
        path.write_bytes(message)
        paths.append(path)
    return paths


# -- loading ---------------------------------------------------------------------------------


@dataclass
class LoadSummary:
    """What :func:`load` stored: counts by outcome, and a line per refused object."""

    studies: int = 0
    instances: int = 0
    by_status: Counter[StoreStatus] = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)


def load(
    demo: DemoRegion, ingest: IngestService, *, workers: int = 4, progress: bool = True
) -> LoadSummary:
    """Store every demo object through the ingest service, as its site's modality sent it.

    The origin is an import (in-process, the rules of C-STORE) naming the modality AE,
    trust and site, so that each study shows where it was captured.
    """
    summary = LoadSummary(studies=len(demo.studies))

    def objects() -> Iterator[tuple[bytes, Origin]]:
        for s in demo.studies:
            origin = Origin(
                Protocol.IMPORT, ae_title=s.ae_title, trust=s.identity.trust, site=s.site.code
            )
            for ds in datasets(s):
                yield part10(ds), origin

    def store(item: tuple[bytes, Origin]) -> StoreOutcome:
        return ingest.store_part10(item[0], origin=item[1])

    disable = None if progress else True  # None: a bar only on a terminal
    with tqdm(total=demo.instance_count, unit="instance", desc="demo-data", disable=disable) as bar:
        for _, outcome in run_bounded(store, objects(), workers=workers):
            summary.instances += 1
            summary.by_status[outcome.status] += 1
            if not outcome.status.ok:
                summary.problems.append(
                    f"{outcome.status.value}: {outcome.sop_instance_uid}: {outcome.message}"
                )
            bar.update()
    return summary


def _index_has_studies(settings: Settings) -> bool:
    engine = make_engine(settings.effective_database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(study_table.c.id).limit(1)).first() is not None
    finally:
        engine.dispose()


def apply_adt(demo: DemoRegion, archive: Archive) -> dict[str, int]:
    """Apply the region's ADT messages through the HL7 endpoint; count the ACK codes."""
    from netpacs.adapters.hl7.server import Hl7Endpoint
    from netpacs.services.adt import AdtService

    endpoint = Hl7Endpoint(AdtService(archive.write_engine, archive.region))
    counts: dict[str, int] = {}
    adt_log = logging.getLogger("netpacs.services.adt")
    level = adt_log.level
    adt_log.setLevel(max(level, logging.WARNING))  # one line per message is for the feed
    try:
        for message in adt_messages(demo) + [m for _, m in reconciliation_cases(demo)]:
            ack = endpoint(message).decode("utf-8", "replace")
            msa = next((seg for seg in ack.split("\r") if seg.startswith("MSA")), "MSA|??")
            code = msa.split("|")[1] if "|" in msa else "??"
            counts[code] = counts.get(code, 0) + 1
    finally:
        adt_log.setLevel(level)
    return counts


_FINDINGS = {
    "CT": "No acute intracranial, thoracic or abdominal abnormality on this study.",
    "MR": "Normal signal throughout. No mass, collection or abnormal enhancement.",
    "CR": "Lungs clear. Heart size normal. No bony injury.",
    "DX": "No fracture or dislocation. Soft tissues unremarkable.",
    "US": "Liver, gallbladder, kidneys and spleen of normal appearance.",
    "MG": "Scattered fibroglandular tissue. No suspicious mass or calcification.",
}


def queue_worklist(
    demo: DemoRegion, archive: Archive, *, seed: int, queued: int = 40, reported: int = 16
) -> tuple[int, int]:
    """Put the newest studies on the reporting worklist as if they arrived over the last
    three days, and have the demo radiologists report the oldest of them, so that the
    worklist, the reporting page and the turnaround dashboard have something to show.

    Loading history (an import) queues nothing: this stands in for the modalities that
    would have sent these studies. Reports go through the reporting service like any
    other (their SR is stored; their ORU waits in the outbox for the trust's listener).
    """
    from netpacs.services.access import SYSTEM, Principal, Role
    from netpacs.services.reporting import (
        Priority,
        ReportingError,
        ReportingScope,
        ReportsService,
        WorklistService,
    )

    rng = random.Random(seed * 7919 + 6)
    scope = ReportingScope(
        archive.read_engine, archive.write_engine, archive.region, archive.audit, principal=SYSTEM
    )
    worklist = WorklistService(scope)
    reports = ReportsService(scope, outputs=archive.report_outputs)
    newest = sorted(demo.studies, key=lambda s: (s.study_date, s.study_time), reverse=True)
    now = dt.datetime.now(dt.UTC)
    weights = {
        Priority.EMERGENCY: 2,
        Priority.INPATIENT: 5,
        Priority.CANCER_2WW: 2,
        Priority.OUTPATIENT: 6,
        Priority.GP: 3,
    }
    chosen = [s for s in newest if s.modality.value in _FINDINGS][:queued]
    # Oldest arrivals first, so that those reported are the ones that waited longest.
    arrivals = sorted(now - dt.timedelta(minutes=rng.randrange(20, 72 * 60)) for _ in chosen)
    done = 0
    for n, (study, arrived) in enumerate(zip(chosen, arrivals, strict=True)):
        priority = rng.choices(list(weights), weights=list(weights.values()))[0]
        try:
            worklist.queue(study.study_instance_uid, priority=priority.value, arrived_at=arrived)
        except ReportingError:
            continue
        if n >= reported:
            continue
        trust = rng.choice(archive.region.trusts).ods_code
        reporter = reports.for_principal(
            worklist.with_agreements(
                Principal(
                    f"{trust.lower()}.radiologist",
                    Role.RADIOLOGIST,
                    trust,
                    name=f"Demo radiologist ({trust})",
                )
            )
        )
        modality = study.modality.value
        text = reports.templates().get(modality, "FINDINGS:\n\n\nCONCLUSION:\n")
        text = text.replace("FINDINGS:\n", f"FINDINGS:\n{_FINDINGS[modality]}\n", 1)
        text = text.replace("CONCLUSION:\n", "CONCLUSION:\nNo acute abnormality.\n", 1)
        try:
            reporter.save(study.study_instance_uid, text, "final")
            done += 1
        except ReportingError as exc:
            log.warning("demo report of %s: %s", study.study_instance_uid, exc.message)
    return len(chosen), done


def main(settings: Settings, *, patients: int, seed: int, if_empty: bool) -> int:
    """``netpacs demo-data``: make the region, load it, write its ADT messages; exit code."""
    if if_empty and _index_has_studies(settings):
        print("demo-data: the archive already holds studies; nothing loaded")
        return 0
    started = time.monotonic()
    region = load_region(settings.effective_region_file)
    demo = build_region(patients, seed, region=region)
    adt_dir = settings.data_dir / "demo" / "adt"
    adt_paths = write_adt(demo, adt_dir)
    print(
        f"demo-data: loading {len(demo.studies)} studies ({demo.instance_count} instances) "
        f"of {len(demo.persons)} synthetic patients (seed {seed})",
        flush=True,
    )
    archive = build_archive(settings)
    try:
        summary = load(demo, archive.ingest)
        acks = apply_adt(demo, archive)
        queued, reported = queue_worklist(demo, archive, seed=seed)
    finally:
        archive.close()
    elapsed = time.monotonic() - started
    s = summary.by_status
    trusts = len({i.trust for i in demo.identities})
    print(
        f"demo-data: {len(demo.persons)} patients ({len(demo.identities)} hospital numbers "
        f"at {trusts} trusts), {summary.studies} studies, {summary.instances} instances "
        f"in {elapsed:.1f} s (seed {seed})"
    )
    print(
        f"  stored {s[StoreStatus.STORED]}, already stored {s[StoreStatus.ALREADY_STORED]}, "
        f"refused or failed {len(summary.problems)}"
    )
    cases = reconciliation_cases(demo)
    print(
        f"  {len(adt_paths)} ADT^A04 messages in {adt_dir} and {len(cases)} planted "
        "reconciliation cases, applied as the ADT feed would: "
        + ", ".join(f"{code} {n}" for code, n in sorted(acks.items()))
    )
    for what, _ in cases:
        print(f"  for /reconciliation: {what}")
    print(
        f"  reporting worklist: the newest {queued} studies queued, {reported} of them "
        "reported by the demo radiologists (see /worklist and /turnaround)"
    )
    for line in summary.problems[:20]:
        print(f"  {line}")
    return 0 if not summary.problems else 1
