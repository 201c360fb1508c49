"""The referral rules engine: one pure function from (policy, request, candidates, today) to a :class:`Decision`.

Semantics (referral-rules-notes.md §3; every threshold lives in the policy, not here):

* **Direction** comes from the tier levels of the two facilities: to a more central tier is ``up`` (上转), to a
  less central one ``down`` (下转), same tier ``lateral`` (平转). Skipping a tier (village → county) is
  ``skip_level``.
* **Up** needs a reason: an emergency rule, an upward rule, a conditional exception that waives criteria, or the
  diagnosis lying outside what the referring tier/facility treats (``beyond-capability``, from the policy's
  capability lists: 基层首诊 then refer what cannot be handled, notes §3.2). Without one the referral
  ``needs_override``. A skip-level referral needs a matched rule with ``allow_skip_level`` or an exception with
  ``skips_tier_check`` (急危重症 → 二级以上, 70号; notes §3.5); otherwise ``needs_override``.
* **Down** needs a downward rule whose ``target_tiers`` include the receiving tier, and the receiving tier must
  treat the diagnosis (or manage it while ``stable``). A patient who meets an emergency rule is never sent down:
  ``blocked``.
* **Lateral** needs a lateral rule, or an emergency/upward rule whose required capability the target has and
  the referring facility lacks (e.g. county TCM hospital → county PCI centre for ACS).
* **Capability**: a matched rule with ``target_capability`` (e.g. ACS → ``pci_capable``) fails when the target
  lacks the flag: ``blocked`` or ``needs_override`` as the rule says. A block is only kept when some candidate
  has the flag (the suggested target); with nowhere better to send the patient it is downgraded to
  ``needs_override`` rather than leaving the doctor with no way forward.
* **Override**: ``needs_override`` plus a written ``override_reason`` of at least the policy's minimum length
  becomes ``allowed`` with ``override_applied`` and ``compliant=False``. ``blocked`` cannot be overridden.
* **Three-valued logic**: an absent or invalid fact makes a condition unknown, and unknown never matches.
  ``missing_facts`` names the facts of rules that came out unknown, *had evidence for them* (a recorded finding
  of the rule that held, such as a symptom or a reading; the diagnosis alone is not evidence) and would change
  the decision if they matched (raise the priority, open the green channel, or clear a failed check). So
  "severe headache, no BP" asks for the BP, while a bare hypertension code does not ask for every finding
  of every hypertension rule, and pure "any of these vital signs" triggers never ask for all vital signs.
  On the way down, emergency rules left unknown are not asked about (the downward rules require ``stable``).
* **Priority** is the most urgent of the requested priority and the matched rules' priorities.
* **Suggested target**: computed from ``candidates`` and shown when no target was given or the requested one
  does not pass cleanly (blocked, needs override, override applied); None when the request is fine as it is.
* **Insurance** (notes §3.6): a compliant referral gets the continuous deductible and the referred bonus; a
  non-compliant one (override) or an exception with ``insurance_penalty`` is treated as unreferred care. The
  validity window: out-of-county target → out-of-county window (long-term conditions get the long one); up from
  a primary tier → primary-first; otherwise the outpatient inter-hospital window.

Performance: the policy is compiled once (:func:`referral.policy.load_policy`); an evaluation runs closures,
skips rules none of whose facts are recorded (provably unknown), evaluates only the sections its direction
needs, computes the suggestion lazily and memoises per-policy texts (insurance, SLA, labels) and distances.
``loadtests/bench_referral_rules.py`` measures it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Final, Literal

from referral.policy import (
    BUILTIN_FACTS,
    PRIORITIES,
    PRIORITY_RANK,
    CompiledCondition,
    CompiledException,
    CompiledPolicy,
    CompiledRule,
    FactEnv,
    FactValue,
    MatchedRule,
    Priority,
    TierInfo,
    icd10_key,
)

__all__ = [
    "Decision",
    "Direction",
    "FacilityInfo",
    "FailedCheck",
    "InsuranceConsequence",
    "MatchedRule",
    "MissingFact",
    "Outcome",
    "ReasonCode",
    "ReferralRequest",
    "SlaTerms",
    "SuggestedTarget",
    "evaluate_referral",
    "great_circle_km",
]

Outcome = Literal["allowed", "needs_override", "blocked"]
Direction = Literal["up", "down", "lateral"]
Severity = Literal["blocked", "needs_override", "info"]

_EARTH_RADIUS_KM: Final = 6371.0088  # IUGG mean Earth radius


class ReasonCode(StrEnum):
    """Stable machine codes of a decision; exception codes from the policy (e.g. ``emergency-green-channel``)
    are added to :attr:`Decision.reason_codes` next to these (notes §3.5: record the exception as a reason code).
    """

    CRITERION_MET = "criterion-met"
    BEYOND_CAPABILITY = "beyond-capability"
    GREEN_CHANNEL = "green-channel"
    SKIP_LEVEL_PERMITTED = "skip-level-permitted"
    SKIP_LEVEL = "skip-level"
    NO_CRITERION = "no-criterion-matched"
    DOWN_TIER_NOT_COVERED = "down-tier-not-covered"
    TARGET_LACKS_CAPABILITY = "target-lacks-capability"
    TARGET_TIER_CANNOT_TREAT = "target-tier-cannot-treat"
    UNSTABLE_FOR_DOWN = "unstable-for-down"
    SAME_FACILITY = "same-facility"
    UNKNOWN_TIER = "unknown-tier"
    TARGET_MISSING = "target-missing"
    TARGET_SUGGESTED = "target-suggested"
    OVERRIDE_APPLIED = "override-applied"
    OVERRIDE_REASON_TOO_SHORT = "override-reason-too-short"
    PRIORITY_RAISED = "priority-raised"
    PRIORITY_INVALID = "priority-invalid"
    FACT_INVALID = "fact-invalid"
    ICD10_INVALID = "icd10-invalid"
    MISSING_FACTS = "missing-facts"


# ---------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FacilityInfo:
    """A facility as the engine needs it; ``tier`` is a tier code of the policy (village … province)."""

    id: str
    name: str
    tier: str
    flags: frozenset[str]
    latitude: float
    longitude: float
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReferralRequest:
    """A proposed referral. ``to_facility=None`` asks the engine to suggest the target."""

    from_facility: FacilityInfo
    to_facility: FacilityInfo | None
    icd10: tuple[str, ...]
    priority: str | None
    facts: Mapping[str, FactValue]
    override_reason: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedCheck:
    code: str
    reason_zh: str
    reason_en: str
    severity: Severity
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class MissingFact:
    """A fact not recorded (or invalid) that could change the decision, and the rules that need it."""

    name: str
    label_zh: str
    label_en: str
    rule_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SuggestedTarget:
    facility_id: str
    facility_name: str
    distance_km: float
    basis: str
    reason_zh: str
    reason_en: str
    required_flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InsuranceConsequence:
    """What the referral means for the patient's insurance (notes §3.6; values from the policy)."""

    validity_window: str
    validity_days: int
    deductible_continuous: bool
    no_new_deductible_same_episode: bool
    penalty_applies: bool
    payout_delta_pct: float
    note_zh: str
    note_en: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SlaTerms:
    """How fast the receiver must acknowledge, whom to escalate to, and when to follow up (notes §3.7)."""

    ack_within_minutes: int
    escalate_to: str
    scan_every_minutes: int
    followup_days: int


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    #: None only when a tier is unknown to the policy or no target could be found.
    direction: Direction | None
    skip_level: bool
    compliant: bool
    override_applied: bool
    matched: tuple[MatchedRule, ...]
    failed: tuple[FailedCheck, ...]
    missing_facts: tuple[MissingFact, ...]
    suggested_target: SuggestedTarget | None
    priority: Priority
    green_channel: bool
    insurance: InsuranceConsequence
    #: Last day the referral may be used; None when blocked.
    valid_until: date | None
    sla: SlaTerms
    policy_version: str
    reason_codes: tuple[str, ...]
    #: Facts in the request that the policy does not declare (they had no effect).
    ignored_facts: tuple[str, ...] = ()

    @property
    def suggested_target_id(self) -> str | None:
        return None if self.suggested_target is None else self.suggested_target.facility_id


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------

