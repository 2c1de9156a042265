"""The demo region's HL7 v2 ADT messages, and the cases planted for reconciliation."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from netpacs.demo.model import (
    FIRST_STUDY_DAY,
    LAST_STUDY_DAY,
    DemoRegion,
    Identity,
    NhsNumberStatus,
    Person,
    hospital_number,
    nhs_number_for,
)


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
        number = hospital_number(random.Random(demo.seed + 1), identity.trust, used)
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
        other = nhs_number_for(random.Random(demo.seed + 2), NhsNumberStatus.VALID, used_numbers)
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
