"""A deterministic, realistic demo county for development, demos and tests — pure Python, no database.

``build_demo_county()`` returns 浙江省 > 丽水市 > 青田县 (GB/T 2260 code 331121) with 15 townships and 200
villages, the medical community's facilities (the county people's hospital and TCM hospital, a 卫生院 per
township, a 村卫生室 per village), its staff accounts and a few thousand registered residents whose resident
ID numbers are checksum-valid and agree with their sex and birth date.

The layout (regions, facilities, staff) is fixed, so facility codes and usernames are the same for every
seed; the seed varies the patients. Everything comes from private ``random.Random`` instances — never the
global generator, never the clock — so equal arguments always give an equal ``DemoCounty``.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from telemed.org.idcard import make_id_number

RegionLevel = Literal["province", "city", "county", "township", "village"]
FacilityTier = Literal["county", "township", "village"]
Sex = Literal["male", "female"]


@dataclass(frozen=True, slots=True)
class DemoRegion:
    code: str
    name: str
    level: RegionLevel
    parent_code: str | None


@dataclass(frozen=True, slots=True)
class DemoDepartment:
    code: str
    name_zh: str
    name_en: str


@dataclass(frozen=True, slots=True)
class DemoFacility:
    code: str
    name: str
    tier: FacilityTier
    kind: str
    region_code: str
    parent_code: str | None
    latitude: float
    longitude: float
    modalities: tuple[str, ...]
    flags: tuple[str, ...]
    icd10_ranges: tuple[str, ...]
    departments: tuple[DemoDepartment, ...]


@dataclass(frozen=True, slots=True)
class DemoStaff:
    username: str
    full_name: str
    role: str
    facility_code: str | None
    department_code: str | None


@dataclass(frozen=True, slots=True)
class DemoPatient:
    full_name: str
    sex: Sex
    birth_date: dt.date
    id_number: str
    phone: str
    facility_code: str


@dataclass(frozen=True, slots=True)
class DemoCounty:
    seed: int
    regions: tuple[DemoRegion, ...]
    facilities: tuple[DemoFacility, ...]
    staff: tuple[DemoStaff, ...]
    patients: tuple[DemoPatient, ...]


# --------------------------------------------------------------------------------------------------------
# Geography
# --------------------------------------------------------------------------------------------------------

PROVINCE_CODE: Final = "33"
CITY_CODE: Final = "3311"
COUNTY_CODE: Final = "331121"
DEFAULT_TODAY: Final = dt.date(2026, 1, 1)

_LAYOUT_SEED: Final = 331121
_COUNTY_SEAT: Final = (28.1396, 120.2897)  # 鹤城街道

# (code suffix, name, latitude, longitude of the township seat, number of villages); 200 villages in all.
_TOWNSHIPS: Final = (
    ("101", "温溪镇", 28.1050, 120.4050, 18),
    ("102", "东源镇", 28.3200, 120.2150, 12),
    ("103", "高湖镇", 28.2620, 120.3280, 15),
    ("104", "船寮镇", 28.1680, 120.2050, 16),
    ("105", "海口镇", 28.1950, 120.1400, 14),
    ("106", "腊口镇", 28.2350, 120.0600, 13),
    ("107", "北山镇", 28.2750, 119.9800, 11),
    ("108", "山口镇", 28.1200, 120.1900, 17),
    ("109", "仁庄镇", 28.0200, 120.1700, 10),
    ("110", "祯埠镇", 28.3000, 120.1000, 12),
    ("111", "阜山乡", 28.1300, 120.0500, 15),
    ("112", "章村乡", 28.3450, 120.3000, 13),
    ("113", "季宅乡", 28.3950, 120.2400, 12),
    ("114", "万阜乡", 28.0450, 120.3600, 11),
    ("115", "方山乡", 27.9850, 120.3000, 11),
)

_VILLAGE_PREFIXES: Final = "东西南北上下前后大小新石黄林山溪岭杨章吴周叶汤高平龙凤桃竹松梅金岩双塘湖白桥"
_VILLAGE_SUFFIXES: Final = "岙坑垟源坪头口湾山岭田畈坦寮洋垄"

# --------------------------------------------------------------------------------------------------------
# Facilities
# --------------------------------------------------------------------------------------------------------

# (code, 中文, English, staffed by specialists)
_CPH_DEPARTMENTS: Final = (
    ("cardiology", "心血管内科", "Cardiology", True),
    ("neurology", "神经内科", "Neurology", True),
    ("endocrinology", "内分泌科", "Endocrinology", True),
    ("respiratory", "呼吸与危重症医学科", "Pulmonary and Critical Care Medicine", True),
    ("nephrology", "肾内科", "Nephrology", True),
    ("general_surgery", "普外科", "General Surgery", True),
    ("orthopaedics", "骨科", "Orthopaedics", True),
    ("obstetrics_gynaecology", "妇产科", "Obstetrics and Gynaecology", True),
    ("paediatrics", "儿科", "Paediatrics", True),
    ("emergency", "急诊科", "Emergency Medicine", True),
    ("general_practice", "全科医学科", "General Practice", True),
    ("radiology", "医学影像科", "Medical Imaging", False),
    ("laboratory", "检验科", "Laboratory Medicine", False),
)
_TCM_DEPARTMENTS: Final = (
    ("tcm_internal", "中医内科", "TCM Internal Medicine", True),
    ("acupuncture", "针灸推拿科", "Acupuncture and Tuina", True),
    ("tcm_orthopaedics", "中医骨伤科", "TCM Orthopaedics and Traumatology", True),
    ("rehabilitation", "康复医学科", "Rehabilitation Medicine", True),
    ("emergency", "急诊科", "Emergency Medicine", True),
    ("radiology", "医学影像科", "Medical Imaging", False),
    ("laboratory", "检验科", "Laboratory Medicine", False),
)
_TOWNSHIP_DEPARTMENTS: Final = (
    ("general_practice", "全科", "General Practice", True),
    ("tcm", "中医科", "Traditional Chinese Medicine", True),
    ("radiology", "放射科", "Radiology", False),
    ("laboratory", "检验科", "Laboratory", False),
)

_CPH_ICD10: Final = (
    "I10-I15", "I20-I25", "I21", "I48", "I50", "I60-I69", "I63", "G40-G47", "E10-E14", "E11", "E05",
    "J12-J18", "J44", "J45", "J96", "N17-N19", "K35-K38", "K80-K83", "S00-T98", "O00-O99", "P00-P96",
    "A00-B99", "C00-D48",
)  # fmt: skip
_TCM_ICD10: Final = ("I10-I15", "I63", "I69", "E11", "J44", "K29", "M15-M19", "M40-M54", "G51", "S32", "S82")
_TOWNSHIP_ICD10: Final = ("I10-I15", "E11", "J00-J06", "J20", "J44", "K29", "M15-M19", "M54")
_CLINIC_ICD10: Final = ("I10-I15", "E11", "J00-J06")

_CPH_CODE: Final = "QT-CPH"
_TCM_CODE: Final = "QT-TCM"

# --------------------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------------------

# Common surnames, weighted roughly by their frequency in southern Zhejiang (叶, 季, 留, 雷 and 蓝 are local).
_SURNAMES: Final = (
    ("陈", 90), ("王", 75), ("叶", 55), ("周", 50), ("林", 50), ("李", 45), ("张", 45), ("吴", 40),
    ("徐", 40), ("刘", 30), ("潘", 30), ("季", 28), ("杨", 25), ("黄", 25), ("朱", 25), ("胡", 25),
    ("金", 22), ("郑", 22), ("赵", 18), ("何", 18), ("孙", 15), ("汪", 15), ("蒋", 12), ("邹", 12),
    ("邱", 12), ("留", 10), ("郭", 10), ("罗", 10), ("高", 10), ("马", 8), ("夏", 8), ("毛", 8),
    ("雷", 8), ("蓝", 6), ("钟", 6), ("姜", 6), ("柳", 5), ("项", 5),
)  # fmt: skip

# Given-name characters by sex and the era people were born in (names follow fashions).
_GIVEN_CHARS: Final[dict[tuple[Sex, int], str]] = {
    ("male", 0): "建国志明华德福金根土水林忠荣平春永兴庆生发宝昌海松成",
    ("male", 1): "伟强磊军勇杰涛斌超明辉鹏飞刚峰亮俊晓东波华建文锋",
    ("male", 2): "浩宇轩梓睿子博文一铭泽辰俊皓然晨阳航煜奕霖逸宸",
    ("female", 0): "秀英兰桂芳玉珍凤菊梅花琴月娥素美翠香莲彩爱",
    ("female", 1): "丽芳娟艳红敏静燕霞玲琳婷洁萍慧晓雪佳倩琼",
    ("female", 2): "欣怡梓涵诗雨萱可馨语桐一诺子琪思悦妍彤昕",
}
_SINGLE_CHAR_SHARE: Final = (0.30, 0.35, 0.15)

# (youngest age, oldest age, weight, share of women): a rural county whose young adults work elsewhere.
_AGE_BANDS: Final = (
    (0, 6, 5.0, 0.47),
    (7, 17, 9.0, 0.47),
    (18, 44, 22.0, 0.48),
    (45, 59, 25.0, 0.50),
    (60, 74, 26.0, 0.51),
    (75, 84, 10.0, 0.55),
    (85, 99, 3.0, 0.62),
)

_MOBILE_PREFIXES: Final = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150", "151", "152", "153",
    "155", "156", "157", "158", "159", "177", "180", "181", "182", "183", "185", "186", "187", "188",
    "189", "198", "199",
)  # fmt: skip

_TOWNSHIP_REGISTERED_SHARE: Final = 0.15  # patients registered at a 卫生院 rather than a 村卫生室


@dataclass(frozen=True, slots=True)
class _Layout:
    regions: tuple[DemoRegion, ...]
    facilities: tuple[DemoFacility, ...]
    staff: tuple[DemoStaff, ...]
    township_weights: tuple[float, ...]  # cumulative, aligned with township_codes
    township_codes: tuple[str, ...]
    clinic_weights: tuple[float, ...]  # cumulative, aligned with clinic_codes
    clinic_codes: tuple[str, ...]


def build_demo_county(seed: int = 2026, *, patients: int = 3000, today: dt.date | None = None) -> DemoCounty:
    """Build the demo county; ``today`` only bounds the patients' birth dates (default 2026-01-01)."""
    if patients < 0:
        raise ValueError("patients must not be negative")
    layout = _layout()
    rng = random.Random(seed)
    people = _patients(rng, layout, patients, today or DEFAULT_TODAY)
    return DemoCounty(
        seed=seed, regions=layout.regions, facilities=layout.facilities, staff=layout.staff, patients=people
    )


