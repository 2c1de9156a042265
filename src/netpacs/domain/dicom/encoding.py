"""Reading and writing a bare data set (no file meta) in an uncompressed transfer syntax."""

from __future__ import annotations

import io
import zlib

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from netpacs.domain.dicom.header import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE


def _encoding(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax's data set encoding."""
    return transfer_syntax_uid == IMPLICIT_VR_LE, transfer_syntax_uid != EXPLICIT_VR_BE


def read_encoded(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """The data set encoded in ``data`` (inflated first for Deflated Explicit VR LE).
    Encapsulated pixel data stays as it is: the data set is read, never decoded."""
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(data), *_encoding(transfer_syntax_uid))


def write_encoded(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """``ds`` encoded as ``transfer_syntax_uid`` says (deflated and padded to even length
    for Deflated Explicit VR Little Endian, PS3.5 A.5)."""
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = _encoding(transfer_syntax_uid)
    write_dataset(out, ds)
    encoded = out.getvalue()
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        encoded = packer.compress(encoded) + packer.flush()
        if len(encoded) % 2:
            encoded += b"\0"
    return encoded
