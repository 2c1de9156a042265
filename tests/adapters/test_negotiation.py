"""Association negotiation accepts every storage SOP class a modality may send."""

from __future__ import annotations

import pynetdicom.sop_class as sop_class
from pynetdicom.service_class import StorageServiceClass

from netpacs.adapters.dimse import pdu as p
from netpacs.adapters.dimse.negotiation import EXPLICIT_VR_LE, Negotiator
from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def storage_sop_classes() -> list[str]:
    """Every SOP class of the Storage Service Class among pynetdicom's named SOP classes."""
    return sorted(
        str(uid)
        for uid in vars(sop_class).values()
        if isinstance(uid, sop_class.SOPClass)
        and sop_class.uid_to_service_class(uid) is StorageServiceClass
    )


def request(abstract_syntaxes: list[str], transfer_syntax: str) -> p.AssociateRequest:
    return p.AssociateRequest(
        called_ae_title="NETPACS",
        calling_ae_title="ESH_CT1",
        application_context=p.APPLICATION_CONTEXT,
        contexts=tuple(
            p.ProposedContext(2 * i + 1, uid, (transfer_syntax,))
            for i, uid in enumerate(abstract_syntaxes)
        ),
        max_pdu_length=0,
        implementation_class_uid="1.2.3",
        implementation_version_name="TEST",
    )


def test_every_storage_sop_class_is_accepted_in_any_transfer_syntax() -> None:
    classes = storage_sop_classes()
    assert len(classes) > 150  # CT, MR, ..., every modality and SR of the standard
    negotiator = Negotiator(
        region=load_region(BUNDLED_DEMO_REGION), ae_title="NETPACS", reject_unknown_calling_ae=True
    )
    for syntax in (EXPLICIT_VR_LE, JPEG_LS_LOSSLESS):
        decision = negotiator.negotiate(request(classes, syntax))
        refused = [c.abstract_syntax for c in decision.contexts if c.result != p.PC_ACCEPTANCE]
        assert decision.reject is None and refused == []
        assert {c.transfer_syntax for c in decision.contexts} == {syntax}


def test_a_sop_class_that_is_not_storage_is_refused() -> None:
    negotiator = Negotiator(
        region=load_region(BUNDLED_DEMO_REGION), ae_title="NETPACS", reject_unknown_calling_ae=True
    )
    printing = str(sop_class.BasicGrayscalePrintManagementMeta)
    decision = negotiator.negotiate(request([printing], EXPLICIT_VR_LE))
    assert [c.result for c in decision.contexts] == [p.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED]