@functools.cache
def _layout() -> _Layout:
    """Regions, facilities and staff: the same for every seed, so codes and usernames stay stable."""
    rng = random.Random(_LAYOUT_SEED)
    regions: list[DemoRegion] = [
        DemoRegion(PROVINCE_CODE, "浙江省", "province", None),
        DemoRegion(CITY_CODE, "丽水市", "city", PROVINCE_CODE),
        DemoRegion(COUNTY_CODE, "青田县", "county", CITY_CODE),
    ]
    villages: list[DemoRegion] = []
    village_names = _village_names(rng, sum(t[4] for t in _TOWNSHIPS))
    for suffix, name, _lat, _lon, n_villages in _TOWNSHIPS:
        township_code = COUNTY_CODE + suffix
        regions.append(DemoRegion(township_code, name, "township", COUNTY_CODE))
        for i in range(n_villages):
            villages.append(DemoRegion(f"{township_code}{201 + i}", village_names.pop(), "village", township_code))
    regions.extend(villages)

    cph = DemoFacility(
        code=_CPH_CODE,
        name="青田县人民医院",
        tier="county",
        kind="general_hospital",
        region_code=COUNTY_CODE,
        parent_code=None,
        latitude=_COUNTY_SEAT[0],
        longitude=_COUNTY_SEAT[1],
        modalities=("CT", "MR", "DX", "CR", "US", "XA", "MG", "ECG"),
        flags=("pci_capable", "stroke_centre", "chest_pain_centre"),
        icd10_ranges=_CPH_ICD10,
        departments=_departments(_CPH_DEPARTMENTS),
    )
    tcm = DemoFacility(
        code=_TCM_CODE,
        name="青田县中医医院",
        tier="county",
        kind="tcm_hospital",
        region_code=COUNTY_CODE,
        parent_code=None,
        latitude=28.1452,
        longitude=120.2968,
        modalities=("DX", "US", "CT", "ECG"),
        flags=(),
        icd10_ranges=_TCM_ICD10,
        departments=_departments(_TCM_DEPARTMENTS),
    )
    centres: list[DemoFacility] = []
    clinics: list[DemoFacility] = []
    township_weights: list[float] = []
    clinic_weights: list[float] = []
    for t_index, (suffix, name, lat, lon, n_villages) in enumerate(_TOWNSHIPS, start=1):
        centre_code = f"QT-T{t_index:02d}"
        centres.append(
            DemoFacility(
                code=centre_code,
                name=f"{name}卫生院",
                tier="township",
                kind="township_health_centre",
                region_code=COUNTY_CODE + suffix,
                parent_code=_CPH_CODE,
                latitude=round(lat + rng.uniform(-0.003, 0.003), 5),
                longitude=round(lon + rng.uniform(-0.003, 0.003), 5),
                modalities=("DX", "US", "ECG"),
                flags=(),
                icd10_ranges=_TOWNSHIP_ICD10,
                departments=_departments(_TOWNSHIP_DEPARTMENTS),
            )
        )
        township_weights.append(float(n_villages) * rng.uniform(0.8, 1.2))
        own_villages = [v for v in villages if v.parent_code == COUNTY_CODE + suffix]
        for v_index, village in enumerate(own_villages, start=1):
            c_lat, c_lon = _scatter(rng, lat, lon)
            clinics.append(
                DemoFacility(
                    code=f"{centre_code}-V{v_index:03d}",
                    name=f"{village.name}卫生室",
                    tier="village",
                    kind="village_clinic",
                    region_code=village.code,
                    parent_code=centre_code,
                    latitude=c_lat,
                    longitude=c_lon,
                    modalities=("ECG",) if rng.random() < 0.4 else (),
                    flags=(),
                    icd10_ranges=_CLINIC_ICD10,
                    departments=(),
                )
            )
            clinic_weights.append(rng.uniform(0.5, 1.8))  # villages differ in size

    staff = _staff(rng, cph, tcm, centres, clinics)
    return _Layout(
        regions=tuple(regions),
        facilities=(cph, tcm, *centres, *clinics),
        staff=staff,
        township_weights=tuple(itertools.accumulate(township_weights)),
        township_codes=tuple(c.code for c in centres),
        clinic_weights=tuple(itertools.accumulate(clinic_weights)),
        clinic_codes=tuple(c.code for c in clinics),
    )