_CHECK_TEXT: Final[Mapping[str, tuple[str, str]]] = {
    ReasonCode.NO_CRITERION: (
        "未满足任何{direction_zh}转诊标准",
        "no {direction_en} referral criterion is met",
    ),
    ReasonCode.SKIP_LEVEL: (
        "越级转诊（{from_zh}→{to_zh}）且无允许越级的例外",
        "skips a tier ({from_en} → {to_en}) and no exception permits it",
    ),
    ReasonCode.DOWN_TIER_NOT_COVERED: (
        "满足的下转标准不适用于{to_zh}",
        "the downward criteria met do not cover a {to_en}",
    ),
    ReasonCode.TARGET_LACKS_CAPABILITY: (
        "接收机构不具备所需能力：{flag_zh}",
        "the receiving facility lacks the required capability: {flag_en}",
    ),
    ReasonCode.TARGET_TIER_CANNOT_TREAT: (
        "接收机构的诊疗范围不包括该诊断",
        "the receiving facility's scope does not cover this diagnosis",
    ),
    ReasonCode.UNSTABLE_FOR_DOWN: (
        "患者符合急诊转诊指征，不能下转",
        "the patient meets emergency criteria and cannot be referred down",
    ),
    ReasonCode.SAME_FACILITY: ("转出与接收为同一机构", "referring and receiving facility are the same"),
    ReasonCode.UNKNOWN_TIER: ("机构层级“{tier}”未在规则中定义", "facility tier '{tier}' is not in the policy"),
    ReasonCode.TARGET_MISSING: (
        "未指定接收机构，且没有合适的候选机构",
        "no receiving facility given and no suitable candidate found",
    ),
    ReasonCode.OVERRIDE_REASON_TOO_SHORT: (
        "越权理由过短（至少{chars}个字）",
        "override reason too short (at least {chars} characters)",
    ),
    ReasonCode.PRIORITY_INVALID: ("无法识别的优先级“{value}”", "unknown priority '{value}'"),
    ReasonCode.FACT_INVALID: (
        "事实“{fact}”的值无效，按未记录处理",
        "fact '{fact}' has an invalid value and is ignored",
    ),
    ReasonCode.ICD10_INVALID: ("无法识别的ICD-10编码“{icd}”", "unrecognised ICD-10 code '{icd}'"),
}

_DIRECTION_TEXT: Final[Mapping[str, tuple[str, str]]] = {
    "up": ("上转", "upward"),
    "down": ("下转", "downward"),
    "lateral": ("平转", "lateral"),
}


