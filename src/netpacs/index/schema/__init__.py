"""Index tables (SQLAlchemy Core). Migrations in ``index/migrations`` must match them.

Patients are keyed by (patient_id, issuer): a hospital number means nothing without
the trust that issued it (REGION.md). Attributes that C-FIND and QIDO-RS match on
are columns; every instance's full header (DICOM JSON, bulk data left out) is kept
in ``instance.metadata_json`` so that metadata is answered without reading files.

The tables are declared by area, one module each (``base`` holds the metadata and the
shared column types); this package names them all, so that code imports a table from
``netpacs.index.schema`` and Alembic sees every table in :data:`metadata`.
"""

from __future__ import annotations

from netpacs.index.schema.access import (
    audit_event,
    break_glass,
    partner_found,
    revoked_token,
    user_account,
)
from netpacs.index.schema.archive import (
    index_epoch,
    instance,
    patient,
    series,
    study,
)
from netpacs.index.schema.base import BY_DATABASE, TS, UID, metadata
from netpacs.index.schema.edge import (
    change_feed,
    edge_audit_mark,
    edge_cached_study,
    edge_cursor,
    edge_forward,
    edge_link,
    edge_mpps_outbox,
    edge_node_status,
    edge_prefetch,
    edge_signin,
)
from netpacs.index.schema.identity import (
    adt_identity,
    hl7_message,
    patient_merge,
    reconciliation,
)
from netpacs.index.schema.orders import (
    imaging_order,
    performed_step,
    rejected_instance,
    rejection,
)
from netpacs.index.schema.reporting import (
    report,
    report_event,
    result_outbox,
    store_tally,
    worklist_item,
)

__all__ = [
    "BY_DATABASE",
    "TS",
    "UID",
    "adt_identity",
    "audit_event",
    "break_glass",
    "change_feed",
    "edge_audit_mark",
    "edge_cached_study",
    "edge_cursor",
    "edge_forward",
    "edge_link",
    "edge_mpps_outbox",
    "edge_node_status",
    "edge_prefetch",
    "edge_signin",
    "hl7_message",
    "imaging_order",
    "index_epoch",
    "instance",
    "metadata",
    "partner_found",
    "patient",
    "patient_merge",
    "performed_step",
    "reconciliation",
    "rejected_instance",
    "rejection",
    "report",
    "report_event",
    "result_outbox",
    "revoked_token",
    "series",
    "store_tally",
    "study",
    "user_account",
    "worklist_item",
]
