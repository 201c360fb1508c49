"""GB 11643 resident ID numbers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemed.org.idcard import (
    IdNumberProblem,
    InvalidIdNumber,
    check_character,
    make_id_number,
    mask_id_number,
    parse_id_number,
)


def test_published_example() -> None:
    # The worked example of GB 11643-1999: 11010519491231002X, a woman born 1949-12-31 in Beijing Chaoyang.
    parsed = parse_id_number("11010519491231002x")
    assert parsed.number == "11010519491231002X"
    assert parsed.birth_date == dt.date(1949, 12, 31)
    assert parsed.sex == "female"
    assert parsed.division_code == "110105"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("11010519491231002", IdNumberProblem.shape),
        ("1101051949123100X2", IdNumberProblem.shape),
        ("99010519491231002X", IdNumberProblem.province),
        ("11010519491331002X", IdNumberProblem.birth_date),
        ("11010518991231002X", IdNumberProblem.birth_date),
        ("110105194912310021", IdNumberProblem.checksum),
    ],
)
def test_refusals(raw: str, problem: IdNumberProblem) -> None:
    with pytest.raises(InvalidIdNumber) as caught:
        parse_id_number(raw)
    assert caught.value.problem is problem


def test_future_birth_date_is_refused() -> None:
    number = make_id_number("331121", dt.date(2030, 1, 1), 1)
    with pytest.raises(InvalidIdNumber):
        parse_id_number(number, today=dt.date(2026, 1, 1))


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2025, 12, 31)), st.integers(0, 999))
def test_made_numbers_parse_back(birth: dt.date, sequence: int) -> None:
    number = make_id_number("331121", birth, sequence)
    parsed = parse_id_number(number)
    assert parsed.birth_date == birth
    assert parsed.sex == ("male" if sequence % 2 else "female")
    wrong = number[:17] + ("0" if number[17] != "0" else "1")
    with pytest.raises(InvalidIdNumber):
        parse_id_number(wrong)
    assert check_character(number[:17]) == number[17]


def test_mask() -> None:
    assert mask_id_number("11010519491231002X") == "110105********002X"
