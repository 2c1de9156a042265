"""DICOM UID validation (PS3.5 9.1: UID encoding rules)."""

from __future__ import annotations

import re

# PS3.5 9.1: components of digits separated by '.', no leading zero in a
# multi-digit component, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a well-formed UID under PS3.5 9.1."""
    return len(value) <= 64 and _UID_RE.match(value) is not None
