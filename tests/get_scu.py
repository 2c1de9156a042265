"""A workstation's C-GET association to netpacs (pynetdicom): the Study Root C-GET
context, one storage context on which it takes the sub-operations (SCP role), and the
handler that receives each object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore

from netpacs.adapters.dimse.requestor import associate


def get_association(
    ae_title: str,
    port: int,
    sop_class: str,
    on_store: Callable[[evt.Event], int],
    transfer_syntaxes: Sequence[str] | None = None,
) -> Any:
    """An established association to the AE ``NETPACS`` on 127.0.0.1:``port``."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    if transfer_syntaxes is None:
        ae.add_requested_context(sop_class)
    else:
        ae.add_requested_context(sop_class, list(transfer_syntaxes))
    assoc = associate(
        ae,
        "127.0.0.1",
        port,
        ae_title="NETPACS",
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    return assoc
