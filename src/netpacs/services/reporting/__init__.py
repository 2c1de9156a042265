"""Networked reporting (issue 6): one regional worklist, claims, reports and signing,
and the turnaround of the region's targets.

- :mod:`.worklist`: which new series become worklist items (priority, subspecialty,
  target time) and the worklist each reporter sees;
- :mod:`.claims`: who holds an item (claim, release, assign, priority, lapsed claims);
- :mod:`.reports`: drafts, signing final, addenda, second opinions, discrepancies,
  priors, published reports, the SRs and ORUs of signed reports;
- :mod:`.turnaround`: the dashboard's figures;
- :mod:`.common`: what they share: the :class:`Problem` of a refused request, the
  :class:`Priority`, and the :class:`ReportingScope` of one principal.

Who reports what: radiologists of the trusts an agreement of the region file names
(``[reporting.agreements]``), for the requesting trusts (and subspecialties) it names;
admins manage everything. Each service is built once per process for nobody and
scoped to each request's principal with ``for_principal``.
"""

from netpacs.domain.outcomes import Problem
from netpacs.services.reporting.claims import ClaimsService
from netpacs.services.reporting.common import (
    Priority,
    ReportingError,
    ReportingScope,
)
from netpacs.services.reporting.records import MAX_TEXT
from netpacs.services.reporting.reports import ReportsService
from netpacs.services.reporting.turnaround import TurnaroundService
from netpacs.services.reporting.worklist import WorklistRule, WorklistService

__all__ = [
    "MAX_TEXT",
    "ClaimsService",
    "Priority",
    "Problem",
    "ReportingError",
    "ReportingScope",
    "ReportsService",
    "TurnaroundService",
    "WorklistRule",
    "WorklistService",
]
