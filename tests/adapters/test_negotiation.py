"""Association negotiation accepts every storage SOP class a modality may send."""

from __future__ import annotations

from collections.abc import Iterator

import pynetdicom.sop_class as sop_class
import pytest
from pynetdicom import AE, build_context
from pynetdicom.service_class import StorageServiceClass

from netpacs.adapters.dimse.requestor import associate
from tests.conftest import Netpacs, free_port, write_region

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context ids are odd numbers 1-255


def storage_sop_classes() -> list[str]:
    """Every SOP class of the Storage Service Class among pynetdicom's named SOP classes."""
    return sorted(
        str(uid)
        for uid in vars(sop_class).values()
        if isinstance(uid, sop_class.SOPClass)
        and sop_class.uid_to_service_class(uid) is StorageServiceClass
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    """netpacs on SQLite: negotiation does not touch the index."""
    folder = tmp_path_factory.mktemp("negotiation")
    np = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=write_region(folder / "region.toml", {"RTP_WS1": free_port()}),
    ).start()
    try:
        yield np
    finally:
        np.stop()


def accepted(server: Netpacs, abstract_syntaxes: list[str], transfer_syntax: str) -> list[str]:
    """The abstract syntaxes netpacs accepts when modality ESH_CT1 proposes each of them
    in ``transfer_syntax`` (as many associations as the contexts need)."""
    taken: list[str] = []
    for at in range(0, len(abstract_syntaxes), MAX_CONTEXTS):
        ae = AE(ae_title="ESH_CT1")
        ae.requested_contexts = [
            build_context(uid, transfer_syntax) for uid in abstract_syntaxes[at : at + MAX_CONTEXTS]
        ]
        assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
        assert assoc.is_established
        try:
            taken += [cx.abstract_syntax for cx in assoc.accepted_contexts]
        finally:
            assoc.release()
    return sorted(taken)


def test_every_storage_sop_class_is_accepted_in_any_transfer_syntax(server: Netpacs) -> None:
    classes = storage_sop_classes()
    assert len(classes) > 150  # CT, MR, ..., every modality and SR of the standard
    for syntax in (EXPLICIT_VR_LE, JPEG_LS_LOSSLESS):
        assert accepted(server, classes, syntax) == classes


def test_a_sop_class_that_is_not_storage_is_refused(server: Netpacs) -> None:
    printing = str(sop_class.BasicGrayscalePrintManagementMeta)
    assert accepted(server, [printing, str(sop_class.CTImageStorage)], EXPLICIT_VR_LE) == [
        str(sop_class.CTImageStorage)
    ]
