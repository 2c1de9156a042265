"""Query compilation: C-FIND-style identifiers into SQL on the index, rows into DICOM
JSON answers (PS3.4 C.2.2.2, C.4.1.1.3.2, C.6). The query service asks through
:class:`QueryIndex`; the rules of asking (who may see what, the audit) are its own.

Answers come from the index only (ARCHITECTURE.md invariant 7).
"""

from netpacs.index.query.compile import Conditions, FindPlan, Reached
from netpacs.index.query.reader import PatientKeys, QueryIndex

__all__ = ["Conditions", "FindPlan", "PatientKeys", "QueryIndex", "Reached"]
