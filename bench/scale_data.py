"""Synthetic index rows at the region's scale, for bench/scale.py.

People and their local identities come from the demo generator (netpacs.demo.model:
hospital numbers in each trust's format, NHS numbers of the 999 test range, a few
invalid or missing, some people at two or three trusts, planted hospital-number
collisions between trusts). Studies reuse its procedures, sites, modality AEs and
accession numbers, with about ten studies per person and about ten instances per
study, as the issue's shape (100,000 patients, 1 million studies, 10 million
instances). Each instance's header is a real demo object's header (parsed by the
ingest's own parser, bulk data as references) with the patient, study, series and
instance attributes replaced, so ``metadata_json`` has a realistic size. No blob is
written: metadata queries never read one (ARCHITECTURE.md invariant 7).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.demo import images
from netpacs.demo.model import (  # the demo's private parts too: a bench may reuse them
    _PROCEDURES,
    FIRST_STUDY_DAY,
    LAST_STUDY_DAY,
    Identity,
    Modality,
    NhsNumberStatus,
    Person,
    _Dealer,
    _modality_ae,
    _persons,
    _plant_collisions,
    build_region,
    demo_uid,
    hospital_number,
)
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import Region
from netpacs.index.records import InstanceRecord, InstanceRow, PatientRow, SeriesRow, StudyRow
from netpacs.services.ingest_record import parse_header

JsonDataset = dict[str, Any]
#: Instances per series by modality (CT scaled up from the demo's 10-20 so that the
#: average study has about ten instances, as in the issue's shape).
_COUNTS = {
    Modality.CT: (20, 40),
    Modality.MR: (6, 10),
    Modality.US: (1, 3),
}
_BLOB_SIZE = {"CT": 526_000, "MR": 33_000, "US": 17_000, "CR": 132_000, "DX": 132_000}
_BLOB_SIZE["MG"] = 132_000
BIG_SERIES = 600  # the series whose /metadata is measured
BIG_SERIES_DESCRIPTION = "AXIAL 0.625 ARTERIAL"


def _split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) of a Part 10 file written by pydicom."""
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    start = 144 + group_length
    return data[:start], data[start:]


def header_templates(region: Region) -> dict[Modality, JsonDataset]:
    """One demo object's parsed header per modality (pixels rendered once each)."""
    demo = build_region(80, 7, region=region)
    out: dict[Modality, JsonDataset] = {}
    for study in demo.studies:
        if study.modality in out:
            continue
        ds = next(images.datasets(study))
        head, dataset = _split_part10(images.part10(ds))
        out[study.modality] = parse_header(dataset, str(ds.file_meta.TransferSyntaxUID), head)
    missing = set(Modality) - set(out)
    if missing:
        raise RuntimeError(f"the demo sample has no study of {sorted(m.value for m in missing)}")
    return out


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    uid: str
    number: int
    description: str
    count: int


@dataclass(frozen=True, slots=True)
class StudyPlan:
    identity: Identity
    origin: Origin
    modality: Modality
    uid: str
    accession: str
    day: dt.date
    time: str
    description: str
    body_part: str
    referrer: str
    institution: str
    station: str
    series: tuple[SeriesPlan, ...]

    @property
    def instances(self) -> int:
        return sum(s.count for s in self.series)


