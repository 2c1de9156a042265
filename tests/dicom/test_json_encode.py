"""C-FIND identifiers written straight from DICOM JSON are the bytes pydicom writes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom.dsutils import encode

from netpacs.domain.dicom.json_encode import encode_json_dataset

STUDY_MATCH: dict[str, Any] = {
    "00080020": {"vr": "DA", "Value": ["20240131"]},
    "00080030": {"vr": "TM", "Value": ["101502.123"]},
    "00080050": {"vr": "SH", "Value": ["ACC12345"]},
    "00080052": {"vr": "CS", "Value": ["STUDY"]},
    "00080054": {"vr": "AE", "Value": ["NETPACS"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Who^Doctor"}]},
    "00081030": {"vr": "LO", "Value": ["CT HEAD"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Smith^Jo"}]},
    "00100020": {"vr": "LO", "Value": ["EDGH42"]},
    "00100021": {"vr": "LO", "Value": ["RXC"]},
    "00100030": {"vr": "DA"},
    "00100040": {"vr": "CS", "Value": ["F"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]},
    "00200010": {"vr": "SH", "Value": ["1"]},
    "00201206": {"vr": "IS", "Value": [2]},
    "00201208": {"vr": "IS", "Value": [301]},
}


def pydicom_bytes(result: dict[str, Any], implicit: bool) -> bytes:
    encoded = encode(Dataset.from_json(result), implicit, True, False)
    assert encoded is not None
    return encoded


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_a_study_match_is_written_directly_as_pydicom_writes_it(implicit: bool) -> None:
    direct = encode_json_dataset(STUDY_MATCH, implicit=implicit)
    assert direct is not None  # the common case does not fall back
    assert direct == pydicom_bytes(STUDY_MATCH, implicit)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_utf8_names_and_image_level_numbers_are_written_as_pydicom_writes_them(
    implicit: bool,
) -> None:
    match = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.44"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
        "00081030": {"vr": "LO", "Value": ["Thorax \u2013 Abdomen"]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00280010": {"vr": "US", "Value": [512]},
        "00280011": {"vr": "US", "Value": [512]},
        "00280008": {"vr": "IS", "Value": [1]},
        "00081190": {"vr": "UR", "Value": ["http://localhost/dicomweb/studies/1"]},
        "00204000": {"vr": "LT", "Value": ["a comment\\with a backslash"]},
    }
    direct = encode_json_dataset(match, implicit=implicit)
    assert direct is not None
    assert direct == pydicom_bytes(match, implicit)


@pytest.mark.parametrize(
    "element",
    [
        {"vr": "SQ", "Value": [{}]},
        {"vr": "DS", "Value": [1.5]},
        {"vr": "OB", "InlineBinary": "AAAA"},
        {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]},
        {"vr": "LO", "Value": [None]},
        {"vr": "IS", "Value": ["12"]},
        {"vr": "CS", "Value": ["Ä"]},  # not a character a code string may hold
        {"vr": "LT", "Value": ["x" * 70000]},  # past a 16-bit length
    ],
    ids=["sequence", "DS", "binary", "ideographic", "null", "IS-as-text", "CS-latin", "long"],
)
def test_what_the_direct_writer_does_not_know_is_left_to_pydicom(element: dict[str, Any]) -> None:
    match = {**STUDY_MATCH, "00181000": element}
    if element["vr"] == "CS":
        match["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert encode_json_dataset(match, implicit=False) is None


def test_another_character_set_is_left_to_pydicom() -> None:
    match = {**STUDY_MATCH, "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}
    assert encode_json_dataset(match, implicit=True) is None


def test_random_text_matches_are_written_as_pydicom_writes_them() -> None:
    rnd = random.Random(16)
    alphabet = "ABCxyz019 ^.-_é漢"
    vrs = {
        "00080050": "SH", "00080061": "CS", "00080090": "PN", "00081030": "LO",
        "00100010": "PN", "00100020": "LO", "00104000": "LT", "0020000D": "UI",
        "00200013": "IS", "00280010": "US", "00321060": "LO", "00400007": "LO",
    }  # fmt: skip
    checked = 0
    for _ in range(400):
        match: dict[str, Any] = {}
        for key, vr in vrs.items():
            if rnd.random() < 0.3:
                continue
            n = rnd.choice([0, 1, 1, 1, 2])
            if vr == "UI":
                values: list[Any] = [f"1.2.{rnd.randrange(10 ** rnd.randrange(1, 9))}"] * min(n, 1)
            elif vr in ("IS", "US"):
                values = [rnd.randrange(0, 65535) for _ in range(n)]
            else:
                text = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 12)))]
                values = [t.replace("^", "") if vr != "PN" else t for t in text * n]
                if vr == "CS":  # a code string holds capitals, digits, space and underscore
                    values = ["".join(c for c in v.upper() if c in "ABCXYZ019 _") for v in values]
                if vr == "PN":
                    values = [{"Alphabetic": v} for v in values]
            match[key] = {"vr": vr, "Value": values} if n else {"vr": vr}
        if any(not str(e.get("Value", "")).isascii() for e in match.values()):
            match["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        for implicit in (True, False):
            direct = encode_json_dataset(match, implicit=implicit)
            if direct is not None:
                assert direct == pydicom_bytes(match, implicit), match
                checked += 1
    assert checked > 600  # nearly every match took the direct path
