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

from netpacs.demo.adt import adt_messages, reconciliation_cases, write_adt
from netpacs.demo.images import datasets, part10
from netpacs.demo.model import (
    FIRST_STUDY_DAY,
    HOSPITAL_NUMBER_FORMATS,
    LAST_STUDY_DAY,
    DemoRegion,
    DemoSeries,
    DemoStudy,
    Identity,
    Modality,
    NhsNumberStatus,
    Person,
    build_region,
)

__all__ = [
    "FIRST_STUDY_DAY",
    "HOSPITAL_NUMBER_FORMATS",
    "LAST_STUDY_DAY",
    "DemoRegion",
    "DemoSeries",
    "DemoStudy",
    "Identity",
    "Modality",
    "NhsNumberStatus",
    "Person",
    "adt_messages",
    "build_region",
    "datasets",
    "part10",
    "reconciliation_cases",
    "write_adt",
]