class Population:
    """The people of the bench (made once for the largest size) and their studies,
    dealt person by person, so that each fill stage adds whole patient histories."""

    def __init__(self, persons: int, seed: int, *, part: int = 0, parts: int = 1) -> None:
        """``part`` of ``parts``: the processes filling one index together number their
        accession numbers apart."""
        self._part, self._parts = part, parts
        self.region = load_region(BUNDLED_DEMO_REGION)
        rng = random.Random(f"netpacs scale {seed}")
        people = _persons(persons, rng)
        self._seed = seed
        by_person: dict[int, list[Identity]] = {}
        for identity in _identities(people, self.region, rng):
            by_person.setdefault(identity.person.key, []).append(identity)
        self.identities_of = by_person
        self.templates = header_templates(self.region)
        self.studies_made = 0  # numbers the accession numbers (kept across runs)
        self._next_site: Counter[str] = Counter()

    def studies(self, first_person: int, last_person: int) -> Iterator[StudyPlan]:
        """The studies of persons ``first_person`` .. ``last_person - 1``."""
        for key in range(first_person, last_person):
            rng = random.Random(f"netpacs scale {self._seed} {key}")
            dealer = _Dealer(rng)
            identities = self.identities_of.get(key, [])
            for identity in identities:
                n = rng.randint(5, 11) if len(identities) == 1 else rng.randint(3, 8)
                for index in range(n):
                    plan = self._study(identity, key, index, rng, dealer)
                    if plan is not None:
                        yield plan

    def big_study(self) -> StudyPlan:
        """One CT study with a series of BIG_SERIES instances (person 0's first identity)."""
        identity = self.identities_of[0][0]
        rng = random.Random("netpacs scale big")
        plan = self._study(identity, 0, 999, rng, _Dealer(rng), modality=Modality.CT)
        assert plan is not None
        big = SeriesPlan(f"{plan.uid}.1", 1, BIG_SERIES_DESCRIPTION, BIG_SERIES)
        return dataclasses.replace(plan, series=(big,))

    def _study(
        self,
        identity: Identity,
        key: int,
        index: int,
        rng: random.Random,
        dealer: _Dealer,
        *,
        modality: Modality | None = None,
    ) -> StudyPlan | None:
        trust = self.region.trust(identity.trust)
        if trust is None or not trust.sites:
            return None
        person = identity.person
        first = max(FIRST_STUDY_DAY, person.birth_date + dt.timedelta(days=1))
        day = first + dt.timedelta(days=rng.randrange((LAST_STUDY_DAY - first).days + 1))
        site = trust.sites[self._next_site[trust.ods_code] % len(trust.sites)]
        self._next_site[trust.ods_code] += 1
        modality = modality or dealer.deal(person, day)
        ae_title = _modality_ae(self.region, site, modality)
        if ae_title is None:
            return None
        self.studies_made += 1
        number = self.studies_made * self._parts + self._part
        accession = f"{site.code}{day.year % 100:02d}{number:08d}"
        description, body_part, names = rng.choice(_PROCEDURES[modality])
        uid = demo_uid("scale", self._seed, key, identity.trust, index)
        low, high = _COUNTS.get(modality, (1, 1))
        series = tuple(
            SeriesPlan(f"{uid}.{n}", n, name, rng.randint(low, high))
            for n, name in enumerate(names, start=1)
        )
        referrer = rng.choice(("Patel", "Smith", "Khan", "Jones", "Evans", "Clarke")) + "^A^^Dr"
        return StudyPlan(
            identity=identity,
            origin=Origin(Protocol.DIMSE, ae_title=ae_title, trust=trust.ods_code, site=site.code),
            modality=modality,
            uid=uid,
            accession=accession,
            day=day,
            time=f"{rng.randint(8, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            description=description,
            body_part=body_part,
            referrer=referrer,
            institution=site.name.split(" (", 1)[0],
            station=ae_title,
            series=series,
        )

    def records(self, plan: StudyPlan, blob_counter: Iterator[int]) -> Iterator[InstanceRecord]:
        """The index records of every instance of a study, as ingest would build them."""
        template = self.templates[plan.modality]
        person = plan.identity.person
        day = plan.day.strftime("%Y%m%d")
        patient_row = PatientRow(
            patient_id=plan.identity.hospital_number,
            issuer=plan.identity.trust,
            patient_name=person.patient_name,
            patient_birth_date=person.birth_date.strftime("%Y%m%d"),
            patient_sex=person.sex,
        )
        study_row = StudyRow(
            study_instance_uid=plan.uid,
            study_date=day,
            study_time=plan.time,
            accession_number=plan.accession,
            study_id=plan.accession[-6:].lstrip("0") or "1",
            study_description=plan.description,
            referring_physician_name=plan.referrer,
            origin_trust=plan.origin.trust,
            origin_site=plan.origin.site,
        )
        base = copy.deepcopy(template)
        _put(base, "00100010", "PN", [{"Alphabetic": person.patient_name}])
        _put(base, "00100020", "LO", [patient_row.patient_id])
        _put(base, "00100021", "LO", [patient_row.issuer])
        _put(base, "00100030", "DA", [patient_row.patient_birth_date])
        _put(base, "00100040", "CS", [person.sex])
        age = (plan.day - person.birth_date).days // 365
        _put(base, "00101010", "AS", [f"{age:03d}Y"])
        if person.nhs_number is not None:
            item = {
                "00100020": {"vr": "LO", "Value": [person.nhs_number]},
                "00100021": {"vr": "LO", "Value": ["NHS"]},
                "00100022": {"vr": "CS", "Value": ["TEXT"]},
            }
            base["00101002"] = {"vr": "SQ", "Value": [item]}
        else:
            base.pop("00101002", None)
        _put(base, "0020000D", "UI", [plan.uid])
        for tag in ("00080020", "00080021", "00080022", "00080023"):
            _put(base, tag, "DA", [day])
        for tag in ("00080030", "00080031", "00080032", "00080033"):
            _put(base, tag, "TM", [plan.time])
        _put(base, "00080050", "SH", [plan.accession])
        _put(base, "00200010", "SH", [study_row.study_id])
        _put(base, "00081030", "LO", [plan.description])
        _put(base, "00080090", "PN", [{"Alphabetic": plan.referrer}])
        _put(base, "00180015", "CS", [plan.body_part])
        _put(base, "00080080", "LO", [plan.institution])
        _put(base, "00081010", "SH", [plan.station])
        sop_class = base["00080016"]["Value"][0]
        size = _BLOB_SIZE[plan.modality.value]
        for s in plan.series:
            series_row = SeriesRow(
                series_instance_uid=s.uid,
                modality=plan.modality.value,
                series_number=s.number,
                series_description=s.description,
                body_part_examined=plan.body_part,
                series_date=day,
                series_time=plan.time,
                institution_name=plan.institution,
                station_name=plan.station,
            )
            per_series = dict(base)
            _put(per_series, "0020000E", "UI", [s.uid])
            _put(per_series, "00200011", "IS", [s.number])
            _put(per_series, "0008103E", "LO", [s.description])
            for i in range(s.count):
                sop_uid = f"{s.uid}.{i + 1}"
                header = dict(per_series)
                _put(header, "00080018", "UI", [sop_uid])
                _put(header, "00200013", "IS", [i + 1])
                if "00200032" in header:
                    z = round((i - s.count / 2) * 1.25, 2)
                    _put(header, "00200032", "DS", [-120.0, -120.0, z])
                    _put(header, "00201041", "DS", [z])
                yield InstanceRecord(
                    patient=patient_row,
                    study=study_row,
                    series=series_row,
                    instance=InstanceRow(
                        sop_instance_uid=sop_uid,
                        sop_class_uid=sop_class,
                        instance_number=i + 1,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        content_date=day,
                        content_time=plan.time,
                        image_rows=_first(header, "00280010"),
                        image_columns=_first(header, "00280011"),
                        number_of_frames=None,
                        blob_key=f"scale-{self._part}-{next(blob_counter):012d}",
                        blob_size=size,
                        blob_crc32=0,
                        dataset_offset=330,
                        metadata_json=orjson.dumps(header).decode(),
                        origin_protocol=plan.origin.protocol.value,
                        origin_ae=plan.origin.ae_title,
                        origin_trust=plan.origin.trust,
                        origin_user=None,
                    ),
                    origin=plan.origin,
                    header=header,
                )


