"""NHS number validity (REGION.md): the table of issue 4."""

from __future__ import annotations

import pytest

from netpacs.domain.nhs_number import Problem, check_digit, format_for_people, parse


@pytest.mark.parametrize(
    ("value", "digits", "problem"),
    [
        pytest.param("9434765919", "9434765919", None, id="valid"),
        pytest.param("943 476 5919", "9434765919", None, id="valid-with-spaces"),
        pytest.param("943-476-5919", "9434765919", None, id="valid-with-dashes"),
        pytest.param(" 9434765919 ", "9434765919", None, id="valid-padded"),
        pytest.param("9434765080", "9434765080", None, id="valid-check-digit-from-11-is-0"),
        pytest.param("9434765081", "9434765081", Problem.WRONG_CHECK_DIGIT, id="11-is-not-1"),
        pytest.param("9434765918", "9434765918", Problem.WRONG_CHECK_DIGIT, id="wrong-check"),
        pytest.param("1000000010", "1000000010", Problem.CHECK_DIGIT_TEN, id="check-digit-10"),
        pytest.param("943476591", "943476591", Problem.WRONG_LENGTH, id="nine-digits"),
        pytest.param("94347659190", "94347659190", Problem.WRONG_LENGTH, id="eleven-digits"),
        pytest.param("943476591X", "943476591X", Problem.NOT_DIGITS, id="letter"),
        pytest.param("943.476.5919", "943.476.5919", Problem.NOT_DIGITS, id="dots"),
        pytest.param("٩٤٣٤٧٦٥٩١٩", "٩٤٣٤٧٦٥٩١٩", Problem.NOT_DIGITS, id="non-ascii-digits"),
        pytest.param("", "", Problem.EMPTY, id="empty"),
        pytest.param("   ", "", Problem.EMPTY, id="blank"),
    ],
)
def test_nhs_number_validity(value: str, digits: str, problem: Problem | None) -> None:
    parsed = parse(value)
    assert parsed.digits == digits
    assert parsed.problem is problem
    assert parsed.valid is (problem is None)


def test_check_digit_11_means_0_and_10_means_invalid() -> None:
    assert check_digit("943476508") == 0  # weighted sum 286 = 26 * 11
    assert check_digit("100000001") == 10  # sum 12: 11 - 1 = 10, no number has it
    assert check_digit("943476591") == 9


def test_nhs_number_is_shown_to_people_as_3_3_4_digits() -> None:
    assert format_for_people("9434765919") == "943 476 5919"
    assert format_for_people("12345") == "12345"
