"""The demo county: deterministic, internally consistent and realistic enough to demo with."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter

import pytest

from telemed.org.demo_data import DemoCounty, build_demo_county
from telemed.org.idcard import parse_id_number

TODAY = dt.date(2026, 1, 1)
CJK = re.compile(r"^[\u4e00-\u9fff]+$")
MOBILE = re.compile(r"^1[3-9]\d{9}$")


@pytest.fixture(scope="module")
def county() -> DemoCounty:
    return build_demo_county()


def test_same_seed_gives_an_equal_county(county: DemoCounty) -> None:
    assert build_demo_county(2026) == county
    assert build_demo_county(7, patients=50) == build_demo_county(7, patients=50)


def test_different_seeds_give_different_patients(county: DemoCounty) -> None:
    other = build_demo_county(2027)
    assert other.patients != county.patients
    assert {p.id_number for p in other.patients} != {p.id_number for p in county.patients}
    # the layout stays put, so codes and usernames are stable across seeds
    assert other.facilities == county.facilities
    assert other.staff == county.staff


def test_default_today_is_fixed_not_the_clock(county: DemoCounty) -> None:
    assert build_demo_county(2026, today=TODAY) == county


def test_counts(county: DemoCounty) -> None:
    levels = Counter(r.level for r in county.regions)
    assert levels["province"] == levels["city"] == levels["county"] == 1
    assert 13 <= levels["township"] <= 17
    assert 190 <= levels["village"] <= 220
    kinds = Counter(f.kind for f in county.facilities)
    assert kinds["general_hospital"] == 1
    assert kinds["tcm_hospital"] == 1
    assert sum(f.tier == "county" for f in county.facilities) == 2
    assert kinds["township_health_centre"] == levels["township"]
    assert kinds["village_clinic"] == levels["village"] >= 190
    assert len(county.patients) == 3000
    assert len(build_demo_county(patients=10).patients) == 10
    assert build_demo_county(patients=0).patients == ()


def test_every_role_is_present(county: DemoCounty) -> None:
    roles = Counter(s.role for s in county.staff)
    assert set(roles) == {
        "village_doctor",
        "township_doctor",
        "specialist",
        "radiologist",
        "bureau_analyst",
        "admin",
    }
    kinds = Counter(f.kind for f in county.facilities)
    assert roles["village_doctor"] == kinds["village_clinic"]
    assert roles["township_doctor"] == 2 * kinds["township_health_centre"]
    assert roles["radiologist"] == 4
    assert roles["bureau_analyst"] == 2
    assert roles["admin"] == 1


def test_staff_belong_to_existing_facilities_and_departments(county: DemoCounty) -> None:
    facilities = {f.code: f for f in county.facilities}
    for member in county.staff:
        if member.role == "bureau_analyst":
            assert member.facility_code is None
            continue
        assert member.facility_code in facilities
        facility = facilities[member.facility_code]
        if member.department_code is not None:
            assert member.department_code in {d.code for d in facility.departments}
    by_role = {s.role: s for s in county.staff}
    assert by_role["admin"].facility_code == "QT-CPH"
    radiologists = [s for s in county.staff if s.role == "radiologist"]
    assert Counter(s.facility_code for s in radiologists) == {"QT-CPH": 3, "QT-TCM": 1}
    assert all(s.department_code == "radiology" for s in radiologists)
    clinical = {d.code for d in facilities["QT-CPH"].departments} - {"radiology", "laboratory"}
    specialist_departments = {s.department_code for s in county.staff if s.facility_code == "QT-CPH"}
    assert clinical <= specialist_departments


def test_every_patient_id_is_valid_and_agrees(county: DemoCounty) -> None:
    for patient in county.patients:
        parsed = parse_id_number(patient.id_number, today=TODAY)
        assert parsed.number == patient.id_number
        assert parsed.division_code == "331121"
        assert parsed.sex == patient.sex
        assert parsed.birth_date == patient.birth_date
        assert patient.birth_date < TODAY


def test_today_bounds_birth_dates() -> None:
    today = dt.date(2020, 2, 29)
    county = build_demo_county(5, patients=500, today=today)
    assert max(p.birth_date for p in county.patients) < today
    for patient in county.patients:
        assert parse_id_number(patient.id_number, today=today).birth_date == patient.birth_date


def test_identifiers_are_unique(county: DemoCounty) -> None:
    ids = [p.id_number for p in county.patients]
    phones = [p.phone for p in county.patients]
    usernames = [s.username for s in county.staff]
    assert len(set(ids)) == len(ids)
    assert len(set(phones)) == len(phones)
    assert len(set(usernames)) == len(usernames)
    assert all(MOBILE.match(phone) for phone in phones)
    assert all(re.fullmatch(r"[a-z0-9_]+", u) for u in usernames)
    codes = [f.code for f in county.facilities]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[A-Z0-9-]+", c) for c in codes)
    regions = [r.code for r in county.regions]
    assert len(set(regions)) == len(regions)
    for facility in county.facilities:
        departments = [d.code for d in facility.departments]
        assert len(set(departments)) == len(departments)


def test_regions_nest_with_parents_first(county: DemoCounty) -> None:
    seen: dict[str, str] = {}
    for region in county.regions:
        if region.parent_code is None:
            assert region.level == "province"
        else:
            assert region.parent_code in seen
            assert region.code.startswith(region.parent_code)
        seen[region.code] = region.level
    assert [r.code for r in county.regions[:3]] == ["33", "3311", "331121"]


def test_facilities_reference_existing_regions_and_parents_first(county: DemoCounty) -> None:
    regions = {r.code: r for r in county.regions}
    seen: dict[str, str] = {}
    expected_parent_kind = {
        "general_hospital": None,
        "tcm_hospital": None,
        "township_health_centre": "general_hospital",
        "village_clinic": "township_health_centre",
    }
    expected_region_level = {"county": "county", "township": "township", "village": "village"}
    for facility in county.facilities:
        assert regions[facility.region_code].level == expected_region_level[facility.tier]
        if facility.parent_code is None:
            assert expected_parent_kind[facility.kind] is None
        else:
            assert seen[facility.parent_code] == expected_parent_kind[facility.kind]
        seen[facility.code] = facility.kind
    facilities = {f.code: f for f in county.facilities}
    for clinic in (f for f in county.facilities if f.kind == "village_clinic"):
        # a clinic's centre is the one in the township that contains its village
        assert clinic.parent_code is not None
        centre = facilities[clinic.parent_code]
        assert regions[clinic.region_code].parent_code == centre.region_code


def test_facility_details(county: DemoCounty) -> None:
    facilities = {f.code: f for f in county.facilities}
    cph = facilities["QT-CPH"]
    assert cph.name == "青田县人民医院"
    assert {"pci_capable", "stroke_centre", "chest_pain_centre"} <= set(cph.flags)
    assert {"CT", "MR", "DX", "CR", "US"} <= set(cph.modalities)
    assert {"cardiology", "neurology", "endocrinology", "radiology", "general_practice"} <= {
        d.code for d in cph.departments
    }
    assert facilities["QT-TCM"].name == "青田县中医医院"
    assert facilities["QT-T01"].name == "温溪镇卫生院"
    for facility in county.facilities:
        assert facility.icd10_ranges
        assert all(re.fullmatch(r"[A-Z]\d\d(-[A-Z]\d\d)?", r) for r in facility.icd10_ranges)
        assert 27.8 < facility.latitude < 28.6
        assert 119.7 < facility.longitude < 120.6
        if facility.kind == "village_clinic":
            assert facility.modalities in {(), ("ECG",)}
            assert facility.flags == ()
            assert facility.name.endswith("村卫生室")
            assert re.fullmatch(r"QT-T\d\d-V\d{3}", facility.code)
        if facility.kind == "township_health_centre":
            assert facility.name.endswith("卫生院")
            assert {"general_practice", "tcm"} <= {d.code for d in facility.departments}


def test_names_are_chinese(county: DemoCounty) -> None:
    for region in county.regions:
        assert CJK.match(region.name)
    for facility in county.facilities:
        assert CJK.match(facility.name)
        for department in facility.departments:
            assert CJK.match(department.name_zh)
            assert department.name_en.isascii()
            assert department.code.isascii()
    full_names = [s.full_name for s in county.staff] + [p.full_name for p in county.patients]
    for full_name in full_names:
        assert CJK.match(full_name)
        assert 2 <= len(full_name) <= 3


def test_patients_are_spread_realistically(county: DemoCounty) -> None:
    facilities = {f.code: f for f in county.facilities}
    kinds = Counter(facilities[p.facility_code].kind for p in county.patients)
    assert set(kinds) == {"village_clinic", "township_health_centre"}
    assert kinds["village_clinic"] > 3 * kinds["township_health_centre"]
    ages = [(TODAY - p.birth_date).days / 365.25 for p in county.patients]
    assert any(age < 7 for age in ages)
    assert any(age < 18 for age in ages)
    assert any(age >= 80 for age in ages)
    assert 0.15 < sum(age >= 65 for age in ages) / len(ages) < 0.5
    sexes = Counter(p.sex for p in county.patients)
    assert 0.4 < sexes["female"] / len(county.patients) < 0.6
    surnames = Counter(p.full_name[0] for p in county.patients)
    assert len(surnames) >= 20
    assert surnames.most_common(1)[0][1] < 0.2 * len(county.patients)


def test_building_is_fast() -> None:
    start = time.perf_counter()
    build_demo_county(99, patients=3000)
    assert time.perf_counter() - start < 1.0


def test_negative_patient_count_is_refused() -> None:
    with pytest.raises(ValueError, match="patients"):
        build_demo_county(patients=-1)
