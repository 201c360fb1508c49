"""Resident identity card numbers (居民身份证号码), GB 11643-1999.

An 18-character number: a 6-digit administrative division code, an 8-digit birth date (YYYYMMDD), a 3-digit
sequence code (odd for men, even for women) and a check character computed with ISO 7064 MOD 11-2.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

_WEIGHTS: Final = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2
_CHECK_CHARS: Final = "10X98765432"
_SHAPE: Final = re.compile(r"^\d{17}[\dX]$")

#: GB/T 2260 province-level codes (first two digits of the division code).
PROVINCE_CODES: Final = frozenset(
    {
        "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
        "65", "71", "81", "82",
    }
)  # fmt: skip


class IdNumberProblem(StrEnum):
    """Why a resident ID number is refused; each value is a stable reason code for API clients."""

    shape = "id_number.format"
    province = "id_number.province"
    birth_date = "id_number.birth_date"
    checksum = "id_number.checksum"


@dataclass(frozen=True, slots=True)
class ResidentId:
    number: str
    division_code: str
    birth_date: dt.date
    sex: str  # "male" | "female", from the parity of the sequence code

    @property
    def masked(self) -> str:
        return mask_id_number(self.number)


class InvalidIdNumber(ValueError):
    def __init__(self, problem: IdNumberProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


def check_character(first17: str) -> str:
    """The 18th character for the first 17 digits (ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalize_id_number(raw: str) -> str:
    """Trim spaces and upper-case a trailing ``x``, the two slips people make when typing a number."""
    return raw.strip().replace(" ", "").upper()


def parse_id_number(raw: str, *, today: dt.date | None = None) -> ResidentId:
    number = normalize_id_number(raw)
    if not _SHAPE.match(number):
        raise InvalidIdNumber(IdNumberProblem.shape)
    if number[:2] not in PROVINCE_CODES:
        raise InvalidIdNumber(IdNumberProblem.province)
    try:
        birth = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise InvalidIdNumber(IdNumberProblem.birth_date) from None
    today = today or dt.datetime.now(dt.UTC).date()
    if birth.year < 1900 or birth > today:
        raise InvalidIdNumber(IdNumberProblem.birth_date)
    if check_character(number[:17]) != number[17]:
        raise InvalidIdNumber(IdNumberProblem.checksum)
    sex = "male" if int(number[16]) % 2 == 1 else "female"
    return ResidentId(number=number, division_code=number[:6], birth_date=birth, sex=sex)


def is_valid_id_number(raw: str) -> bool:
    try:
        parse_id_number(raw)
    except InvalidIdNumber:
        return False
    return True


def make_id_number(division_code: str, birth_date: dt.date, sequence: int) -> str:
    """Build a checksum-valid number; used by the demo county and tests (sequence 0–999, odd = male)."""
    first17 = f"{division_code}{birth_date:%Y%m%d}{sequence:03d}"
    return first17 + check_character(first17)


def mask_id_number(number: str) -> str:
    """Show the division code and the last four characters only: ``331121********1234``."""
    if len(number) != 18:
        return "*" * len(number)
    return f"{number[:6]}{'*' * 8}{number[14:]}"
