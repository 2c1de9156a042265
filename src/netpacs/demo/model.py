"""The demo region's people, their hospital numbers at each trust, and their studies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass

from netpacs.domain import nhs_number
from netpacs.domain.region import AEKind, Region, Site

log = logging.getLogger(__name__)

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
MANUFACTURER = "netpacs synthetic"


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


def demo_uid(*parts: object) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a name-based UUID: the same seed, the same UIDs."""
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UUID_NAMESPACE, name).int}"


def nhs_number_for(rng: random.Random, status: NhsNumberStatus, used: set[str]) -> str | None:
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


def hospital_number(rng: random.Random, trust: str, used: set[str]) -> str:
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
                nhs_number=nhs_number_for(rng, statuses[key], used),
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
        identities += [Identity(p, t, hospital_number(rng, t, used)) for t in chosen]
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
    study_uid = demo_uid(namespace, "study", index)
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
        series_uid = demo_uid(namespace, "series", index, number)
        sops = tuple(demo_uid(namespace, "instance", index, number, i) for i in range(count))
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


def build_region(patients: int, seed: int, *, region: Region) -> DemoRegion:
    """The synthetic region of ``patients`` people; the same arguments, the same region.

    ``region``: the region file (the bundled demo region: REGION.md's six trusts).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    rng = random.Random(f"netpacs demo {seed}")
    persons = _persons(patients, rng)
    identities = _identities(persons, region, rng)
    # UIDs depend on everything that shapes the region, so that two different regions
    # never give one UID to two different objects.
    namespace = f"{seed}/{patients}/{','.join(t.ods_code for t in region.trusts)}"
    studies = _studies(namespace, identities, region, rng)
    return DemoRegion(seed, tuple(persons), tuple(identities), tuple(studies))