def _identities(persons: list[Person], region: Region, rng: random.Random) -> list[Identity]:
    """Each person's identities as the demo makes them (a fifth at two or three trusts,
    the bigger trusts seeing more); hospital-number collisions between trusts planted
    by the demo's own rule among the first 5,000 (it compares every pair)."""
    trusts = [t.ods_code for t in region.trusts]
    weights = [len(t.sites) for t in region.trusts]
    valid = [p.key for p in persons if p.nhs_number_status is NhsNumberStatus.VALID]
    multi = rng.sample(valid, min(len(valid), max(1, len(persons) // 5)))
    n_three = max(1, len(persons) // 20)
    attends = {key: 3 if i < n_three else 2 for i, key in enumerate(multi)}
    used: set[str] = set()
    out = []
    for p in persons:
        home = rng.choices(trusts, weights)[0]
        others = [t for t in trusts if t != home]
        chosen = [home, *rng.sample(others, attends.get(p.key, 1) - 1)]
        out += [Identity(p, t, hospital_number(rng, t, used)) for t in chosen]
    return _plant_collisions(out[:5000], rng) + out[5000:]


def _put(ds: JsonDataset, tag: str, vr: str, value: list[Any]) -> None:
    ds[tag] = {"vr": vr, "Value": value}


def _first(ds: JsonDataset, tag: str) -> int | None:
    value = (ds.get(tag) or {}).get("Value") or [None]
    return int(value[0]) if value[0] is not None else None
