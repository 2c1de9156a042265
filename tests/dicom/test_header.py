"""The header parser gives every data set values of its own."""

from __future__ import annotations

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from netpacs.domain.dicom.header import EXPLICIT_VR_LE, walk_dataset
from netpacs.synthetic import make_ct_series

PATIENT_NAME = "00100010"
IMAGE_TYPE = "00080008"
PIXEL_SPACING = "00280030"


def encoded_slices(n: int) -> list[bytes]:
    """The data sets (without file meta) of ``n`` slices of one synthetic CT series."""
    out = []
    for ds in make_ct_series(n, rows=8, columns=8):
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, ds)
        out.append(buf.getvalue())
    return out


def test_two_parsed_headers_do_not_share_elements_a_caller_may_change() -> None:
    first, second = (walk_dataset(data, EXPLICIT_VR_LE)[0] for data in encoded_slices(2))
    assert first[PATIENT_NAME] == second[PATIENT_NAME]  # the same values, repeated

    first[PATIENT_NAME]["Value"][0]["Alphabetic"] = "CHANGED^ONE"
    first[IMAGE_TYPE]["Value"].append("EXTRA")
    first[PIXEL_SPACING]["vr"] = "UN"
    again = walk_dataset(encoded_slices(1)[0], EXPLICIT_VR_LE)[0]

    for untouched in (second, again):
        assert untouched[PATIENT_NAME]["Value"][0]["Alphabetic"] != "CHANGED^ONE"
        assert untouched[IMAGE_TYPE]["Value"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert untouched[PIXEL_SPACING]["vr"] == "DS"