def _check(code: ReasonCode, severity: Severity, rule_id: str | None = None, **params: object) -> FailedCheck:
    zh, en = _CHECK_TEXT[code]
    return FailedCheck(code, zh.format(**params), en.format(**params), severity, rule_id)


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres (memoised: a community's facilities do not move between calls)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lon2 - lon1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _distance(a: FacilityInfo, b: FacilityInfo) -> float:
    return great_circle_km(a.latitude, a.longitude, b.latitude, b.longitude)


def _build_env(
    policy: CompiledPolicy, request: ReferralRequest, failed: list[FailedCheck]
) -> tuple[FactEnv, list[str]]:
    nums: dict[str, float] = {}
    bools: dict[str, bool] = {}
    strs: dict[str, str] = {}
    present: set[str] = set()
    ignored: list[str] = []
    specs = policy.facts
    for name, value in request.facts.items():
        spec = specs.get(name)
        if spec is None or spec.builtin:
            ignored.append(name)
            continue
        if spec.type == "number":
            if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
                number = float(value)
                if (spec.min is None or number >= spec.min) and (spec.max is None or number <= spec.max):
                    nums[name] = number
                    present.add(name)
                    continue
        elif spec.type == "boolean":
            if type(value) is bool:
                bools[name] = value
                present.add(name)
                continue
        elif isinstance(value, str) and (spec.values is None or value in spec.values):
            strs[name] = value
            present.add(name)
            continue
        failed.append(_check(ReasonCode.FACT_INVALID, "info", fact=name))
    keys: list[int] = []
    for code in request.icd10:
        key = icd10_key(code)
        if key is None:
            failed.append(_check(ReasonCode.ICD10_INVALID, "info", icd=code))
        else:
            keys.append(key)
    strs["from_tier"] = request.from_facility.tier
    return FactEnv(nums, bools, strs, tuple(keys), present), ignored


def _run(rules: tuple[CompiledRule, ...], env: FactEnv) -> tuple[list[CompiledRule], list[CompiledRule]]:
    hits: list[CompiledRule] = []
    unknown: list[CompiledRule] = []
    present = env.present
    for rule in rules:
        if rule.unknown_without_facts and rule.facts.isdisjoint(present):
            # None of its facts is recorded: the answer is "unknown" without calling the condition.
            unknown.append(rule)
            continue
        result = rule.condition.evaluate(env)
        if result:
            hits.append(rule)
        elif result is None:
            unknown.append(rule)
    return hits, unknown


def _coverage(policy: CompiledPolicy, facility: FacilityInfo, env: FactEnv) -> bool | None:
    """Whether ``facility`` covers every diagnosis of the request (unknown when it hinges on stability)."""
    capability = policy.capability_for(facility.id, facility.tier)
    if capability is None or not env.codes:
        return None
    stable = env.bools.get(policy.stable_fact)
    unknown = False
    for key in env.codes:
        covered = capability.covers(key, stable)
        if covered is False:
            return False
        if covered is None:
            unknown = True
    return None if unknown else True


def _explain_unknown(condition: CompiledCondition, env: FactEnv) -> tuple[bool | None, set[str], bool]:
    """Re-walk a condition: its value, the missing facts that leave it unknown, and whether any leaf held."""
    if condition.kind == "leaf":
        result = condition.evaluate(env)
        if result is None:
            return None, {condition.fact or ""}, False
        # The diagnosis gate and the tiers are not evidence: every hypertensive patient would otherwise be asked
        # for every hypertension finding. A recorded finding that holds (a symptom, a reading) is.
        return result, set(), result and condition.fact not in BUILTIN_FACTS
    if condition.kind == "not":
        result, missing, _ = _explain_unknown(condition.children[0], env)
        # A leaf that holds under ``not`` argues against the match, so it is no evidence.
        return (None if result is None else not result), missing, result is False
    results = [_explain_unknown(child, env) for child in condition.children]
    if condition.kind == "all":
        if any(result is False for result, _, _ in results):
            return False, set(), False
        missing = set().union(*(m for result, m, _ in results if result is None))
        evidence = any(ev for _, _, ev in results)
        return (None if missing else True), missing, evidence
    if any(result is True for result, _, _ in results):
        return True, set(), True
    missing = set().union(*(m for result, m, _ in results if result is None))
    evidence = any(ev for result, _, ev in results if result is None)
    return (None if missing else False), missing, evidence


# ---------------------------------------------------------------------------------------------------------------
# Target suggestion
# ---------------------------------------------------------------------------------------------------------------


def _suggest(
    policy: CompiledPolicy,
    origin: FacilityInfo,
    origin_tier: TierInfo,
    desired: Direction,
    flags: frozenset[str],
    emergency: bool,
    down_tiers: frozenset[str] | None,
    env: FactEnv,
    candidates: Sequence[FacilityInfo],
) -> SuggestedTarget | None:
    """Pick the receiving facility: nearest capable centre for rules that need a flag (ACS → PCI), nearest
    二级+ hospital for other emergencies (70号), the parent facility or next tier for routine up-referrals
    (医共体 chain), the patient's home facility or nearest lower tier for down-referrals.
    """
    home_id = env.strs.get(policy.home_facility_fact) if policy.home_facility_fact else None
    best: tuple[tuple[float, ...], FacilityInfo, float, str] | None = None
    if desired == "up" and not flags and not emergency and origin.parent_id is not None:
        # A routine up-referral goes through the 医共体 chain: the parent, when it can take the patient, wins.
        for candidate in candidates:
            if candidate.id == origin.parent_id:
                tier = policy.tiers.get(candidate.tier)
                if (
                    tier is not None
                    and tier.level < origin_tier.level
                    and _coverage(policy, candidate, env) is not False
                ):
                    best = ((0.0,), candidate, _distance(origin, candidate), "parent-facility")
                break
    for candidate in candidates if best is None else ():
        tier = policy.tiers.get(candidate.tier)
        if candidate.id == origin.id or tier is None:
            continue
        # Filter first: the distance is the costly part.
        if flags:
            if not flags <= candidate.flags or tier.level > origin_tier.level:
                continue
            distance = _distance(origin, candidate)
            rank: tuple[float, ...] = (distance,)
            basis = "nearest-capable"
        elif emergency:
            if tier.level > policy.emergency_min_level or tier.level >= origin_tier.level:
                continue
            distance = _distance(origin, candidate)
            rank, basis = (distance,), "nearest-emergency"
        elif desired == "up":
            if tier.level >= origin_tier.level or _coverage(policy, candidate, env) is False:
                continue
            distance = _distance(origin, candidate)
            is_parent = candidate.id == origin.parent_id
            rank = (0 if is_parent else 1, origin_tier.level - tier.level, distance)
            basis = "parent-facility" if is_parent else "next-tier"
        elif desired == "down":
            if tier.level <= origin_tier.level or (down_tiers is not None and candidate.tier not in down_tiers):
                continue
            if _coverage(policy, candidate, env) is False:
                continue
            distance = _distance(origin, candidate)
            is_home = candidate.id == home_id
            rank = (0 if is_home else 1, 0 if candidate.parent_id == origin.id else 1, distance)
            basis = "home-facility" if is_home else "nearest-lower-tier"
        else:
            continue
        if best is None or rank < best[0]:
            best = (rank, candidate, distance, basis)
    if best is None:
        return None
    _, facility, distance, basis = best
    flag_names = [policy.flags[f] for f in sorted(flags) if f in policy.flags]
    zh, en = _BASIS_TEXT[basis]
    return SuggestedTarget(
        facility_id=facility.id,
        facility_name=facility.name,
        distance_km=round(distance, 1),
        basis=basis,
        reason_zh=zh.format(flags="、".join(f.name_zh for f in flag_names), km=round(distance, 1)),
        reason_en=en.format(flags=", ".join(f.name_en for f in flag_names), km=round(distance, 1)),
        required_flags=tuple(sorted(flags)),
    )


_BASIS_TEXT: Final[Mapping[str, tuple[str, str]]] = {
    "nearest-capable": ("最近的具备{flags}能力的机构（{km} km）", "nearest facility with {flags} ({km} km)"),
    "nearest-emergency": ("最近的二级以上医院（{km} km）", "nearest secondary-level or higher hospital ({km} km)"),
    "parent-facility": ("医共体上级机构（{km} km）", "the parent facility in the community ({km} km)"),
    "next-tier": ("最近的上一级可诊治机构（{km} km）", "nearest higher-tier facility that treats this ({km} km)"),
    "home-facility": ("患者居住地签约机构（{km} km）", "the patient's home facility ({km} km)"),
    "nearest-lower-tier": (
        "最近的可接收下转机构（{km} km）",
        "nearest lower-tier facility that can take over ({km} km)",
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Insurance and SLA
# ---------------------------------------------------------------------------------------------------------------


def _insurance(
    policy: CompiledPolicy,
    direction: Direction | None,
    origin_tier: TierInfo | None,
    target_tier: TierInfo | None,
    env: FactEnv,
    compliant: bool,
    penalty: bool,
) -> InsuranceConsequence:
    if target_tier is not None and target_tier.out_of_county:
        long_term = policy.long_term_codes.any_of(env.codes)
        window = "long_term_out_of_county" if long_term else "out_of_county_inpatient"
    elif direction == "up" and origin_tier is not None and origin_tier.primary:
        window = "primary_first"
    else:
        window = "outpatient"
    return _insurance_terms(policy, direction, window, compliant, penalty)


@functools.lru_cache(maxsize=256)
def _insurance_terms(
    policy: CompiledPolicy, direction: Direction | None, name: str, compliant: bool, penalty: bool
) -> InsuranceConsequence:
    """The consequence for one combination; few combinations exist per policy, so it is memoised."""
    terms = policy.model.insurance
    window = getattr(terms.validity, name)
    deductible = compliant and not penalty and terms.deductible_continuous_on_referral.enabled
    no_new_deductible = (
        compliant and not penalty and direction == "down" and terms.no_new_deductible_after_down_referral.enabled
    )
    sources = [window.source]
    if penalty:
        delta = terms.unreferred_payout_delta_pct.value
        sources.append(terms.unreferred_payout_delta_pct.source)
    elif compliant and direction in ("up", "down"):
        bonus = terms.referred_bonus_payout_pct
        delta = bonus.up if direction == "up" else bonus.down
        sources.append(bonus.source)
    else:
        delta = 0.0
    if deductible:
        sources.append(terms.deductible_continuous_on_referral.source)
    if no_new_deductible:
        sources.append(terms.no_new_deductible_after_down_referral.source)
    if penalty:
        note_zh = f"按未经转诊处理：报销比例调整{delta:+g}个百分点，起付线不连续计算；转诊单有效期{window.days}天"
        note_en = (
            f"treated as unreferred care: payout {delta:+g} percentage points, deductible does not carry over; "
            f"referral valid {window.days} days"
        )
    else:
        parts_zh = [f"合规转诊：报销比例调整{delta:+g}个百分点"]
        parts_en = [f"compliant referral: payout {delta:+g} percentage points"]
        if deductible:
            parts_zh.append("起付线连续计算")
            parts_en.append("deductible counts continuously")
        if no_new_deductible:
            parts_zh.append("同一疾病下转不再另付起付线")
            parts_en.append("no new deductible after down-referral in the same episode")
        parts_zh.append(f"转诊单有效期{window.days}天")
        parts_en.append(f"referral valid {window.days} days")
        note_zh, note_en = "；".join(parts_zh), "; ".join(parts_en)
    return InsuranceConsequence(
        validity_window=name,
        validity_days=window.days,
        deductible_continuous=deductible,
        no_new_deductible_same_episode=no_new_deductible,
        penalty_applies=penalty,
        payout_delta_pct=delta,
        note_zh=note_zh,
        note_en=note_en,
        sources=tuple(sources),
    )


def _sla(policy: CompiledPolicy, priority: Priority, env: FactEnv) -> SlaTerms:
    # The strictest condition-specific follow-up wins (e.g. hypertension: within 2 weeks).
    specific = [days for ranges, days in policy.followup_overrides if ranges.any_of(env.codes)]
    followup = min(specific) if specific else policy.model.sla.followup.default_days
    return _sla_terms(policy, priority, followup)


@functools.lru_cache(maxsize=256)
def _sla_terms(policy: CompiledPolicy, priority: Priority, followup: int) -> SlaTerms:
    sla = policy.model.sla
    return SlaTerms(
        ack_within_minutes=policy.ack_minutes[priority],
        escalate_to=sla.escalation.to,
        scan_every_minutes=sla.escalation.scan_every_minutes,
        followup_days=followup,
    )


# ---------------------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------------------


def _direction(origin: TierInfo, target: TierInfo) -> Direction:
    if target.level < origin.level:
        return "up"
    if target.level > origin.level:
        return "down"
    return "lateral"


@dataclass(slots=True)
class _Sections:
    """Rules and conditional exceptions that matched (True) or stayed unknown (None) for one fact set."""

    em_hits: list[CompiledRule]
    em_unknown: list[CompiledRule]
    up_hits: list[CompiledRule]
    up_unknown: list[CompiledRule]
    down_hits: list[CompiledRule]
    down_unknown: list[CompiledRule]
    lat_hits: list[CompiledRule]
    lat_unknown: list[CompiledRule]
    exc_hits: list[CompiledException]
    exc_unknown: list[CompiledException]


def _evaluate_sections(policy: CompiledPolicy, env: FactEnv, direction: Direction | None) -> _Sections:
    """Evaluate the sections the direction needs (all of them when the target, hence direction, is unknown).

    Emergency rules always run: they raise the priority and stop a downward referral.
    """
    em_hits, em_unknown = _run(policy.emergency_rules, env)
    up_hits, up_unknown = _run(policy.upward_rules, env) if direction != "down" else ([], [])
    down_hits, down_unknown = _run(policy.downward_rules, env) if direction in (None, "down") else ([], [])
    lat_hits, lat_unknown = _run(policy.lateral_rules, env) if direction in (None, "lateral") else ([], [])
    exc_hits: list[CompiledException] = []
    exc_unknown: list[CompiledException] = []
    if direction != "down":
        for exc in policy.conditional_exceptions:
            result = None if exc.condition is None else exc.condition.evaluate(env)
            if result:
                exc_hits.append(exc)
            elif result is None:
                exc_unknown.append(exc)
    return _Sections(
        em_hits, em_unknown, up_hits, up_unknown, down_hits, down_unknown, lat_hits, lat_unknown, exc_hits, exc_unknown
    )


def evaluate_referral(
    policy: CompiledPolicy,
    request: ReferralRequest,
    *,
    candidates: Sequence[FacilityInfo] = (),
    today: date,
) -> Decision:
    """Decide whether a referral may go, why, where it should go, how urgently, and what it costs the patient.

    ``candidates`` are the facilities the suggestion may choose from (usually the community's facilities plus
    the regional centres); ``today`` is the local date the validity window starts from.
    """
    failed: list[FailedCheck] = []
    env, ignored = _build_env(policy, request, failed)
    origin = request.from_facility
    origin_tier = policy.tiers.get(origin.tier)

    requested_rank = 0
    if request.priority is not None:
        if request.priority in PRIORITY_RANK:
            requested_rank = PRIORITY_RANK[request.priority]
        else:
            failed.append(_check(ReasonCode.PRIORITY_INVALID, "info", value=request.priority))

    if origin_tier is None:
        failed.append(_check(ReasonCode.UNKNOWN_TIER, "blocked", tier=origin.tier))
        return _finish_blocked(policy, None, failed, env, ignored, requested_rank)
    requested_target = request.to_facility
    if requested_target is not None:
        if requested_target.tier not in policy.tiers:
            failed.append(_check(ReasonCode.UNKNOWN_TIER, "blocked", tier=requested_target.tier))
            return _finish_blocked(policy, None, failed, env, ignored, requested_rank)
        if requested_target.id == origin.id:
            failed.append(_check(ReasonCode.SAME_FACILITY, "blocked"))
            return _finish_blocked(policy, "lateral", failed, env, ignored, requested_rank)
        env.strs["to_tier"] = requested_target.tier
        requested_direction: Direction | None = _direction(origin_tier, policy.tiers[requested_target.tier])
    else:
        requested_direction = None

    found = _evaluate_sections(policy, env, requested_direction)
    origin_coverage = _coverage(policy, origin, env)
    beyond: bool | None = None if origin_coverage is None else not origin_coverage
    emergency = bool(found.em_hits)
    green = emergency and any(r.green_channel for r in found.em_hits)

    # Which way the patient should go: the requested way, except that an emergency is never sent down; without
    # a target, the strongest signal (emergency/upward/beyond capability, then downward, then lateral).
    if requested_direction is not None:
        desired: Direction = "up" if emergency and requested_direction == "down" else requested_direction
    elif emergency or found.up_hits or beyond:
        desired = "up"
    elif found.down_hits:
        desired = "down"
    elif found.lat_hits:
        desired = "lateral"
    else:
        desired = "up"

    flag_sources: list[CompiledRule] = []
    if desired != "down":
        flag_sources = [*found.em_hits, *found.up_hits, *(found.lat_hits if desired == "lateral" else [])]
    required_flags = frozenset(r.target_flag for r in flag_sources if r.target_flag is not None)
    down_tiers: frozenset[str] | None = None
    if desired == "down" and found.down_hits and all(r.target_tiers is not None for r in found.down_hits):
        down_tiers = frozenset().union(*(r.target_tiers or frozenset() for r in found.down_hits))
    # The suggestion costs a distance per candidate: work it out only when something asks for it.
    suggestion_memo: list[SuggestedTarget | None] = []

    def suggestion() -> SuggestedTarget | None:
        if not suggestion_memo:
            suggestion_memo.append(
                _suggest(policy, origin, origin_tier, desired, required_flags, emergency, down_tiers, env, candidates)
                if candidates
                else None
            )
        return suggestion_memo[0]

    if requested_target is None:
        suggested = suggestion()
        if suggested is None:
            failed.append(_check(ReasonCode.TARGET_MISSING, "blocked"))
            return _finish_blocked(policy, None, failed, env, ignored, requested_rank, found.em_hits, found.up_hits)
        target = next(c for c in candidates if c.id == suggested.facility_id)
        env.strs["to_tier"] = target.tier
        if policy.reads_to_tier:
            # Conditions read to_tier, now known: evaluate again against the suggested target.
            found = _evaluate_sections(policy, env, None)
            green = bool(found.em_hits) and any(r.green_channel for r in found.em_hits)
    else:
        target = requested_target
    target_tier = policy.tiers[target.tier]
    direction = _direction(origin_tier, target_tier)
    skip_level = abs(origin_tier.level - target_tier.level) > 1
    em_hits, up_hits, down_hits, lat_hits = found.em_hits, found.up_hits, found.down_hits, found.lat_hits

    matched: list[MatchedRule] = []
    codes: list[str] = []
    applied: list[CompiledException] = []
    criteria_met = False

    def tier_text() -> dict[str, str]:
        return {
            "from_zh": origin_tier.name_zh,
            "from_en": origin_tier.name_en,
            "to_zh": target_tier.name_zh,
            "to_en": target_tier.name_en,
        }

    def check_capabilities(rules: Sequence[CompiledRule]) -> None:
        for rule in rules:
            flag = rule.target_flag
            if flag is None or flag in target.flags or (direction == "lateral" and flag in origin.flags):
                continue
            severity: Severity = rule.on_capability_missing
            # Block only when there is a better place to send the patient; otherwise leave the doctor a way on.
            better = suggestion() if severity == "blocked" else None
            if better is None or flag not in better.required_flags:
                severity = "needs_override"
            info = policy.flags.get(flag)
            failed.append(
                _check(
                    ReasonCode.TARGET_LACKS_CAPABILITY,
                    severity,
                    rule.id,
                    flag_zh=info.name_zh if info else flag,
                    flag_en=info.name_en if info else flag,
                )
            )

    if direction == "down":
        matched.extend(r.explanation for r in (*em_hits, *down_hits))
        if em_hits:
            failed.append(_check(ReasonCode.UNSTABLE_FOR_DOWN, "blocked", em_hits[0].id))
        applicable = [r for r in down_hits if r.target_tiers is None or target.tier in r.target_tiers]
        if applicable:
            criteria_met = True
        elif down_hits:
            failed.append(_check(ReasonCode.DOWN_TIER_NOT_COVERED, "needs_override", **tier_text()))
        else:
            failed.append(_check(ReasonCode.NO_CRITERION, "needs_override", **_direction_text("down")))
        if skip_level:
            if any(r.allow_skip_level for r in applicable):
                codes.append(ReasonCode.SKIP_LEVEL_PERMITTED)
            else:
                failed.append(_check(ReasonCode.SKIP_LEVEL, "needs_override", **tier_text()))
        if _coverage(policy, target, env) is not True:
            failed.append(_check(ReasonCode.TARGET_TIER_CANNOT_TREAT, "needs_override"))
        priority_rules: list[CompiledRule] = [*em_hits, *down_hits]
    else:
        lateral = direction == "lateral"
        matched.extend([r.explanation for r in em_hits])
        matched.extend([r.explanation for r in up_hits])
        if not lateral and beyond:
            matched.append(_beyond_explanation(policy, origin, origin_tier))
            codes.append(ReasonCode.BEYOND_CAPABILITY)
        if lateral:
            matched.extend(r.explanation for r in lat_hits)
        # Exceptions: those the matched rules invoke, then those that apply on their own (patient choice).
        for rule in (*em_hits, *up_hits):
            if rule.exception is not None:
                exc = policy.exceptions[rule.exception]
                if exc not in applied:
                    applied.append(exc)
        for exc in found.exc_hits:
            if exc not in applied:
                applied.append(exc)
        matched.extend([exc.explanation for exc in applied])
        if lateral:
            # Sideways only for a capability the target has and the referring facility lacks.
            criteria_met = any(r.target_flag is None or r.target_flag in target.flags for r in lat_hits) or any(
                r.target_flag is not None and r.target_flag in target.flags and r.target_flag not in origin.flags
                for r in (*em_hits, *up_hits)
            )
        else:
            criteria_met = bool(em_hits or up_hits or beyond)
        if not criteria_met and not (applied and any(exc.skips_criteria_check for exc in applied)):
            failed.append(_check(ReasonCode.NO_CRITERION, "needs_override", **_direction_text(direction)))
        if skip_level:
            if (
                any(r.allow_skip_level for r in em_hits)
                or any(r.allow_skip_level for r in up_hits)
                or any(e.skips_tier_check for e in applied)
            ):
                codes.append(ReasonCode.SKIP_LEVEL_PERMITTED)
            else:
                failed.append(_check(ReasonCode.SKIP_LEVEL, "needs_override", **tier_text()))
        check_capabilities(em_hits)
        check_capabilities(lat_hits if lateral else up_hits)
        # Emergencies go to the nearest capable hospital to be stabilised: the disease list does not gate them.
        if not green and not lateral and _coverage(policy, target, env) is False:
            failed.append(_check(ReasonCode.TARGET_TIER_CANNOT_TREAT, "needs_override"))
        priority_rules = [*em_hits, *up_hits, *(lat_hits if lateral else [])]

    rank = requested_rank
    for rule in priority_rules:
        if rule.priority_rank > rank:
            rank = rule.priority_rank
    priority = PRIORITIES[rank]

    severities = {f.severity for f in failed}
    override_reason = (request.override_reason or "").strip()
    override_applied = False
    if "blocked" in severities:
        outcome: Outcome = "blocked"
    elif "needs_override" in severities:
        if len(override_reason) >= policy.min_override_chars:
            outcome, override_applied = "allowed", True
        else:
            if override_reason:
                failed.append(
                    _check(ReasonCode.OVERRIDE_REASON_TOO_SHORT, "needs_override", chars=policy.min_override_chars)
                )
            outcome = "needs_override"
    else:
        outcome = "allowed"
    compliant = outcome == "allowed" and not override_applied
    penalty = not compliant or (bool(applied) and any(e.insurance_penalty for e in applied))

    missing_facts = _missing_facts(
        policy, found, env, direction, target, rank, green, outcome != "allowed" or override_applied, failed, beyond
    )

    # Reason codes: failures first (they explain a refusal), then what allowed the referral.
    codes = [*(f.code for f in failed), *codes]
    if criteria_met:
        codes.append(ReasonCode.CRITERION_MET)
    codes.extend(exc.code for exc in applied)
    if green:
        codes.append(ReasonCode.GREEN_CHANNEL)
    if override_applied:
        codes.append(ReasonCode.OVERRIDE_APPLIED)
    if request.priority is not None and rank > requested_rank:
        codes.append(ReasonCode.PRIORITY_RAISED)
    if requested_target is None:
        codes.append(ReasonCode.TARGET_SUGGESTED)
    if missing_facts:
        codes.append(ReasonCode.MISSING_FACTS)

    insurance = _insurance(policy, direction, origin_tier, target_tier, env, compliant, penalty)
    return Decision(
        outcome=outcome,
        direction=direction,
        skip_level=skip_level,
        compliant=compliant,
        override_applied=override_applied,
        matched=tuple(matched),
        failed=tuple(failed),
        missing_facts=missing_facts,
        # Shown when it helps: no target was given, or the requested one does not pass cleanly.
        suggested_target=suggestion() if requested_target is None or not compliant else None,
        priority=priority,
        green_channel=green,
        insurance=insurance,
        valid_until=None if outcome == "blocked" else today + timedelta(days=insurance.validity_days),
        sla=_sla(policy, priority, env),
        policy_version=policy.version_label,
        reason_codes=tuple(dict.fromkeys([str(code) for code in codes])),
        ignored_facts=tuple(ignored),
    )


_SECTION_OF_DIRECTION: Final[Mapping[str, str]] = {"up": "upward", "down": "downward", "lateral": "lateral"}


def _missing_facts(
    policy: CompiledPolicy,
    found: _Sections,
    env: FactEnv,
    direction: Direction,
    target: FacilityInfo,
    rank: int,
    green: bool,
    unclean: bool,
    failed: Sequence[FailedCheck],
    beyond: bool | None,
) -> tuple[MissingFact, ...]:
    """Facts whose absence left a rule unknown when that rule, matched, would change the decision."""
    present = env.present
    if direction == "down":
        # Emergency rules left unknown are not asked about on the way down: the downward rules already require
        # the patient to be stable, so asking for every vital sign would only add noise.
        unknown_rules = [r for r in found.down_unknown if not r.facts.isdisjoint(present)]
    else:
        unknown_rules = [
            r
            for r in (*found.em_unknown, *found.up_unknown, *(found.lat_unknown if direction == "lateral" else ()))
            if not r.facts.isdisjoint(present)  # no recorded fact of the rule: no leaf can hold, no evidence
        ]
    if not unknown_rules and not unclean:
        return ()  # the common clean case: nothing left that could change the decision
    failed_codes = {f.code for f in failed if f.severity != "info"}

    def would_change(rule: CompiledRule) -> bool:
        if rule.section == "downward" and rule.target_tiers is not None and target.tier not in rule.target_tiers:
            return False  # it could not apply to this target whatever the facts
        if rule.priority_rank > rank or (rule.green_channel and not green):
            return True
        if not unclean:
            return False
        if ReasonCode.NO_CRITERION in failed_codes and (
            rule.section == _SECTION_OF_DIRECTION[direction] or (direction == "up" and rule.section == "emergency")
        ):
            return True
        if ReasonCode.SKIP_LEVEL in failed_codes and (
            rule.allow_skip_level or (rule.exception is not None and policy.exceptions[rule.exception].skips_tier_check)
        ):
            return True
        return ReasonCode.DOWN_TIER_NOT_COVERED in failed_codes and rule.section == "downward"

    missing: dict[str, list[str]] = {}

    def add_from(condition: CompiledCondition, reads: frozenset[str], owner: str) -> None:
        if reads.isdisjoint(present):
            return  # no recorded fact of this rule, so no leaf of it can hold: no evidence
        _, facts, evidence = _explain_unknown(condition, env)
        if evidence:
            for fact in facts:
                missing.setdefault(fact, []).append(owner)

    for rule in unknown_rules:
        if would_change(rule):
            add_from(rule.condition, rule.facts, rule.id)
    if unclean and direction != "down":
        for exc in found.exc_unknown:
            helps = (exc.skips_tier_check and ReasonCode.SKIP_LEVEL in failed_codes) or (
                exc.skips_criteria_check and ReasonCode.NO_CRITERION in failed_codes
            )
            if helps and exc.condition is not None:
                add_from(exc.condition, exc.facts, exc.code)
        if direction == "up" and beyond is None and ReasonCode.NO_CRITERION in failed_codes:
            missing.setdefault(policy.stable_fact if env.codes else "icd10", []).append(_BEYOND_ID)
    if (
        unclean
        and direction == "down"
        and ReasonCode.TARGET_TIER_CANNOT_TREAT in failed_codes
        and _coverage(policy, target, env) is None
    ):
        missing.setdefault(policy.stable_fact if env.codes else "icd10", []).append(_COVERAGE_ID)
    return tuple(_missing_fact(policy, name, ids) for name, ids in sorted(missing.items()))


_BEYOND_ID: Final = "CAP-BEYOND"
_COVERAGE_ID: Final = "CAP-TARGET"


def _beyond_explanation(policy: CompiledPolicy, origin: FacilityInfo, tier: TierInfo) -> MatchedRule:
    return _beyond_text(policy, origin.id, tier)


@functools.lru_cache(maxsize=1024)
def _beyond_text(policy: CompiledPolicy, facility_id: str, tier: TierInfo) -> MatchedRule:
    capability = policy.capability_for(facility_id, tier.code)
    return MatchedRule(
        id=_BEYOND_ID,
        kind="capability",
        reason_zh=f"诊断超出{tier.name_zh}的诊疗范围（基层首诊，超出能力的向上转诊）",
        reason_en=f"the diagnosis is outside what a {tier.name_en} treats (primary care first, refer what it cannot)",
        source=capability.source if capability else "capabilities",
    )


def _direction_text(direction: str) -> dict[str, str]:
    zh, en = _DIRECTION_TEXT[direction]
    return {"direction_zh": zh, "direction_en": en}


def _missing_fact(policy: CompiledPolicy, name: str, rule_ids: list[str]) -> MissingFact:
    return _missing_fact_terms(policy, name, tuple(dict.fromkeys(rule_ids)))


@functools.lru_cache(maxsize=4096)
def _missing_fact_terms(policy: CompiledPolicy, name: str, rule_ids: tuple[str, ...]) -> MissingFact:
    spec = policy.facts.get(name)
    label_zh = spec.label_zh if spec else name
    label_en = spec.label_en if spec else name
    return MissingFact(name, label_zh, label_en, rule_ids)


def _finish_blocked(
    policy: CompiledPolicy,
    direction: Direction | None,
    failed: list[FailedCheck],
    env: FactEnv,
    ignored: list[str],
    requested_rank: int,
    em_hits: Sequence[CompiledRule] = (),
    up_hits: Sequence[CompiledRule] = (),
) -> Decision:
    """A decision refused before the tier checks (unknown tier, same facility, nowhere to send the patient)."""
    rank = max([requested_rank, *(r.priority_rank for r in (*em_hits, *up_hits))])
    priority = PRIORITIES[rank]
    green = any(r.green_channel for r in em_hits)
    codes = [f.code for f in failed]
    if green:
        codes.append(ReasonCode.GREEN_CHANNEL)
    return Decision(
        outcome="blocked",
        direction=direction,
        skip_level=False,
        compliant=False,
        override_applied=False,
        matched=tuple(r.explanation for r in (*em_hits, *up_hits)),
        failed=tuple(failed),
        missing_facts=(),
        suggested_target=None,
        priority=priority,
        green_channel=green,
        insurance=_insurance(policy, direction, None, None, env, False, True),
        valid_until=None,
        sla=_sla(policy, priority, env),
        policy_version=policy.version_label,
        reason_codes=tuple(dict.fromkeys(str(code) for code in codes)),
        ignored_facts=tuple(ignored),
    )
