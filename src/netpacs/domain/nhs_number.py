"""The NHS number: England's national patient identifier (REGION.md, Patient identity).

Ten digits; the last is a modulus-11 check digit over the first nine (weights 10 down
to 2; check = 11 - sum mod 11; 11 means 0; 10 means the number is invalid). People
write it 3-3-4 (``943 476 5919``), sometimes with dashes: :func:`parse` accepts spaces
and dashes between the digits and says exactly what is wrong with anything else, so
that an invalid number is flagged for a person and never used for linking.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

#: Issuer of Patient ID / assigning authority values that mean "an NHS number".
NHS_ISSUERS = frozenset({"NHS", "2.16.840.1.113883.2.1.4.1"})
#: The FHIR identifier system of the NHS number.
FHIR_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

_WEIGHTS = tuple(range(10, 1, -1))
_SEPARATORS = re.compile(r"[ \-]")


class Problem(enum.Enum):
    """Why a value is not a valid NHS number."""

    EMPTY = "no value"
    NOT_DIGITS = "has characters other than digits, spaces and dashes"
    WRONG_LENGTH = "is not 10 digits"
    CHECK_DIGIT_TEN = "has a check digit of 10, which no NHS number has"
    WRONG_CHECK_DIGIT = "has the wrong check digit"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A value read as an NHS number: its digits, and the problem if it is not valid."""

    digits: str
    problem: Problem | None

    @property
    def valid(self) -> bool:
        return self.problem is None


def check_digit(first_nine: str) -> int:
    """The modulus-11 check digit of nine digits; 10 means no valid number has them."""
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True))
    check = 11 - total % 11
    return 0 if check == 11 else check


def parse(value: str) -> Parsed:
    """Read ``value`` as an NHS number (spaces and dashes between digits allowed)."""
    text = value.strip()
    if not text:
        return Parsed("", Problem.EMPTY)
    digits = _SEPARATORS.sub("", text)
    if not digits.isascii() or not digits.isdigit():
        return Parsed(digits, Problem.NOT_DIGITS)
    if len(digits) != 10:
        return Parsed(digits, Problem.WRONG_LENGTH)
    check = check_digit(digits[:9])
    if check == 10:
        return Parsed(digits, Problem.CHECK_DIGIT_TEN)
    if check != int(digits[9]):
        return Parsed(digits, Problem.WRONG_CHECK_DIGIT)
    return Parsed(digits, None)


def is_valid(value: str) -> bool:
    return parse(value).valid


def is_nhs_issuer(issuer: str) -> bool:
    return issuer.strip().upper() in NHS_ISSUERS


def format_for_people(digits: str) -> str:
    """An NHS number as people read it, 3-3-4 digits (``943 476 5919``)."""
    if len(digits) == 10 and digits.isdigit():
        return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    return digits
