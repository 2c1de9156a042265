"""The demo region's HL7 v2 orders: scheduled work on today's worklist of every site's
CT, MR, CR and US modality (``findscu -W`` against ``make run`` answers)."""

from __future__ import annotations

import datetime as dt

from netpacs.demo.model import DemoRegion, NhsNumberStatus
from netpacs.domain.region import AEKind, Region

#: Modality -> requested procedure (local code, text) on the demo worklists.
PROCEDURES = {
    "CT": ("CCHAP", "CT chest abdomen pelvis with contrast"),
    "MR": ("MBRAI", "MRI head"),
    "CR": ("XCHES", "XR chest"),
    "US": ("UABDO", "US abdomen"),
}
#: (hour, HL7 priority, PV1-2 patient class, PV1-3 point of care) of each site's orders.
_SLOTS = (
    ("0900", "R", "O", "OPD"),
    ("1100", "A", "I", "WARD 5"),
    ("1400", "S", "E", "ED"),
)


def order_messages(demo: DemoRegion, region: Region, day: dt.date) -> list[bytes]:
    """One ORM^O01 (NW) per slot for every modality AE of :data:`PROCEDURES`, scheduled
    on ``day`` at the AE's site for one of its trust's demo patients. MSH-4 is the site
    (its RIS), the accession number ``<SITE><MODALITY><n>`` and MSH-10 unique per day."""
    messages: list[bytes] = []
    by_trust = {
        t.ods_code: [i for i in demo.identities if i.trust == t.ods_code] for t in region.trusts
    }
    stamp = day.strftime("%Y%m%d")
    n = 0
    for ae in region.aes:
        if ae.kind is not AEKind.MODALITY or ae.modality not in PROCEDURES or not ae.site:
            continue
        patients = by_trust.get(ae.trust) or []
        code, text = PROCEDURES[ae.modality]
        for slot, (hour, priority, patient_class, ward) in enumerate(_SLOTS, start=1):
            if not patients:
                break
            identity = patients[(n * 7 + slot) % len(patients)]
            person = identity.person
            n += 1
            accession = f"{ae.site}{ae.modality}{slot}"[:16]
            pid3 = f"{identity.hospital_number}^^^{identity.trust}^MR"
            if person.nhs_number and person.nhs_number_status is NhsNumberStatus.VALID:
                pid3 += f"~{person.nhs_number}^^^NHS^NH"
            control_id = f"DEMO-ORD-{stamp}-{n:04d}"
            segments = [
                f"MSH|^~\\&|RIS|{ae.site}|NETPACS|REGION|{stamp}0700||ORM^O01|{control_id}|P|2.4",
                f"PID|1||{pid3}||{person.family_name}^{person.given_name}||"
                f"{person.birth_date:%Y%m%d}|{person.sex}",
                f"PV1|1|{patient_class}|{ward}^^^{ae.site}",
                f"ORC|NW|P{accession}|F{accession}||SC|||||||D123456^WHO^ANNA^^^DR",
                f"OBR|1|P{accession}|F{accession}|{code}^{text}^LOCAL|{priority}|||||||||||"
                f"D123456^WHO^ANNA^^^DR||{accession}|||{ae.ae_title}|||{ae.modality}|||"
                f"^^^{stamp}{hour}^^{priority}||||^Demo request {slot}",
            ]
            messages.append(("\r".join(segments) + "\r").encode("ascii"))
    return messages