def _departments(rows: Sequence[tuple[str, str, str, bool]]) -> tuple[DemoDepartment, ...]:
    return tuple(DemoDepartment(code, zh, en) for code, zh, en, _ in rows)


def _village_names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct village names such as 东岙村, in a shuffled order (consumed with ``pop()``)."""
    names = [f"{p}{s}村" for p in _VILLAGE_PREFIXES for s in _VILLAGE_SUFFIXES if p != s]
    rng.shuffle(names)
    return names[:count]


def _scatter(rng: random.Random, lat: float, lon: float) -> tuple[float, float]:
    """A point 1.5–7 km from the township seat, in a random direction."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    distance = rng.uniform(0.015, 0.065)  # degrees of latitude
    d_lat = distance * math.sin(angle)
    d_lon = distance * math.cos(angle) / math.cos(math.radians(lat))
    return round(lat + d_lat, 5), round(lon + d_lon, 5)


def _staff(
    rng: random.Random,
    cph: DemoFacility,
    tcm: DemoFacility,
    centres: Sequence[DemoFacility],
    clinics: Sequence[DemoFacility],
) -> tuple[DemoStaff, ...]:
    used: set[str] = set()

    def name() -> str:
        while True:
            sex: Sex = "female" if rng.random() < 0.5 else "male"
            candidate = _person_name(rng, sex, rng.randint(1962, 1998))
            if candidate not in used:
                used.add(candidate)
                return candidate

    staff: list[DemoStaff] = []
    for i, clinic in enumerate(clinics, start=1):
        staff.append(DemoStaff(f"cunyi{i:03d}", name(), "village_doctor", clinic.code, None))
    n = 0
    for centre in centres:
        for department in ("general_practice", "tcm"):
            n += 1
            staff.append(DemoStaff(f"xiangzhen{n:02d}", name(), "township_doctor", centre.code, department))
    n = 0
    for facility, rows, per_department in ((cph, _CPH_DEPARTMENTS, 2), (tcm, _TCM_DEPARTMENTS, 1)):
        for code, _zh, _en, clinical in rows:
            if not clinical:  # radiology has its own role; the laboratory has no doctors to log in
                continue
            for _ in range(per_department):
                n += 1
                staff.append(DemoStaff(f"zhuanke{n:02d}", name(), "specialist", facility.code, code))
    for i, facility in enumerate((cph, cph, cph, tcm), start=1):
        staff.append(DemoStaff(f"fangshe{i:02d}", name(), "radiologist", facility.code, "radiology"))
    for i in (1, 2):
        staff.append(DemoStaff(f"fenxi{i:02d}", name(), "bureau_analyst", None, None))
    staff.append(DemoStaff("admin01", name(), "admin", cph.code, None))
    return tuple(staff)


