"""A DIMSE network's study in the federation cache, answered as DICOMweb (issue 14).

A study retrieved from a DIMSE network (C-GET, or C-MOVE to our AE) is a folder of
Part 10 files (services.federation.cache), not rows of our index: its QIDO-RS answers
(the study, its series and instances), WADO-RS metadata, instances, frames and rendered
images are read from those files, so that the viewer opens it under the network's
path ``/dicomweb/networks/<name>/studies/<uid>/...`` as it opens a DICOMweb network's
study. Headers are read once per folder (without pixel data); frames read the one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from netpacs.domain.outcomes import Problem
from netpacs.services.frames import EXPLICIT_VR_LE, FRAME_MEDIA_TYPES, NATIVE_SYNTAXES, FrameError
from netpacs.services.render import RenderOptions, number_of_frames, render

_STUDY_TAGS = (
    "00080005", "00080020", "00080030", "00080050", "00080090", "00081030",
    "00100010", "00100020", "00100021", "00100030", "00100040", "0020000D", "00200010",
)  # fmt: skip
_SERIES_TAGS = ("00080005", "00080060", "0008103E", "0020000D", "0020000E", "00200011")
_INSTANCE_TAGS = ("00080016", "00080018", "0020000D", "0020000E", "00200013", "00280008")
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True, slots=True)
class CachedInstance:
    path: Path
    series_uid: str
    sop_uid: str
    transfer_syntax_uid: str
    header: dict[str, Any]  # DICOM JSON without pixel data


def _json(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 20)
    return out


def read_instances(files: list[Path]) -> list[CachedInstance]:
    """The headers of a cached study's files (unreadable files are left out)."""
    out = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            header = _json(ds)
        except Exception:  # a file the network sent that pydicom cannot read: not shown
            continue
        out.append(
            CachedInstance(
                path,
                str(ds.get("SeriesInstanceUID", "")),
                str(ds.get("SOPInstanceUID", "")),
                str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LE)),
                header,
            )
        )
    return sorted(out, key=lambda i: (i.series_uid, _number(i.header), i.sop_uid))


def _number(header: dict[str, Any]) -> int:
    values = (header.get("00200013") or {}).get("Value") or [0]
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return 0


def _values(header: dict[str, Any], tag: str) -> list[Any]:
    return list((header.get(tag) or {}).get("Value") or [])


def _pick(header: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    return {t: header[t] for t in tags if t in header}


class CachedStudy:
    """One cached study's instances, as QIDO-RS and WADO-RS answers (module doc)."""

    def __init__(self, instances: list[CachedInstance]) -> None:
        self.instances = instances

    def select(self, series: str | None = None, sop: str | None = None) -> list[CachedInstance]:
        return [
            i
            for i in self.instances
            if (series is None or i.series_uid == series) and (sop is None or i.sop_uid == sop)
        ]

    def study_match(self, retrieve_url: str) -> dict[str, Any]:
        """The study's QIDO-RS match (PS3.18 10.6.3.3.1)."""
        match = _pick(self.instances[0].header, _STUDY_TAGS)
        series = {i.series_uid for i in self.instances}
        modalities = sorted(
            {
                str(m)
                for i in self.instances
                for m in (i.header.get("00080060") or {}).get("Value", [])
            }
        )
        match["00080061"] = {"vr": "CS", "Value": modalities}
        match["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
        match["00201206"] = {"vr": "IS", "Value": [len(series)]}
        match["00201208"] = {"vr": "IS", "Value": [len(self.instances)]}
        return match

    def series_matches(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in self.instances:
            match = out.setdefault(i.series_uid, _pick(i.header, _SERIES_TAGS))
            count = match.setdefault("00201209", {"vr": "IS", "Value": [0]})
            count["Value"][0] += 1
        return list(out.values())

    def instance_matches(self, series: str) -> list[dict[str, Any]]:
        return [_pick(i.header, _INSTANCE_TAGS) for i in self.select(series)]

    @staticmethod
    def frames(
        inst: CachedInstance, numbers: list[int], *, stored: bool
    ) -> tuple[str, list[bytes]]:
        """The part media type and frames ``numbers`` (1-based) of an instance: native
        frames as Explicit VR Little Endian, compressed ones as stored (``stored``: the
        client takes them so, as OHIF does); :class:`FrameError` otherwise."""
        ds = dcmread(inst.path)
        count = number_of_frames(ds)
        if "PixelData" not in ds:
            raise FrameError(Problem.NOT_FOUND, f"instance {inst.sop_uid} has no Pixel Data")
        bad = [n for n in numbers if not 1 <= n <= count]
        if bad:
            raise FrameError(
                Problem.NOT_FOUND, f"instance {inst.sop_uid} has {count} frames, not {bad[0]}"
            )
        syntax = inst.transfer_syntax_uid
        data: bytes = ds.PixelData
        if syntax in NATIVE_SYNTAXES and syntax != _BIG_ENDIAN:
            size = len(data) // count
            parts = [data[(n - 1) * size : n * size] for n in numbers]
            return f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}", parts
        if syntax in NATIVE_SYNTAXES or not stored:
            raise FrameError(
                Problem.NOT_ACCEPTABLE,
                f"frames of this instance are given as stored ({syntax}): "
                'ask multipart/related; type="application/octet-stream"; transfer-syntax=*',
            )
        every = list(generate_frames(data, number_of_frames=count))
        media = FRAME_MEDIA_TYPES.get(syntax, "application/octet-stream")
        return f"{media}; transfer-syntax={syntax}", [every[n - 1] for n in numbers]

    @staticmethod
    def rendered(inst: CachedInstance, options: RenderOptions | None = None) -> bytes:
        return render(dcmread(inst.path), frame=1, options=options)
