"""Clinical referral scenarios against the default policy (referral-rules-notes.md §3).

Each row is what a village doctor, township doctor or county specialist would try, and what the engine must
answer: the outcome and the reason code a dashboard or a reviewer would look for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib.resources import files

import pytest

from referral.policy import FactValue, load_default_policy, load_policy
from referral.rules import Decision, FacilityInfo, ReferralRequest, evaluate_referral, great_circle_km

TODAY = date(2026, 5, 1)
DEFAULT_TEXT = files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")
FIVE_CENTRES = frozenset(
    {"pci_capable", "stroke_centre", "trauma_centre", "maternal_critical_care", "neonatal_critical_care"}
)

# A small county: one village clinic under township 1, two township centres under the county people's hospital,
# the county TCM hospital without a cath lab, and a city hospital outside the county. The TCM hospital is the
# nearest county hospital to the village, the people's hospital the nearest PCI/stroke centre.
VILLAGE = FacilityInfo("v-lishu", "梨树村卫生室", "village", frozenset(), 24.800, 113.600, "t-dongxi")
TOWNSHIP = FacilityInfo("t-dongxi", "东溪镇卫生院", "township", frozenset(), 24.850, 113.650, "c-renmin")
TOWNSHIP_2 = FacilityInfo("t-nanshan", "南山镇卫生院", "township", frozenset(), 24.700, 113.500, "c-renmin")
COUNTY = FacilityInfo("c-renmin", "县人民医院", "county", FIVE_CENTRES, 24.950, 113.750, None)
COUNTY_TCM = FacilityInfo("c-tcm", "县中医院", "county", frozenset({"tcm"}), 24.760, 113.560, None)
CITY = FacilityInfo("m-central", "市中心医院", "city", FIVE_CENTRES | {"tcm"}, 25.300, 114.100, None)
FACILITIES = (VILLAGE, TOWNSHIP, TOWNSHIP_2, COUNTY, COUNTY_TCM, CITY)

STABLE_FOR_DOWN: Mapping[str, FactValue] = {
    "diagnosis_confirmed": True,
    "plan_suitable_for_primary": True,
    "stable": True,
    "complications_stable": True,
}


@dataclass(frozen=True)
class Case:
    source: FacilityInfo
    target: FacilityInfo | None
    icd10: tuple[str, ...]
    facts: Mapping[str, FactValue]
    outcome: str
    code: str
    rule: str | None = None
    direction: str | None = None
    priority: str | None = None
    green: bool | None = None
    skip: bool | None = None
    missing: tuple[str, ...] | None = None  # exactly these facts are named
    suggested: str | None = None
    requested_priority: str | None = None
    override: str | None = None


SCENARIOS = [
    # ---- Hypertension ---------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={
                "bp_sys": 150,
                "bp_dia": 95,
                "stable": False,
                "dyspnoea": False,
                "leg_oedema": False,
                "orthopnoea": False,
            },
            outcome="needs_override",
            code="skip-level",
            rule="CAP-BEYOND",
            direction="up",
            priority="routine",
            green=False,
            skip=True,
            missing=(),
        ),
        id="htn-routine-village-to-county-skips-tier",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 150, "bp_dia": 95, "stable": False},
            outcome="allowed",
            code="override-applied",
            override="患者在县医院有既往病历，要求复查",
        ),
        id="htn-routine-skip-with-written-override",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 150, "bp_dia": 95, "stable": False},
            outcome="needs_override",
            code="override-reason-too-short",
            override="要求",
        ),
        id="htn-override-reason-too-short",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 185, "bp_dia": 115, "severe_headache": True},
            outcome="allowed",
            code="emergency-green-channel",
            rule="HTN-EMERG-01",
            direction="up",
            priority="stat",
            green=True,
            skip=True,
        ),
        id="htn-emergency-185-115-headache-village-to-county",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 185, "bp_dia": 115, "severe_headache": True},
            outcome="allowed",
            code="priority-raised",
            rule="HTN-EMERG-01",
            priority="stat",
            requested_priority="routine",
        ),
        id="htn-emergency-requested-routine-is-raised-to-stat",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"bp_sys": 200, "bp_dia": 100, "vomiting": True},
            outcome="allowed",
            code="emergency-green-channel",
            rule="HTN-EMERG-01",
            priority="stat",
            skip=False,
        ),
        id="htn-emergency-vomiting-village-to-township",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"consciousness": "clouded"},
            outcome="allowed",
            code="emergency-green-channel",
            rule="HTN-EMERG-02",
            priority="stat",
        ),
        id="htn-clouded-consciousness",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 190, "bp_dia": 100, "chest_back_pain": True},
            outcome="allowed",
            code="green-channel",
            rule="HTN-EMERG-03",
        ),
        id="htn-raised-bp-with-chest-back-pain",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I11.0",),
            facts={"bp_sys": 160, "bp_dia": 95, "orthopnoea": True},
            outcome="allowed",
            code="green-channel",
            rule="HTN-EMERG-04",
            priority="stat",
        ),
        id="htn-heart-failure-signs-township-to-county",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"severe_headache": True, "stable": True},
            outcome="needs_override",
            code="missing-facts",
            missing=("bp_dia", "bp_sys"),
        ),
        id="htn-headache-without-bp-names-the-missing-bp",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"severe_headache": True, "stable": True},
            outcome="needs_override",
            code="skip-level",
            missing=("bp_dia", "bp_sys"),
            skip=True,
        ),
        id="htn-headache-without-bp-skip-level-names-bp",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"bp_sys": "high", "severe_headache": True, "stable": True},
            outcome="needs_override",
            code="fact-invalid",
            missing=("bp_dia", "bp_sys"),
        ),
        id="htn-invalid-bp-value-treated-as-missing",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I10",),
            facts={"n_antihypertensives": 3, "includes_diuretic": True, "bp_at_target": False},
            outcome="allowed",
            code="criterion-met",
            rule="HTN-FU-01",
            priority="routine",
            skip=False,
        ),
        id="htn-resistant-three-drugs-with-diuretic",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I10",),
            facts={"n_antihypertensives": 3, "bp_at_target": False},
            outcome="needs_override",
            code="no-criterion-matched",
            missing=("includes_diuretic",),
        ),
        id="htn-resistant-unknown-diuretic-is-asked-for",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 182, "bp_dia": 112, "persistent_after_short_term_treatment": True},
            outcome="allowed",
            code="criterion-met",
            rule="HTN-INIT-01",
        ),
        id="htn-initial-180-110-persisting",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I10",),
            facts={"htn_onset_age": 24},
            outcome="allowed",
            code="criterion-met",
            rule="HTN-SEC-01",
        ),
        id="htn-suspected-secondary-young-onset",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"pregnant": True, "bp_sys": 150, "bp_dia": 96},
            outcome="allowed",
            code="criterion-met",
            rule="HTN-PREG-01",
        ),
        id="htn-in-pregnancy-up",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"stable": True, "bp_sys": 128, "bp_dia": 78},
            outcome="needs_override",
            code="no-criterion-matched",
            direction="up",
            missing=(),
        ),
        id="htn-stable-controlled-stays-at-village",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={
                "stable": False,
                "bp_sys": 165,
                "bp_dia": 100,
                "dyspnoea": False,
                "leg_oedema": False,
                "orthopnoea": False,
            },
            outcome="allowed",
            code="beyond-capability",
            rule="CAP-BEYOND",
        ),
        id="htn-unstable-beyond-village-capability",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={"bp_sys": 128, "bp_dia": 78},
            outcome="needs_override",
            code="no-criterion-matched",
            missing=("stable",),
        ),
        id="htn-stability-unknown-is-asked-for",
    ),
    # ---- Chest pain / ACS ------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I21.0",),
            facts={},
            outcome="allowed",
            code="emergency-green-channel",
            rule="ACS-PCI-01",
            direction="up",
            priority="stat",
            green=True,
            skip=True,
        ),
        id="acs-stemi-village-to-pci-county-skips-tier",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("R07.4",),
            facts={"suspected_acs": True},
            outcome="allowed",
            code="emergency-green-channel",
            rule="ACS-PCI-01",
            priority="stat",
        ),
        id="acs-suspected-chest-pain-to-pci",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("R07.4",),
            facts={"chest_pain_minutes": 40, "nitro_relieved": False},
            outcome="allowed",
            code="green-channel",
            rule="ACS-PCI-01",
        ),
        id="acs-chest-pain-40min-nitro-unrelieved",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY_TCM,
            icd10=("I21.9",),
            facts={},
            outcome="blocked",
            code="target-lacks-capability",
            rule="ACS-PCI-01",
            suggested=COUNTY.id,
        ),
        id="acs-to-tcm-hospital-without-pci-blocked",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I20.0",),
            facts={},
            outcome="blocked",
            code="target-lacks-capability",
            suggested=COUNTY.id,
        ),
        id="acs-unstable-angina-to-township-blocked",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=None,
            icd10=("I21.9",),
            facts={},
            outcome="allowed",
            code="target-suggested",
            rule="ACS-PCI-01",
            suggested=COUNTY.id,
            priority="stat",
        ),
        id="acs-no-target-gets-nearest-pci",
    ),
    pytest.param(
        Case(
            source=COUNTY_TCM,
            target=COUNTY,
            icd10=("I21.0",),
            facts={},
            outcome="allowed",
            code="criterion-met",
            rule="ACS-PCI-01",
            direction="lateral",
            priority="stat",
        ),
        id="acs-county-tcm-to-county-pci-lateral",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("I25.1",),
            facts={"stable": True, "suspected_acs": False},
            outcome="needs_override",
            code="no-criterion-matched",
            missing=(),
        ),
        id="chd-stable-without-criterion",
    ),
    # ---- Stroke ----------------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I63.9",),
            facts={"onset_minutes": 120},
            outcome="allowed",
            code="emergency-green-channel",
            rule="STROKE-THROMB-01",
            priority="stat",
            green=True,
            skip=True,
        ),
        id="stroke-within-thrombolysis-window-to-stroke-centre",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY_TCM,
            icd10=("R29.8",),
            facts={"suspected_stroke": True, "onset_minutes": 90},
            outcome="blocked",
            code="target-lacks-capability",
            rule="STROKE-THROMB-01",
            suggested=COUNTY.id,
        ),
        id="stroke-in-window-to-hospital-without-stroke-centre",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I63.9",),
            facts={"suspected_stroke": True, "onset_minutes": 600},
            outcome="allowed",
            code="critical-direct-to-secondary",
            rule="STROKE-ACUTE-02",
            priority="urgent",
            green=False,
            skip=True,
        ),
        id="stroke-outside-window-still-direct-to-county",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("I63.9",),
            facts={"suspected_stroke": True},
            outcome="allowed",
            code="missing-facts",
            rule="CAP-BEYOND",
            missing=("onset_minutes",),
        ),
        id="stroke-onset-unknown-asks-for-onset-time",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=TOWNSHIP,
            icd10=("I69.3",),
            facts=STABLE_FOR_DOWN,
            outcome="allowed",
            code="criterion-met",
            rule="DOWN-STABLE-01",
            direction="down",
            skip=False,
        ),
        id="post-stroke-stable-county-to-township",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=TOWNSHIP,
            icd10=("I69.3",),
            facts={**STABLE_FOR_DOWN, "stable": "yes"},
            outcome="needs_override",
            code="no-criterion-matched",
            direction="down",
            missing=("stable",),
        ),
        id="post-stroke-stability-not-recorded",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=TOWNSHIP,
            icd10=("I63.9",),
            facts={"discharge_criteria_met": True, "rehab_needed": True, "stable": True},
            outcome="allowed",
            code="criterion-met",
            rule="REHAB-DOWN-01",
            direction="down",
        ),
        id="stroke-rehab-down-after-acute-phase",
    ),
    # ---- Downward --------------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=COUNTY,
            target=VILLAGE,
            icd10=("I10",),
            facts={"diagnosis_confirmed": True, "long_term_plan_set": True, "stable": True, "bp_at_target": True},
            outcome="allowed",
            code="skip-level-permitted",
            rule="DOWN-VILLAGE-01",
            direction="down",
            skip=True,
        ),
        id="htn-controlled-county-to-village-long-term",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=VILLAGE,
            icd10=("I10",),
            facts={"diagnosis_confirmed": True, "long_term_plan_set": True, "stable": True, "bp_at_target": False},
            outcome="needs_override",
            code="no-criterion-matched",
            direction="down",
        ),
        id="htn-bp-not-at-target-stays-at-township",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=TOWNSHIP,
            icd10=("I10",),
            facts={**STABLE_FOR_DOWN, "bp_sys": 190, "bp_dia": 120, "severe_headache": True},
            outcome="blocked",
            code="unstable-for-down",
            rule="HTN-EMERG-01",
            direction="down",
        ),
        id="down-referral-of-emergency-blocked",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=VILLAGE,
            icd10=("I63.9",),
            facts={"diagnosis_confirmed": True, "long_term_plan_set": True, "stable": True},
            outcome="needs_override",
            code="target-tier-cannot-treat",
            direction="down",
        ),
        id="acute-infarct-code-not-managed-at-village",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=VILLAGE,
            icd10=("I69.3",),
            facts=STABLE_FOR_DOWN,
            outcome="needs_override",
            code="down-tier-not-covered",
            direction="down",
            skip=True,
        ),
        id="township-criteria-do-not-cover-village",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=None,
            icd10=("E11.9",),
            facts={
                "plan_suitable_for_primary": True,
                "glucose_stable": True,
                "stable": True,
                "home_facility_id": TOWNSHIP_2.id,
            },
            outcome="allowed",
            code="target-suggested",
            rule="DM-DOWN-01",
            direction="down",
            suggested=TOWNSHIP_2.id,
        ),
        id="dm-down-without-target-goes-to-home-township",
    ),
    # ---- Diabetes --------------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E11.9",),
            facts={"pregnant": True},
            outcome="allowed",
            code="criterion-met",
            rule="DM-SPEC-01",
            direction="up",
        ),
        id="dm-pregnant-township-to-county",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("E11.9",),
            facts={"pregnant": True},
            outcome="allowed",
            code="criterion-met",
            rule="DM-SPEC-01",
            direction="up",
            skip=False,
        ),
        id="dm-pregnant-village-to-township",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E10.9",),
            facts={"age": 12},
            outcome="allowed",
            code="criterion-met",
            rule="DM-SPEC-01",
        ),
        id="dm-child-under-18-township-to-county",
    ),
    pytest.param(
        # The township's disease list has type 2 (E11) only: type 1 diabetes cannot be sent there.
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("E10.9",),
            facts={"age": 12},
            outcome="needs_override",
            code="target-tier-cannot-treat",
            rule="DM-SPEC-01",
        ),
        id="type-1-diabetes-child-to-township-outside-its-list",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("E11.1",),
            facts={},
            outcome="allowed",
            code="critical-direct-to-secondary",
            rule="DM-ACUTE-01",
            priority="urgent",
            green=False,
            skip=True,
        ),
        id="dm-ketoacidosis-skips-to-county",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E11.9",),
            facts={"glucose": 22.4},
            outcome="allowed",
            code="criterion-met",
            rule="DM-ACUTE-01",
            priority="urgent",
        ),
        id="dm-glucose-above-16-7",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E11.9",),
            facts={"months_uncontrolled": 4},
            outcome="allowed",
            code="criterion-met",
            rule="DM-CTRL-01",
            priority="routine",
        ),
        id="dm-uncontrolled-for-months",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E11.5",),
            facts={"diabetic_foot_ulcer": True},
            outcome="allowed",
            code="criterion-met",
            rule="DM-COMP-01",
            priority="urgent",
        ),
        id="dm-foot-ulcer",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("E11.2",),
            facts={"egfr": 42},
            outcome="allowed",
            code="criterion-met",
            rule="DM-COMP-01",
        ),
        id="dm-egfr-below-60",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=TOWNSHIP,
            icd10=("E11.9",),
            facts={"plan_suitable_for_primary": True, "glucose_stable": True, "stable": True},
            outcome="allowed",
            code="criterion-met",
            rule="DM-DOWN-01",
            direction="down",
        ),
        id="dm-stable-down-to-township",
    ),
    # ---- COPD ------------------------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("J44.1",),
            facts={"spo2": 93, "rr": 22},
            outcome="allowed",
            code="criterion-met",
            rule="COPD-AE-01",
            priority="urgent",
        ),
        id="copd-exacerbation-village-to-township",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("J44.1",),
            facts={"spo2": 85, "rr": 26},
            outcome="allowed",
            code="emergency-green-channel",
            rule="EMG-RESP-01",
            priority="stat",
            skip=True,
        ),
        id="copd-hypoxaemia-skips-to-county",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("J44.9",),
            facts={"stable": True, "spo2": 95, "rr": 18},
            outcome="needs_override",
            code="skip-level",
            skip=True,
        ),
        id="copd-stable-village-to-county-no-criterion",
    ),
    # ---- Pregnancy and newborns ------------------------------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("O15.0",),
            facts={"pregnant": True},
            outcome="allowed",
            code="emergency-green-channel",
            rule="OB-CRIT-01",
            priority="stat",
            skip=True,
        ),
        id="eclampsia-to-critical-maternal-centre",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY_TCM,
            icd10=("O72.1",),
            facts={},
            outcome="blocked",
            code="target-lacks-capability",
            rule="OB-CRIT-01",
            suggested=COUNTY.id,
        ),
        id="postpartum-haemorrhage-to-tcm-blocked",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("P22.0",),
            facts={"age": 0},
            outcome="allowed",
            code="green-channel",
            rule="NEO-CRIT-01",
        ),
        id="newborn-respiratory-distress",
    ),
    # ---- Paediatric and generic emergency triggers ----------------------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("R56.0",),
            facts={"age": 2, "temp": 40.1, "convulsions": True},
            outcome="allowed",
            code="emergency-green-channel",
            rule="EMG-FEVER-01",
            priority="stat",
        ),
        id="child-high-fever-with-convulsions",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("S06.0",),
            facts={"gcs": 9},
            outcome="allowed",
            code="emergency-green-channel",
            rule="EMG-GCS-01",
        ),
        id="head-injury-gcs-9",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=COUNTY,
            icd10=("T07",),
            facts={"iss": 22},
            outcome="allowed",
            code="green-channel",
            rule="EMG-TRAUMA-01",
        ),
        id="major-trauma-to-trauma-centre",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("K92.2",),
            facts={"gi_bleeding": True, "bp_sys": 84},
            outcome="allowed",
            code="emergency-green-channel",
            rule="EMG-GIB-01",
        ),
        id="gi-bleeding-with-hypotension",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("R04.2",),
            facts={"haemoptysis_ml_24h": 600},
            outcome="allowed",
            code="green-channel",
            rule="EMG-HAEMOPTYSIS-01",
        ),
        id="massive-haemoptysis",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=None,
            icd10=("R57.9",),
            facts={"bp_sys": 82, "apathy": True},
            outcome="allowed",
            code="target-suggested",
            rule="EMG-SHOCK-01",
            suggested=COUNTY_TCM.id,
            priority="stat",
        ),
        id="shock-without-target-goes-to-nearest-county-hospital",
    ),
    # ---- Exceptions, lateral, out of county, malformed requests ---------------------------------------------
    pytest.param(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"stable": True, "patient_choice_self_pay": True},
            outcome="allowed",
            code="patient-choice-self-pay",
            rule="patient-choice-self-pay",
            skip=True,
        ),
        id="patient-choice-bypass-allowed-with-insurance-penalty",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=TOWNSHIP_2,
            icd10=("I10",),
            facts={"stable": False},
            outcome="needs_override",
            code="no-criterion-matched",
            direction="lateral",
        ),
        id="township-to-township-without-reason",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=COUNTY_TCM,
            icd10=("I10",),
            facts={"tcm_needs_unmet": True},
            outcome="allowed",
            code="criterion-met",
            rule="LAT-TCM-01",
            direction="lateral",
        ),
        id="county-to-county-tcm-for-tcm-care",
    ),
    pytest.param(
        Case(
            source=TOWNSHIP,
            target=TOWNSHIP_2,
            icd10=("I10",),
            facts={"tcm_needs_unmet": True},
            outcome="needs_override",
            code="target-lacks-capability",
            direction="lateral",
        ),
        id="tcm-need-to-township-without-tcm",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=CITY,
            icd10=("C22.0",),
            facts={},
            outcome="allowed",
            code="beyond-capability",
            rule="CAP-BEYOND",
            direction="up",
        ),
        id="liver-cancer-county-to-city",
    ),
    pytest.param(
        Case(
            source=COUNTY,
            target=CITY,
            icd10=("I10",),
            facts={"bp_sys": 150, "bp_dia": 90, "dyspnoea": False, "leg_oedema": False, "orthopnoea": False},
            outcome="needs_override",
            code="no-criterion-matched",
            direction="up",
        ),
        id="routine-htn-county-to-city",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("C22.0",),
            facts={},
            outcome="needs_override",
            code="target-tier-cannot-treat",
            rule="CAP-BEYOND",
            suggested=CITY.id,
        ),
        id="cancer-to-township-that-cannot-treat-it",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=(),
            facts={},
            outcome="needs_override",
            code="no-criterion-matched",
            missing=("icd10",),
        ),
        id="no-diagnosis-asks-for-icd10",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=TOWNSHIP,
            icd10=("高血压", "I10"),
            facts={"stable": False},
            outcome="allowed",
            code="icd10-invalid",
            rule="CAP-BEYOND",
        ),
        id="unparseable-code-ignored-with-a-warning",
    ),
    pytest.param(
        Case(source=TOWNSHIP, target=TOWNSHIP, icd10=("I10",), facts={}, outcome="blocked", code="same-facility"),
        id="referral-to-itself-blocked",
    ),
    pytest.param(
        Case(
            source=VILLAGE,
            target=FacilityInfo("x-1", "民营诊所", "private_clinic", frozenset(), 24.8, 113.6, None),
            icd10=("I10",),
            facts={},
            outcome="blocked",
            code="unknown-tier",
        ),
        id="unknown-tier-blocked",
    ),
]


def decide(case: Case) -> Decision:
    request = ReferralRequest(
        from_facility=case.source,
        to_facility=case.target,
        icd10=case.icd10,
        priority=case.requested_priority,
        facts=case.facts,
        override_reason=case.override,
    )
    return evaluate_referral(load_default_policy(), request, candidates=FACILITIES, today=TODAY)


def test_the_table_has_at_least_forty_scenarios() -> None:
    assert len(SCENARIOS) >= 40


@pytest.mark.parametrize("case", SCENARIOS)
def test_scenario(case: Case) -> None:
    decision = decide(case)
    summary = (decision.outcome, decision.reason_codes, [m.id for m in decision.matched])
    assert decision.outcome == case.outcome, summary
    assert case.code in decision.reason_codes, summary
    if case.rule is not None:
        assert case.rule in [m.id for m in decision.matched], summary
    if case.direction is not None:
        assert decision.direction == case.direction
    if case.priority is not None:
        assert decision.priority == case.priority
    if case.green is not None:
        assert decision.green_channel is case.green
    if case.skip is not None:
        assert decision.skip_level is case.skip
    if case.missing is not None:
        assert tuple(m.name for m in decision.missing_facts) == case.missing
    if case.suggested is not None:
        assert decision.suggested_target is not None
        assert decision.suggested_target.facility_id == case.suggested
    # Invariants of every decision.
    assert decision.policy_version == "default@2026.1"
    assert decision.compliant is (decision.outcome == "allowed" and not decision.override_applied)
    assert (decision.valid_until is None) is (decision.outcome == "blocked")
    for matched in decision.matched:
        assert matched.source
        assert matched.reason_zh
        assert matched.reason_en
    for failed in decision.failed:
        assert failed.reason_zh
        assert failed.reason_en


# -- details the clinician and the insurer see -----------------------------------------------------------------


def test_emergency_decision_details() -> None:
    decision = decide(
        Case(
            source=VILLAGE,
            target=COUNTY,
            icd10=("I10",),
            facts={"bp_sys": 185, "bp_dia": 115, "severe_headache": True},
            outcome="allowed",
            code="",
        )
    )
    assert decision.compliant
    assert decision.sla.ack_within_minutes == 30
    assert decision.sla.escalate_to == "duty_officer"
    assert decision.sla.followup_days == 14  # hypertension: follow-up within 2 weeks
    assert decision.insurance.validity_window == "primary_first"
    assert decision.valid_until == date(2026, 10, 28)  # 180 days
    assert decision.insurance.deductible_continuous
    assert not decision.insurance.penalty_applies
    assert decision.insurance.payout_delta_pct == 3
    assert decision.suggested_target is None  # the chosen hospital is fine
    assert decision.missing_facts == ()


def test_override_is_allowed_but_non_compliant_and_costs_the_patient() -> None:
    decision = decide(
        Case(VILLAGE, COUNTY, ("I10",), {"bp_sys": 150, "stable": False}, "", "", override="家属要求县医院诊治")
    )
    assert decision.outcome == "allowed"
    assert decision.override_applied
    assert not decision.compliant
    assert decision.insurance.penalty_applies
    assert not decision.insurance.deductible_continuous
    assert decision.insurance.payout_delta_pct == -20
    assert "-20" in decision.insurance.note_en
    assert "-20" in decision.insurance.note_zh


def test_patient_choice_counts_as_compliant_but_pays_the_penalty() -> None:
    decision = decide(Case(VILLAGE, COUNTY, ("I10",), {"stable": True, "patient_choice_self_pay": True}, "", ""))
    assert decision.compliant
    assert decision.insurance.penalty_applies
    assert decision.insurance.payout_delta_pct == -20


def test_blocked_acs_points_to_the_nearest_pci_hospital() -> None:
    decision = decide(Case(VILLAGE, COUNTY_TCM, ("I21.0",), {}, "", ""))
    target = decision.suggested_target
    assert target is not None
    assert target.facility_id == COUNTY.id
    assert target.basis == "nearest-capable"
    assert target.required_flags == ("pci_capable",)
    expected_km = great_circle_km(VILLAGE.latitude, VILLAGE.longitude, COUNTY.latitude, COUNTY.longitude)
    assert target.distance_km == pytest.approx(expected_km, abs=0.05)
    # The TCM hospital is nearer, but it has no cath lab.
    assert great_circle_km(VILLAGE.latitude, VILLAGE.longitude, COUNTY_TCM.latitude, COUNTY_TCM.longitude) < (
        expected_km
    )
    assert "PCI" in target.reason_en
    assert "PCI" in target.reason_zh
    assert decision.valid_until is None
    assert decision.priority == "stat"


def test_block_becomes_override_when_no_candidate_has_the_capability() -> None:
    request = ReferralRequest(VILLAGE, COUNTY_TCM, ("I21.0",), None, {}, None)
    decision = evaluate_referral(
        load_default_policy(), request, candidates=(VILLAGE, TOWNSHIP, COUNTY_TCM), today=TODAY
    )
    assert decision.outcome == "needs_override"
    assert "target-lacks-capability" in decision.reason_codes


def test_routine_up_without_target_suggests_the_parent_facility() -> None:
    request = ReferralRequest(VILLAGE, None, ("I10",), None, {"stable": False, "bp_sys": 130}, None)
    decision = evaluate_referral(load_default_policy(), request, candidates=FACILITIES, today=TODAY)
    assert decision.outcome == "allowed"
    assert decision.suggested_target is not None
    assert decision.suggested_target.facility_id == TOWNSHIP.id
    assert decision.suggested_target.basis == "parent-facility"


def test_no_target_and_no_candidates_is_blocked() -> None:
    request = ReferralRequest(VILLAGE, None, ("I21.0",), None, {}, None)
    decision = evaluate_referral(load_default_policy(), request, today=TODAY)
    assert decision.outcome == "blocked"
    assert "target-missing" in decision.reason_codes
    assert decision.priority == "stat"  # still tells the caller it is an emergency


def test_down_referral_insurance_and_validity() -> None:
    decision = decide(Case(COUNTY, TOWNSHIP, ("I69.3",), STABLE_FOR_DOWN, "", ""))
    assert decision.insurance.validity_window == "outpatient"
    assert decision.valid_until == date(2026, 5, 31)
    assert decision.insurance.no_new_deductible_same_episode
    assert decision.sla.followup_days == 7


def test_out_of_county_windows() -> None:
    cancer = decide(Case(COUNTY, CITY, ("C22.0",), {}, "", ""))
    assert cancer.insurance.validity_window == "long_term_out_of_county"
    assert cancer.insurance.validity_days == 365
    fracture = decide(Case(COUNTY, CITY, ("S72.0",), {"iss": 18}, "", ""))
    assert fracture.insurance.validity_window == "out_of_county_inpatient"


def test_missing_fact_carries_labels_and_the_rules_that_need_it() -> None:
    decision = decide(Case(VILLAGE, TOWNSHIP, ("I10",), {"severe_headache": True, "stable": True}, "", ""))
    by_name = {m.name: m for m in decision.missing_facts}
    assert by_name["bp_sys"].label_zh == "收缩压"
    assert by_name["bp_sys"].label_en == "systolic blood pressure"
    assert "HTN-EMERG-01" in by_name["bp_sys"].rule_ids


def test_facts_the_policy_does_not_know_are_reported_and_ignored() -> None:
    decision = decide(Case(VILLAGE, TOWNSHIP, ("I10",), {"stable": False, "shoe_size": 42}, "", ""))
    assert decision.outcome == "allowed"
    assert decision.ignored_facts == ("shoe_size",)


def test_evaluation_does_not_parse_the_policy_again(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_default_policy()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the policy was parsed during evaluation")

    monkeypatch.setattr("referral.policy.yaml.SafeLoader", refuse)
    monkeypatch.setattr("referral.policy.Policy.model_validate", refuse)
    request = ReferralRequest(VILLAGE, COUNTY, ("I21.0",), None, {}, None)
    assert evaluate_referral(policy, request, candidates=FACILITIES, today=TODAY).outcome == "allowed"


def test_facility_capability_override_from_the_policy() -> None:
    """A county may narrow one facility's disease list: this township does not take stroke patients."""
    text = DEFAULT_TEXT.replace(
        "  stable_fact: stable\n",
        "  stable_fact: stable\n  facilities:\n    t-nanshan: {treat: [I10-I15], source: 本县病种目录（测试）}\n",
        1,
    )
    policy = load_policy(text)
    facts = {
        "diagnosis_confirmed": True,
        "plan_suitable_for_primary": True,
        "stable": True,
        "complications_stable": True,
    }
    to_nanshan = ReferralRequest(COUNTY, TOWNSHIP_2, ("I69.3",), None, facts, None)
    to_dongxi = ReferralRequest(COUNTY, TOWNSHIP, ("I69.3",), None, facts, None)
    assert evaluate_referral(policy, to_nanshan, candidates=FACILITIES, today=TODAY).outcome == "needs_override"
    assert evaluate_referral(policy, to_dongxi, candidates=FACILITIES, today=TODAY).outcome == "allowed"
