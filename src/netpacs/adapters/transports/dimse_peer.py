"""Another network's DIMSE archive as the federation gateway reaches it (issue 14).

:class:`DimsePeer` sends a Study Root C-FIND at STUDY level (PS3.4 C.4.1, C.6.2) with
the NHS number as Patient ID (or in the Other Patient IDs Sequence with issuer NHS),
with pynetdicom as the association requestor. Every wait is bounded by the network's
timeout (association, DIMSE, network); at most ``max_studies`` pending responses are
taken, then the association is aborted. Any failure is one
:class:`~netpacs.domain.federation.PeerAnswerError`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from netpacs.adapters.dimse.requestor import associate
from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.federation import STUDY_ATTRIBUTES, PeerAnswerError
from netpacs.domain.networks import Network, NhsNumberIn

_MAX_PDU = 64 * 1024  # the largest PDU we accept from a peer
_PENDING = (0xFF00, 0xFF01)


class DimsePeer:
    """The DIMSE networks, as we ask them (one association per search)."""

    def __init__(self, *, our_ae_title: str, max_studies: int) -> None:
        self.our_ae_title = our_ae_title
        self.max_studies = max_studies

    @staticmethod
    def _identifier(network: Network, nhs_number: str, study_uid: str = "") -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for tag in STUDY_ATTRIBUTES:
            ds.add_new(int(tag, 16), STUDY_ATTRIBUTES[tag], "")
        ds.StudyInstanceUID = study_uid
        if network.nhs_number_in is NhsNumberIn.PATIENT_ID:
            ds.PatientID = nhs_number
        elif network.nhs_number_in is NhsNumberIn.ISSUER_NHS:
            ds.PatientID = nhs_number
            ds.IssuerOfPatientID = "NHS" if nhs_number else ""
        else:
            item = Dataset()
            item.PatientID = nhs_number
            item.IssuerOfPatientID = "NHS"
            ds.OtherPatientIDsSequence = Sequence([item])
        return ds

    def find_studies(self, network: Network, nhs_number: str) -> list[JsonDataset]:
        """The study identifiers the network answers, as DICOM JSON (each still to be
        checked); :class:`PeerAnswerError` when it cannot be asked or fails."""
        return self._find(network, self._identifier(network, nhs_number))

    def find_study(self, network: Network, study_instance_uid: str) -> list[JsonDataset]:
        """The network's identifier of one study (with its patient's identifiers)."""
        return self._find(network, self._identifier(network, "", study_instance_uid))

    def _find(self, network: Network, query: Dataset) -> list[JsonDataset]:
        access = network.dimse
        assert access is not None
        if access.tls:
            raise PeerAnswerError("DICOM TLS to other networks is not supported yet")
        timeout = network.timeout_seconds
        deadline = time.monotonic() + timeout
        ae = AE(ae_title=self.our_ae_title)
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.connection_timeout = timeout
        ae.maximum_pdu_size = _MAX_PDU
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        try:
            assoc = associate(
                ae, access.host, access.port, ae_title=access.ae_title, max_pdu=_MAX_PDU
            )
        except Exception as exc:  # pynetdicom raises little, but a socket may
            raise PeerAnswerError(f"cannot associate: {exc}") from None
        if not assoc.is_established:
            raise PeerAnswerError("association refused or no answer")
        found: list[JsonDataset] = []
        complete = False
        try:
            responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            for status, identifier in responses:
                code = getattr(status, "Status", None)
                if code is None:
                    raise PeerAnswerError("no C-FIND response in time")
                if code == 0x0000:
                    complete = True
                    break
                if code not in _PENDING:
                    raise PeerAnswerError(f"C-FIND failed with status 0x{code:04X}")
                if identifier is not None:
                    found.append(_json(identifier))
                if len(found) > self.max_studies or time.monotonic() > deadline:
                    break  # the rest is not read: the association is aborted below
        finally:
            if assoc.is_established:
                if complete:
                    assoc.release()
                else:
                    assoc.abort()
        return found


def _json(identifier: Any) -> JsonDataset:
    try:
        out: JsonDataset = identifier.to_json_dict(bulk_data_threshold=1024)
        return out
    except Exception as exc:  # a malformed identifier: pydicom decodes lazily
        raise PeerAnswerError(f"an identifier that cannot be read: {str(exc)[:80]}") from None


def _associate(ae: AE, network: Network, **kw: Any) -> Any:
    """An association with a DIMSE network; :class:`PeerAnswerError` when there is none."""
    access = network.dimse
    assert access is not None
    try:
        assoc = associate(ae, access.host, access.port, ae_title=access.ae_title, **kw)
    except Exception as exc:
        raise PeerAnswerError(f"cannot associate: {exc}") from None
    if not assoc.is_established:
        raise PeerAnswerError("association refused or no answer")
    return assoc


def _study_query(study_instance_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    return query


def _final_status(responses: Any, service: str) -> int:
    """The final status of a C-GET or C-MOVE, read past its pending responses."""
    for status, _ in responses:
        code = getattr(status, "Status", None)
        if code is None:
            raise PeerAnswerError(f"no {service} response in time")
        if code not in _PENDING:
            return int(code)
    raise PeerAnswerError(f"{service} ended without a final response")


def get_study(
    network: Network, study_instance_uid: str, into: Path, *, our_ae_title: str, max_bytes: int
) -> int:
    """C-GET a whole study from a DIMSE network (PS3.4 C.4.3) into the directory
    ``into`` as Part 10 files (opaque names), at most ``max_bytes`` in all; the number of
    files. :class:`PeerAnswerError` when it cannot be retrieved."""
    access = network.dimse
    assert access is not None
    if access.tls:
        raise PeerAnswerError("DICOM TLS to other networks is not supported yet")
    timeout = max(network.timeout_seconds, 10.0)  # a whole study: more than a search
    received = {"files": 0, "bytes": 0}

    def store(event: Any) -> int:
        data = event.request.DataSet.getvalue()
        if received["bytes"] + len(data) > max_bytes:
            return 0xA700  # Out of Resources
        path = into / f"{uuid.uuid4().hex}.dcm"
        with path.open("wb") as f:
            f.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(f, event.file_meta, enforce_standard=True)  # type: ignore[arg-type]
            f.write(data)
        received["files"] += 1
        received["bytes"] += len(data)
        return 0x0000

    ae = AE(ae_title=our_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = network.timeout_seconds
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    classes = [str(cx.abstract_syntax) for cx in StoragePresentationContexts][:120]
    for uid in classes:
        ae.add_requested_context(uid)
    roles: list[Any] = [build_role(uid, scp_role=True) for uid in classes]
    assoc = _associate(ae, network, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        responses = assoc.send_c_get(
            _study_query(study_instance_uid), StudyRootQueryRetrieveInformationModelGet
        )
        final = _final_status(responses, "C-GET")
    finally:
        if assoc.is_established:
            assoc.release()
    if final not in (0x0000, 0xB000) or not received["files"]:
        raise PeerAnswerError(f"C-GET ended with status 0x{final:04X}, {received['files']} objects")
    return received["files"]


def move_study(network: Network, study_instance_uid: str, into: Path, *, our_ae_title: str) -> int:
    """C-MOVE a whole study from a DIMSE network to our own AE title (PS3.4 C.4.2): the
    network C-STOREs it on an association of its own, which our DIMSE listener writes
    into ``into`` (services.federation.arrivals); the number of files there when the
    network's final response came. :class:`PeerAnswerError` when nothing arrived."""
    access = network.dimse
    assert access is not None
    if access.tls:
        raise PeerAnswerError("DICOM TLS to other networks is not supported yet")
    timeout = max(network.timeout_seconds, 10.0)  # between two responses of a whole study
    ae = AE(ae_title=our_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = network.timeout_seconds
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, network)
    try:
        query = _study_query(study_instance_uid)
        model = StudyRootQueryRetrieveInformationModelMove
        responses = assoc.send_c_move(query, our_ae_title, model)
        final = _final_status(responses, "C-MOVE")
    finally:
        if assoc.is_established:
            assoc.release()
    files = len(list(into.glob("*.dcm")))
    if final not in (0x0000, 0xB000) or not files:
        raise PeerAnswerError(f"C-MOVE ended with status 0x{final:04X}, {files} objects")
    return files