_SURNAME_CHARS: Final = tuple(s for s, _ in _SURNAMES)
_SURNAME_CUM_WEIGHTS: Final = tuple(itertools.accumulate(w for _, w in _SURNAMES))


def _person_name(rng: random.Random, sex: Sex, birth_year: int) -> str:
    era = 0 if birth_year < 1970 else 1 if birth_year < 1995 else 2
    chars = _GIVEN_CHARS[(sex, era)]
    surname = rng.choices(_SURNAME_CHARS, cum_weights=_SURNAME_CUM_WEIGHTS)[0]
    if rng.random() < _SINGLE_CHAR_SHARE[era]:
        return surname + rng.choice(chars)
    return surname + rng.choice(chars) + rng.choice(chars)


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a common year
        return day.replace(year=day.year - years, day=28)


_AGE_CUM_WEIGHTS: Final = tuple(itertools.accumulate(band[2] for band in _AGE_BANDS))
_EARLIEST_BIRTH: Final = dt.date(1900, 1, 1)


def _patients(rng: random.Random, layout: _Layout, count: int, today: dt.date) -> tuple[DemoPatient, ...]:
    id_numbers: set[str] = set()
    phones: set[str] = set()
    out: list[DemoPatient] = []
    while len(out) < count:
        youngest, oldest, _weight, female_share = rng.choices(_AGE_BANDS, cum_weights=_AGE_CUM_WEIGHTS)[0]
        sex: Sex = "female" if rng.random() < female_share else "male"
        latest = min(_years_before(today, youngest), today - dt.timedelta(days=1))
        earliest = max(_years_before(today, oldest + 1) + dt.timedelta(days=1), _EARLIEST_BIRTH)
        if earliest > latest:
            raise ValueError(f"today={today.isoformat()} leaves no room for birth dates")
        birth = earliest + dt.timedelta(days=rng.randrange((latest - earliest).days + 1))
        sequence = 2 * rng.randrange(500) + (1 if sex == "male" else 0)
        id_number = make_id_number(COUNTY_CODE, birth, sequence)
        phone = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(100_000_000):08d}"
        if id_number in id_numbers or phone in phones:
            continue
        id_numbers.add(id_number)
        phones.add(phone)
        if rng.random() < _TOWNSHIP_REGISTERED_SHARE:
            codes, weights = layout.township_codes, layout.township_weights
        else:
            codes, weights = layout.clinic_codes, layout.clinic_weights
        facility_code = rng.choices(codes, cum_weights=weights)[0]
        out.append(
            DemoPatient(
                full_name=_person_name(rng, sex, birth.year),
                sex=sex,
                birth_date=birth,
                id_number=id_number,
                phone=phone,
                facility_code=facility_code,
            )
        )
    return tuple(out)
