"""The tiered-diagnosis (分级诊疗) referral policy: YAML document, pydantic models, loader, compiler.

One policy document per community (县域医共体) and version, in force from ``effective_from``. Every threshold,
window and percentage is *data* with a ``source:`` because the research notes mark many of them [recall]
(referral-rules-notes.md §3: "keep every threshold, window and percentage as policy data that a county can
change, never as a constant in code").

Loading is two passes over one parse: PyYAML composes the node tree (kept as a map from path to line/column so
every error points into the document), then pydantic checks the shape (``extra="forbid"``), then a semantic pass
checks what pydantic cannot (operators, fact names and types, ICD-10 range syntax, references between sections)
and compiles the result: conditions to closures, ICD-10 lists to sorted intervals searched with ``bisect``. The
engine (:mod:`referral.rules`) only ever sees the compiled form, so nothing is re-parsed per evaluation.

Condition grammar (after medplat's ``{field, op, value}`` lists, notes §3.8): a leaf is
``{fact, op, value}``; a group is ``{all: [...]}``, ``{any: [...]}`` or ``{not: {...}}`` (``all`` and ``any`` may
appear together and are then both required). Logic is three-valued: a fact that is absent (or invalid) makes its
leaf *unknown*, and an unknown never matches (notes §3.8, §5.6 "missing fact = no match").
"""

from __future__ import annotations

import functools
import itertools
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib.resources import files
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "BUILTIN_FACTS",
    "OPERATORS",
    "PRIORITIES",
    "PRIORITY_RANK",
    "CompiledCapability",
    "CompiledCondition",
    "CompiledException",
    "CompiledPolicy",
    "CompiledRule",
    "FactEnv",
    "FactSpec",
    "FactValue",
    "IcdRangeSet",
    "MatchedRule",
    "Policy",
    "PolicyError",
    "PolicyValidationError",
    "Priority",
    "TierInfo",
    "check_effective_dates",
    "icd10_key",
    "load_default_policy",
    "load_policy",
    "parse_icd10_pattern",
    "policy_in_force",
    "validate_policy",
]

FactValue = float | int | bool | str
Priority = Literal["routine", "urgent", "asap", "stat"]
RuleSection = Literal["emergency", "upward", "downward", "lateral"]
CapabilityMissingOutcome = Literal["blocked", "needs_override"]
FactType = Literal["number", "boolean", "string"]
Path = tuple[str | int, ...]

#: FHIR ServiceRequest.priority codes in increasing urgency (notes §2.1: 急诊绿色通道 → ``stat``).
PRIORITIES: Final[tuple[Priority, ...]] = ("routine", "urgent", "asap", "stat")
PRIORITY_RANK: Final[Mapping[str, int]] = {code: rank for rank, code in enumerate(PRIORITIES)}

#: Every operator the condition grammar knows (notes §3.8; ``contains`` is left out because facts are scalars,
#: and ``icd10_in`` replaces the notes' ``prefix_in`` with real ranges such as ``I20-I25``).
OPERATORS: Final[frozenset[str]] = frozenset(
    {"==", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "exists", "icd10_in"}
)
_OPERATORS_BY_TYPE: Final[Mapping[str, frozenset[str]]] = {
    "number": frozenset({"==", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "exists"}),
    "boolean": frozenset({"==", "!=", "exists"}),
    "string": frozenset({"==", "!=", "in", "not_in", "exists"}),
    "codes": frozenset({"icd10_in", "exists"}),
}

#: Facts the engine supplies itself; a policy may use them in conditions but may not declare them.
BUILTIN_FACTS: Final[frozenset[str]] = frozenset({"icd10", "from_tier", "to_tier"})


# ---------------------------------------------------------------------------------------------------------------
# ICD-10 codes and ranges
# ---------------------------------------------------------------------------------------------------------------

# A code's sort key: letter, two-digit category, then a slot: 0 for the bare category ("I10") and 1..10 for the
# first subdivision digit 0..9 ("I10.0".."I10.9"). Ranges over categories and subcategories then become plain
# integer intervals. The national clinical/insurance editions (国家临床版2.0 / 医保版) add extension digits
# ("I10.x00x002", "I21.900"); they are reduced to the WHO 3-4 character prefix (notes §3.8).
_LETTER_SPAN: Final = 1100
_CATEGORY_SPAN: Final = 11
_MAX_KEY: Final = 26 * _LETTER_SPAN - 1
_CODE_RE: Final = re.compile(r"([A-Z])(\d{2})(?:\.?([0-9X])[0-9A-Z]*)?")
_PATTERN_POINT_RE: Final = re.compile(r"([A-Z])(\d{2})(?:\.(\d))?")
_PATTERN_LETTER_RE: Final = re.compile(r"[A-Z]")


def icd10_key(code: str) -> int | None:
    """Return the sort key of an ICD-10 code, or None when it is not ICD-10 shaped.

    Dagger/asterisk marks (†, *) and a trailing ``+`` are ignored; a subdivision written ``x`` (unspecified in the
    Chinese editions) is treated as the bare category.
    """
    match = _CODE_RE.fullmatch(code.strip().upper().rstrip("†*+"))
    if match is None:
        return None
    letter, category, sub = match.groups()
    slot = 0 if sub is None or sub == "X" else int(sub) + 1
    return (ord(letter) - 65) * _LETTER_SPAN + int(category) * _CATEGORY_SPAN + slot


def _point_bounds(text: str) -> tuple[int, int] | None:
    match = _PATTERN_POINT_RE.fullmatch(text)
    if match is None:
        return None
    letter, category, sub = match.groups()
    base = (ord(letter) - 65) * _LETTER_SPAN + int(category) * _CATEGORY_SPAN
    if sub is None:
        return base, base + _CATEGORY_SPAN - 1
    return base + int(sub) + 1, base + int(sub) + 1


def parse_icd10_pattern(pattern: str) -> tuple[int, int] | None:
    """Parse one ICD-10 list entry into an inclusive key interval, or None when the syntax is not known.

    Accepted: ``*`` (everything), a chapter letter ``C``, a category ``I10`` (with all its subdivisions), a
    subcategory ``I21.0``, and an inclusive range of the latter two, ``I20-I25`` or ``M50.0-M51.2``.
    """
    text = pattern.strip()
    if text == "*":
        return 0, _MAX_KEY
    if _PATTERN_LETTER_RE.fullmatch(text):
        base = (ord(text) - 65) * _LETTER_SPAN
        return base, base + _LETTER_SPAN - 1
    if "-" in text:
        low_text, _, high_text = text.partition("-")
        low = _point_bounds(low_text)
        high = _point_bounds(high_text)
        if low is None or high is None or low[0] > high[1]:
            return None
        return low[0], high[1]
    return _point_bounds(text)


@dataclass(frozen=True, slots=True)
class IcdRangeSet:
    """A union of ICD-10 key intervals, merged and sorted so membership is one ``bisect``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def from_bounds(cls, bounds: Iterable[tuple[int, int]]) -> IcdRangeSet:
        merged: list[list[int]] = []
        for low, high in sorted(bounds):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        return cls(tuple(low for low, _ in merged), tuple(high for _, high in merged))

    def __contains__(self, key: int) -> bool:
        index = bisect_right(self.starts, key) - 1
        return index >= 0 and key <= self.ends[index]

    def any_of(self, keys: Iterable[int]) -> bool:
        starts, ends = self.starts, self.ends
        for key in keys:
            index = bisect_right(starts, key) - 1
            if index >= 0 and key <= ends[index]:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.starts)


_EMPTY_RANGES: Final = IcdRangeSet((), ())


# ---------------------------------------------------------------------------------------------------------------
# The document (pydantic models)
# ---------------------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierDef(_Model):
    """One tier of the region tree; a lower ``level`` is a more central tier (notes §3.8 ``tiers``)."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    level: int = Field(ge=0)
    name_zh: str
    name_en: str
    #: 基层: referrals up from this tier use the primary-first validity window (notes §3.7).
    primary: bool = False
    #: Outside the county: referrals to this tier use the out-of-county windows (notes §3.6, §3.7).
    out_of_county: bool = False


class FlagDef(_Model):
    """A facility capability flag, e.g. ``pci_capable`` (胸痛中心) or ``stroke_centre`` (卒中中心)."""

    name_zh: str
    name_en: str
    source: str | None = None


class FactDef(_Model):
    """A fact the clinician records (vital sign, lab value, finding); conditions may only name declared facts."""

    type: FactType
    label_zh: str
    label_en: str
    unit: str | None = None
    #: Plausible range: a value outside it is rejected as a data-entry error and treated as missing.
    min: float | None = None
    max: float | None = None
    #: Allowed values of a string fact.
    values: list[str] | None = None


class CapabilityDef(_Model):
    """ICD-10 lists a tier or facility diagnoses and treats, or manages only while the patient is stable."""

    treat: list[str] = Field(default_factory=list)
    manage_stable: list[str] = Field(default_factory=list)
    #: Codes carved out of ``treat`` (e.g. a county refers difficult cases up: notes §3.2, §3.8 ``except_upward``).
    except_: list[str] = Field(default_factory=list, alias="except")
    note: str | None = None
    source: str


class Capabilities(_Model):
    #: The boolean fact that says the patient is stable (used by ``manage_stable``).
    stable_fact: str
    tiers: dict[str, CapabilityDef]
    #: Per-facility replacements of the tier default, keyed by facility id (a county's own 病种目录).
    facilities: dict[str, CapabilityDef] = Field(default_factory=dict)


class Condition(_Model):
    """A leaf ``{fact, op, value}`` or a group ``{all: [...]}`` / ``{any: [...]}`` / ``{not: {...}}``."""

    fact: str | None = None
    op: str | None = None
    value: bool | int | float | str | list[bool | int | float | str] | None = None
    all_: list[Condition] | None = Field(default=None, alias="all")
    any_: list[Condition] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")
    #: Free text for readers (e.g. "示例阈值，按本地方案"); a condition may also cite its own source.
    note: str | None = None
    source: str | None = None


class RuleDef(_Model):
    """One referral criterion. Its section (emergency/upward/downward/lateral) gives the direction."""

    id: str = Field(pattern=r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*$")
    title_zh: str | None = None
    title_en: str | None = None
    reason_zh: str
    reason_en: str
    source: str
    priority: Priority = "routine"
    #: May go past the next tier (e.g. straight to the county PCI centre: notes §3.3, §3.5).
    allow_skip_level: bool = False
    #: 急诊绿色通道: fast track on arrival.
    green_channel: bool = False
    #: Code of an ``exceptions`` entry this rule invokes when it matches.
    exception: str | None = None
    #: A facility flag the receiving facility must have (e.g. ``pci_capable``).
    target_capability: str | None = None
    on_capability_missing: CapabilityMissingOutcome = "blocked"
    #: For downward and lateral rules: the tiers the patient may be sent to.
    target_tiers: list[str] | None = None
    when: Condition


class RuleSections(_Model):
    emergency: list[RuleDef] = Field(default_factory=list)
    upward: list[RuleDef] = Field(default_factory=list)
    downward: list[RuleDef] = Field(default_factory=list)
    lateral: list[RuleDef] = Field(default_factory=list)


class ExceptionDef(_Model):
    """A named exception to primary-first (基层首诊), recorded as a reason code (notes §3.5, §3.8)."""

    code: str = Field(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
    reason_zh: str
    reason_en: str
    source: str
    skips_tier_check: bool = False
    skips_criteria_check: bool = False
    insurance_penalty: bool = False
    #: When set, the exception also applies on its own (e.g. a patient who chooses to self-pay).
    when: Condition | None = None


TownshipReview = Literal["never", "skip_level_override", "skip_level", "always"]


class Routing(_Model):
    #: Emergencies with no capability flag go to this tier or a more central one (70号: 急危重症 → 二级以上).
    emergency_min_tier: str
    #: A string fact naming the patient's home facility, preferred for downward referrals.
    home_facility_fact: str | None = None
    #: When an upward referral first goes to the sender's township centre for review (卫生院审核):
    #: ``never``; ``skip_level_override`` (a skip that only a written override allows); ``skip_level`` (any skip
    #: the policy does not mark as an emergency or exception); ``always`` (every upward referral from a village).
    township_review: TownshipReview = "skip_level_override"
    source: str


class OverridePolicy(_Model):
    min_reason_chars: int = Field(ge=1)
    source: str


class ValidityWindow(_Model):
    days: int = Field(gt=0)
    source: str
    #: For ``long_term_out_of_county``: the conditions that get the long window (cancer, transplant, uraemia).
    icd10: list[str] = Field(default_factory=list)


class ValidityWindows(_Model):
    primary_first: ValidityWindow
    outpatient: ValidityWindow
    out_of_county_inpatient: ValidityWindow
    long_term_out_of_county: ValidityWindow


class Toggle(_Model):
    enabled: bool
    source: str


class PercentValue(_Model):
    value: float
    source: str


class BonusPercent(_Model):
    up: float
    down: float
    source: str


class Insurance(_Model):
    """Insurance consequences of a referral (notes §3.6); all values are local parameters."""

    validity: ValidityWindows
    deductible_continuous_on_referral: Toggle
    no_new_deductible_after_down_referral: Toggle
    unreferred_payout_delta_pct: PercentValue
    referred_bonus_payout_pct: BonusPercent


class AckMinutes(_Model):
    routine: int = Field(gt=0)
    urgent: int = Field(gt=0)
    asap: int = Field(gt=0)
    stat: int = Field(gt=0)
    source: str


class Escalation(_Model):
    to: str
    scan_every_minutes: int = Field(gt=0)
    source: str


class FollowupOverride(_Model):
    icd10: list[str]
    days: int = Field(gt=0)
    source: str


class Followup(_Model):
    default_days: int = Field(gt=0)
    source: str
    by_icd10: list[FollowupOverride] = Field(default_factory=list)


class Sla(_Model):
    receiver_ack_minutes: AckMinutes
    escalation: Escalation
    followup: Followup


class Policy(_Model):
    """The whole policy document of one community and version."""

    community: str = Field(min_length=1)
    version: str = Field(min_length=1)
    effective_from: date
    #: Exclusive end; absent means "until the next version takes effect".
    effective_until: date | None = None
    title_zh: str
    title_en: str
    tiers: list[TierDef]
    flags: dict[str, FlagDef] = Field(default_factory=dict)
    facts: dict[str, FactDef]
    capabilities: Capabilities
    routing: Routing
    override: OverridePolicy
    rules: RuleSections
    exceptions: list[ExceptionDef] = Field(default_factory=list)
    insurance: Insurance
    sla: Sla


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyError:
    """One problem in a policy document, located by 1-based line and column."""

    code: str
    message_zh: str
    message_en: str
    path: str
    line: int | None
    column: int | None
    document: str | None = None


class PolicyValidationError(ValueError):
    """Raised by :func:`load_policy`; ``errors`` lists every problem found, in document order."""

    def __init__(self, errors: Sequence[PolicyError]) -> None:
        self.errors: tuple[PolicyError, ...] = tuple(errors)
        lines = [f"line {e.line}: {e.message_en}" if e.line else e.message_en for e in self.errors]
        super().__init__("invalid referral policy: " + "; ".join(lines))


_MESSAGES: Final[Mapping[str, tuple[str, str]]] = {
    "yaml-syntax": ("YAML 语法错误：{detail}", "YAML syntax error: {detail}"),
    "empty-document": ("策略文档为空", "the policy document is empty"),
    "duplicate-key": ("重复的键“{name}”", "duplicate key '{name}'"),
    "unknown-field": ("未知字段“{name}”", "unknown field '{name}'"),
    "missing-field": ("缺少必填字段“{name}”", "missing required field '{name}'"),
    "invalid-value": ("取值无效：{detail}", "invalid value: {detail}"),
    "unknown-operator": (
        "未知运算符“{op}”（可用：{known}）",
        "unknown operator '{op}' (known: {known})",
    ),
    "operator-not-applicable": (
        "运算符“{op}”不适用于{type}类型的事实“{fact}”",
        "operator '{op}' does not apply to {type} fact '{fact}'",
    ),
    "unknown-fact": ("未知事实“{fact}”（未在 facts 中声明）", "unknown fact '{fact}' (not declared under facts)"),
    "invalid-icd10-range": ("无法识别的 ICD-10 范围写法“{pattern}”", "unknown ICD-10 range syntax '{pattern}'"),
    "bad-condition": ("条件格式错误：{detail}", "malformed condition: {detail}"),
    "unknown-tier": ("未知层级“{tier}”", "unknown tier '{tier}'"),
    "unknown-flag": ("未知机构能力标志“{flag}”", "unknown facility flag '{flag}'"),
    "unknown-exception": ("未知例外代码“{exception}”", "unknown exception code '{exception}'"),
    "duplicate-id": ("重复的标识“{name}”", "duplicate identifier '{name}'"),
    "missing-capability": ("层级“{tier}”没有能力定义", "tier '{tier}' has no capability entry"),
    "builtin-fact": ("“{fact}”是内置事实，不能重新声明", "'{fact}' is a built-in fact and cannot be declared"),
    "bad-fact-definition": ("事实定义错误：{detail}", "bad fact definition: {detail}"),
    "bad-effective-range": (
        "effective_until 必须晚于 effective_from",
        "effective_until must be later than effective_from",
    ),
    "duplicate-effective-from": (
        "社区“{community}”已有同一生效日期 {date} 的版本（{other}）",
        "community '{community}' already has a version effective from {date} ({other})",
    ),
    "overlapping-effective-dates": (
        "社区“{community}”生效日期 {date} 与截止于 {until} 的版本（{other}）重叠",
        "community '{community}': effective_from {date} overlaps the version in force until {until} ({other})",
    ),
}

_TYPE_NAMES_ZH: Final[Mapping[str, str]] = {
    "number": "数值",
    "boolean": "布尔",
    "string": "字符串",
    "codes": "诊断编码",
}


def _format_path(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _Marks:
    """Where each path of the document starts: the key's mark for mapping entries, the node's for list items."""

    def __init__(self) -> None:
        self.keys: dict[Path, yaml.Mark] = {}
        self.values: dict[Path, yaml.Mark] = {}

    def locate(self, path: Path) -> tuple[Path, int | None, int | None]:
        """Return the longest known prefix of ``path`` and its 1-based line and column."""
        probe = path
        while True:
            mark = self.keys.get(probe) or self.values.get(probe)
            if mark is not None:
                return probe, mark.line + 1, mark.column + 1
            if not probe:
                return probe, None, None
            probe = probe[:-1]


class _Reporter:
    def __init__(self, marks: _Marks, document: str | None) -> None:
        self.marks = marks
        self.document = document
        self.errors: list[PolicyError] = []

    def add(self, code: str, path: Path, *, exact_path: bool = True, **params: object) -> None:
        located, line, column = self.marks.locate(path)
        zh, en = _MESSAGES[code]
        shown = path if exact_path else located
        self.errors.append(
            PolicyError(
                code=code,
                message_zh=zh.format(**params),
                message_en=en.format(**params),
                path=_format_path(shown),
                line=line,
                column=column,
                document=self.document,
            )
        )


# ---------------------------------------------------------------------------------------------------------------
# Compiled form
# ---------------------------------------------------------------------------------------------------------------


class FactEnv:
    """The facts of one request, split by type so compiled conditions read typed values without checks."""

    __slots__ = ("bools", "codes", "nums", "present", "strs")

    def __init__(
        self,
        nums: dict[str, float],
        bools: dict[str, bool],
        strs: dict[str, str],
        codes: tuple[int, ...],
        present: set[str],
    ) -> None:
        self.nums = nums
        self.bools = bools
        self.strs = strs
        self.codes = codes
        #: Names of the recorded (valid, non-built-in) facts.
        self.present = present


#: A compiled condition: True, False, or None for "unknown" (a fact it needs is missing).
Predicate = Callable[[FactEnv], bool | None]


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    kind: Literal["leaf", "all", "any", "not"]
    evaluate: Predicate
    fact: str | None = None
    children: tuple[CompiledCondition, ...] = ()
    is_exists: bool = False
    #: For ``boolean_fact == value`` leaves: the value expected (lets a group of them be fused into one loop).
    expects: bool | None = None


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """Why a rule or exception applied, as shown to the clinician and stored with the referral."""

    id: str
    kind: str
    reason_zh: str
    reason_en: str
    source: str


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    section: RuleSection
    explanation: MatchedRule
    priority: Priority
    priority_rank: int
    allow_skip_level: bool
    green_channel: bool
    exception: str | None
    target_flag: str | None
    on_capability_missing: CapabilityMissingOutcome
    target_tiers: frozenset[str] | None
    condition: CompiledCondition
    #: Recorded (non-built-in) facts the condition reads: without one of them present there is no evidence.
    facts: frozenset[str]
    #: True when the condition is unknown whenever none of ``facts`` is recorded (it has no ``not``, no
    #: ``exists`` and no built-in fact), so the engine may skip evaluating it.
    unknown_without_facts: bool


@dataclass(frozen=True, slots=True)
class CompiledException:
    code: str
    explanation: MatchedRule
    skips_tier_check: bool
    skips_criteria_check: bool
    insurance_penalty: bool
    condition: CompiledCondition | None
    facts: frozenset[str]


@dataclass(frozen=True, slots=True)
class FactSpec:
    name: str
    type: Literal["number", "boolean", "string", "codes"]
    label_zh: str
    label_en: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    values: frozenset[str] | None = None
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class TierInfo:
    code: str
    level: int
    name_zh: str
    name_en: str
    primary: bool
    out_of_county: bool


@dataclass(frozen=True, slots=True)
class CompiledCapability:
    treat: IcdRangeSet
    manage_stable: IcdRangeSet
    excluded: IcdRangeSet
    source: str

    def covers(self, key: int, stable: bool | None) -> bool | None:
        """Whether this tier/facility can take a patient with this code; unknown if it hinges on ``stable``."""
        if key in self.excluded:
            return False
        if key in self.treat:
            return True
        if key in self.manage_stable:
            return stable
        return False


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    """A validated policy, ready for :func:`referral.rules.evaluate_referral`. Immutable; share it freely.

    Compared and hashed by identity, so the engine can memoise per-policy results (insurance texts, SLA).
    """

    model: Policy
    document: str | None
    effective_from_line: int | None
    effective_from_column: int | None
    tiers: Mapping[str, TierInfo]
    facts: Mapping[str, FactSpec]
    flags: Mapping[str, FlagDef]
    stable_fact: str
    tier_capabilities: Mapping[str, CompiledCapability]
    facility_capabilities: Mapping[str, CompiledCapability]
    emergency_rules: tuple[CompiledRule, ...]
    upward_rules: tuple[CompiledRule, ...]
    downward_rules: tuple[CompiledRule, ...]
    lateral_rules: tuple[CompiledRule, ...]
    exceptions: Mapping[str, CompiledException]
    conditional_exceptions: tuple[CompiledException, ...]
    emergency_min_level: int
    home_facility_fact: str | None
    min_override_chars: int
    ack_minutes: Mapping[str, int]
    long_term_codes: IcdRangeSet
    followup_overrides: tuple[tuple[IcdRangeSet, int], ...]
    #: Whether any condition reads ``to_tier`` (then a suggested target needs a second evaluation).
    reads_to_tier: bool

    @property
    def community(self) -> str:
        return self.model.community

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def effective_from(self) -> date:
        return self.model.effective_from

    @property
    def effective_until(self) -> date | None:
        return self.model.effective_until

    @property
    def version_label(self) -> str:
        """Stable label stored with each decision, e.g. ``default@2026.1``."""
        return f"{self.model.community}@{self.model.version}"

    def capability_for(self, facility_id: str, tier: str) -> CompiledCapability | None:
        return self.facility_capabilities.get(facility_id) or self.tier_capabilities.get(tier)


# ---------------------------------------------------------------------------------------------------------------
# Condition compilation
# ---------------------------------------------------------------------------------------------------------------


def _number_leaf(fact: str, op: str, threshold: float) -> Predicate:
    # One closure per operator: this is the innermost loop of every evaluation, so no indirect call.
    def at_least(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value >= threshold

    def above(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value > threshold

    def at_most(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value <= threshold

    def below(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value < threshold

    def equal(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value == threshold

    def unequal(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else value != threshold

    by_operator: dict[str, Predicate] = {
        ">=": at_least,
        ">": above,
        "<=": at_most,
        "<": below,
        "==": equal,
        "!=": unequal,
    }
    return by_operator[op]


def _between_leaf(fact: str, low: float, high: float) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else low <= value <= high

    return predicate


def _number_set_leaf(fact: str, members: frozenset[float], negate: bool) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        value = env.nums.get(fact)
        return None if value is None else (value in members) is not negate

    return predicate


def _bool_leaf(fact: str, expected: bool) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        value = env.bools.get(fact)
        return None if value is None else value is expected

    return predicate


def _string_set_leaf(fact: str, members: frozenset[str], negate: bool) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        value = env.strs.get(fact)
        return None if value is None else (value in members) is not negate

    return predicate


def _exists_leaf(fact: str, store: Literal["number", "boolean", "string", "codes"], expected: bool) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        if store == "codes":
            present = bool(env.codes)
        elif store == "number":
            present = fact in env.nums
        elif store == "boolean":
            present = fact in env.bools
        else:
            present = fact in env.strs
        return present is expected

    return predicate


def _icd10_leaf(ranges: IcdRangeSet) -> Predicate:
    starts, ends = ranges.starts, ranges.ends

    def predicate(env: FactEnv) -> bool | None:
        codes = env.codes
        if not codes:
            return None
        for key in codes:
            index = bisect_right(starts, key) - 1
            if index >= 0 and key <= ends[index]:
                return True
        return False

    return predicate


def _all_group(children: tuple[CompiledCondition, ...]) -> Predicate:
    evaluators = tuple(child.evaluate for child in children)

    def predicate(env: FactEnv) -> bool | None:
        unknown = False
        for evaluate in evaluators:
            result = evaluate(env)
            if result is False:
                return False
            if result is None:
                unknown = True
        return None if unknown else True

    return predicate


def _any_group(children: tuple[CompiledCondition, ...]) -> Predicate:
    evaluators = tuple(child.evaluate for child in children)

    def predicate(env: FactEnv) -> bool | None:
        unknown = False
        for evaluate in evaluators:
            result = evaluate(env)
            if result is True:
                return True
            if result is None:
                unknown = True
        return None if unknown else False

    return predicate


def _all_bools(pairs: tuple[tuple[str, bool], ...]) -> Predicate:
    # A group of boolean checks in one closure: the downward criteria and symptom lists are all like this.
    def predicate(env: FactEnv) -> bool | None:
        bools = env.bools
        unknown = False
        for fact, expected in pairs:
            value = bools.get(fact)
            if value is None:
                unknown = True
            elif value is not expected:
                return False
        return None if unknown else True

    return predicate


def _any_bools(pairs: tuple[tuple[str, bool], ...]) -> Predicate:
    def predicate(env: FactEnv) -> bool | None:
        bools = env.bools
        unknown = False
        for fact, expected in pairs:
            value = bools.get(fact)
            if value is None:
                unknown = True
            elif value is expected:
                return True
        return None if unknown else False

    return predicate


def _group(key: Literal["all", "any"], children: tuple[CompiledCondition, ...]) -> Predicate:
    pairs = tuple((child.fact, child.expects) for child in children if child.fact and child.expects is not None)
    if len(pairs) == len(children):
        return _all_bools(pairs) if key == "all" else _any_bools(pairs)
    return _all_group(children) if key == "all" else _any_group(children)


def _not_group(child: CompiledCondition) -> Predicate:
    evaluate = child.evaluate

    def predicate(env: FactEnv) -> bool | None:
        result = evaluate(env)
        return None if result is None else not result

    return predicate


def _recorded_facts(condition: CompiledCondition) -> frozenset[str]:
    if condition.kind == "leaf":
        fact = condition.fact
        return frozenset() if fact is None or fact in BUILTIN_FACTS else frozenset({fact})
    return frozenset().union(*(_recorded_facts(child) for child in condition.children))


def _unknown_without_facts(condition: CompiledCondition) -> bool:
    # Leaves other than ``exists`` answer None for an absent fact, and all/any of Nones is None; ``not`` and
    # ``exists`` can answer without the fact, and built-in facts (diagnosis, tiers) are always there.
    if condition.kind == "not":
        return False
    if condition.kind == "leaf":
        return condition.fact not in BUILTIN_FACTS and not condition.is_exists
    return all(_unknown_without_facts(child) for child in condition.children)


def _reads_to_tier(condition: CompiledCondition) -> bool:
    if condition.kind == "leaf":
        return condition.fact == "to_tier"
    return any(_reads_to_tier(child) for child in condition.children)


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _cheap_first(child: CompiledCondition) -> int:
    # The diagnosis gate is the most selective leaf of most rules: test it first so ``all`` stops early.
    return 0 if child.kind == "leaf" and child.fact == "icd10" else 1


class _Compiler:
    def __init__(self, model: Policy, reporter: _Reporter) -> None:
        self.model = model
        self.report = reporter
        self.tier_codes = {tier.code for tier in model.tiers}
        self.facts: dict[str, FactSpec] = {
            "icd10": FactSpec("icd10", "codes", "诊断（ICD-10）", "diagnosis (ICD-10)", builtin=True),
            "from_tier": FactSpec(
                "from_tier", "string", "转出机构层级", "referring tier", values=frozenset(self.tier_codes), builtin=True
            ),
            "to_tier": FactSpec(
                "to_tier", "string", "接收机构层级", "receiving tier", values=frozenset(self.tier_codes), builtin=True
            ),
        }

    # -- pieces ---------------------------------------------------------------------------------------------

    def ranges(self, patterns: Sequence[str], path: Path) -> IcdRangeSet:
        bounds: list[tuple[int, int]] = []
        for index, pattern in enumerate(patterns):
            parsed = parse_icd10_pattern(pattern)
            if parsed is None:
                self.report.add("invalid-icd10-range", (*path, index), pattern=pattern)
            else:
                bounds.append(parsed)
        return IcdRangeSet.from_bounds(bounds)

    def tier(self, code: str, path: Path) -> None:
        if code not in self.tier_codes:
            self.report.add("unknown-tier", path, tier=code)

    def condition(self, cond: Condition, path: Path) -> CompiledCondition | None:
        is_leaf = cond.fact is not None or cond.op is not None
        is_group = cond.all_ is not None or cond.any_ is not None or cond.not_ is not None
        if is_leaf and is_group:
            self.report.add("bad-condition", path, detail="fact/op and all/any/not in one mapping")
            return None
        if not is_leaf and not is_group:
            self.report.add("bad-condition", path, detail="need fact/op/value or all/any/not")
            return None
        if is_leaf:
            return self.leaf(cond, path)
        if cond.not_ is not None and (cond.all_ is not None or cond.any_ is not None):
            self.report.add("bad-condition", path, detail="'not' must stand alone")
            return None
        if cond.not_ is not None:
            child = self.condition(cond.not_, (*path, "not"))
            return None if child is None else CompiledCondition("not", _not_group(child), children=(child,))
        parts: list[CompiledCondition] = []
        groups: tuple[tuple[Literal["all", "any"], list[Condition] | None], ...] = (
            ("all", cond.all_),
            ("any", cond.any_),
        )
        for key, members in groups:
            if members is None:
                continue
            if not members:
                self.report.add("bad-condition", (*path, key), detail=f"'{key}' is empty")
                continue
            compiled = [self.condition(member, (*path, key, i)) for i, member in enumerate(members)]
            children = tuple(sorted((c for c in compiled if c is not None), key=_cheap_first))
            if len(children) != len(compiled):
                continue
            parts.append(CompiledCondition(key, _group(key, children), children=children))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        # ``all`` and ``any`` side by side: both must hold (notes §3.8, HTN-EMERG-01).
        both = tuple(parts)
        return CompiledCondition("all", _all_group(both), children=both)

    def leaf(self, cond: Condition, path: Path) -> CompiledCondition | None:
        if cond.fact is None:
            self.report.add("missing-field", (*path, "fact"), name="fact")
            return None
        if cond.op is None:
            self.report.add("missing-field", (*path, "op"), name="op")
            return None
        spec = self.facts.get(cond.fact)
        ok = True
        if spec is None:
            self.report.add("unknown-fact", (*path, "fact"), fact=cond.fact)
            ok = False
        if cond.op not in OPERATORS:
            self.report.add("unknown-operator", (*path, "op"), op=cond.op, known=" ".join(sorted(OPERATORS)))
            ok = False
        if not ok or spec is None:
            return None
        if cond.op not in _OPERATORS_BY_TYPE[spec.type]:
            self.report.add(
                "operator-not-applicable",
                (*path, "op"),
                op=cond.op,
                fact=cond.fact,
                type=f"{_TYPE_NAMES_ZH[spec.type]}/{spec.type}",
            )
            return None
        predicate = self.leaf_predicate(spec, cond.op, cond.value, (*path, "value"))
        if predicate is None:
            return None
        expects = None
        if spec.type == "boolean" and cond.op in ("==", "!=") and isinstance(cond.value, bool):
            expects = cond.value if cond.op == "==" else not cond.value
        return CompiledCondition("leaf", predicate, fact=spec.name, is_exists=cond.op == "exists", expects=expects)

    def bad_value(self, path: Path, detail: str) -> None:
        self.report.add("invalid-value", path, detail=detail)

    def scalar_ok(self, spec: FactSpec, value: object, path: Path) -> bool:
        if spec.type == "number" and not _is_number(value):
            self.bad_value(path, f"'{spec.name}' needs a number, got {value!r}")
            return False
        if spec.type == "boolean" and not isinstance(value, bool):
            self.bad_value(path, f"'{spec.name}' needs true or false, got {value!r}")
            return False
        if spec.type == "string":
            if not isinstance(value, str):
                self.bad_value(path, f"'{spec.name}' needs text, got {value!r}")
                return False
            if spec.values is not None and value not in spec.values:
                self.bad_value(path, f"{value!r} is not an allowed value of '{spec.name}'")
                return False
        return True

    def leaf_predicate(self, spec: FactSpec, op: str, value: object, path: Path) -> Predicate | None:
        fact = spec.name
        if op == "exists":
            if not isinstance(value, bool):
                self.bad_value(path, "'exists' needs true or false")
                return None
            return _exists_leaf(fact, spec.type, value)
        if op == "icd10_in":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                self.bad_value(path, "'icd10_in' needs a non-empty list of ICD-10 codes or ranges")
                return None
            return _icd10_leaf(self.ranges([str(v) for v in value], path))
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.bad_value(path, f"'{op}' needs a non-empty list")
                return None
            if not all(self.scalar_ok(spec, item, (*path, i)) for i, item in enumerate(value)):
                return None
            if spec.type == "number":
                return _number_set_leaf(fact, frozenset(float(v) for v in value), op == "not_in")
            return _string_set_leaf(fact, frozenset(str(v) for v in value), op == "not_in")
        if op == "between":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                self.bad_value(path, "'between' needs [low, high] numbers")
                return None
            low, high = float(value[0]), float(value[1])
            if low > high:
                self.bad_value(path, "'between' low is above high")
                return None
            return _between_leaf(fact, low, high)
        # Comparisons: ==, !=, >, >=, <, <=.
        if not self.scalar_ok(spec, value, path):
            return None
        if spec.type == "number":
            assert isinstance(value, int | float)  # checked by scalar_ok; narrows for mypy
            return _number_leaf(fact, op, float(value))
        if spec.type == "boolean":
            assert isinstance(value, bool)
            return _bool_leaf(fact, value if op == "==" else not value)
        return _string_set_leaf(fact, frozenset({str(value)}), op == "!=")

    def rule(self, rule: RuleDef, section: RuleSection, path: Path) -> CompiledRule | None:
        if rule.target_capability is not None and rule.target_capability not in self.model.flags:
            self.report.add("unknown-flag", (*path, "target_capability"), flag=rule.target_capability)
        if rule.exception is not None and rule.exception not in {e.code for e in self.model.exceptions}:
            self.report.add("unknown-exception", (*path, "exception"), exception=rule.exception)
        for index, tier in enumerate(rule.target_tiers or ()):
            self.tier(tier, (*path, "target_tiers", index))
        condition = self.condition(rule.when, (*path, "when"))
        if condition is None:
            return None
        return CompiledRule(
            id=rule.id,
            section=section,
            explanation=MatchedRule(rule.id, section, rule.reason_zh, rule.reason_en, rule.source),
            priority=rule.priority,
            priority_rank=PRIORITY_RANK[rule.priority],
            allow_skip_level=rule.allow_skip_level,
            green_channel=rule.green_channel,
            exception=rule.exception,
            target_flag=rule.target_capability,
            on_capability_missing=rule.on_capability_missing,
            target_tiers=None if rule.target_tiers is None else frozenset(rule.target_tiers),
            condition=condition,
            facts=_recorded_facts(condition),
            unknown_without_facts=_unknown_without_facts(condition),
        )

    def capability(self, cap: CapabilityDef, path: Path) -> CompiledCapability:
        return CompiledCapability(
            treat=self.ranges(cap.treat, (*path, "treat")),
            manage_stable=self.ranges(cap.manage_stable, (*path, "manage_stable")),
            excluded=self.ranges(cap.except_, (*path, "except")),
            source=cap.source,
        )

    # -- the document ---------------------------------------------------------------------------------------

    def compile(self, document: str | None, effective_from_at: tuple[int | None, int | None]) -> CompiledPolicy | None:
        model = self.model
        report = self.report
        if model.effective_until is not None and model.effective_until <= model.effective_from:
            report.add("bad-effective-range", ("effective_until",))

        tiers: dict[str, TierInfo] = {}
        levels: set[int] = set()
        for index, tier in enumerate(model.tiers):
            if tier.code in tiers:
                report.add("duplicate-id", ("tiers", index, "code"), name=tier.code)
            if tier.level in levels:
                report.add("duplicate-id", ("tiers", index, "level"), name=str(tier.level))
            levels.add(tier.level)
            tiers[tier.code] = TierInfo(
                tier.code, tier.level, tier.name_zh, tier.name_en, tier.primary, tier.out_of_county
            )

        for name, fact in model.facts.items():
            path: Path = ("facts", name)
            if name in BUILTIN_FACTS:
                report.add("builtin-fact", path, fact=name)
                continue
            if fact.type != "number" and (fact.min is not None or fact.max is not None):
                report.add("bad-fact-definition", path, detail="min/max only apply to number facts")
            if fact.type != "string" and fact.values is not None:
                report.add("bad-fact-definition", path, detail="values only apply to string facts")
            if fact.min is not None and fact.max is not None and fact.min > fact.max:
                report.add("bad-fact-definition", path, detail="min is above max")
            self.facts[name] = FactSpec(
                name,
                fact.type,
                fact.label_zh,
                fact.label_en,
                fact.unit,
                fact.min,
                fact.max,
                None if fact.values is None else frozenset(fact.values),
            )

        caps = model.capabilities
        stable_spec = self.facts.get(caps.stable_fact)
        if stable_spec is None or stable_spec.type != "boolean":
            report.add("unknown-fact", ("capabilities", "stable_fact"), fact=caps.stable_fact)
        tier_caps: dict[str, CompiledCapability] = {}
        for code, cap in caps.tiers.items():
            self.tier(code, ("capabilities", "tiers", code))
            tier_caps[code] = self.capability(cap, ("capabilities", "tiers", code))
        for code in tiers:
            if code not in caps.tiers:
                report.add("missing-capability", ("capabilities", "tiers"), tier=code)
        facility_caps = {
            facility_id: self.capability(cap, ("capabilities", "facilities", facility_id))
            for facility_id, cap in caps.facilities.items()
        }

        self.tier(model.routing.emergency_min_tier, ("routing", "emergency_min_tier"))
        home_fact = model.routing.home_facility_fact
        if home_fact is not None and (home_fact not in self.facts or self.facts[home_fact].type != "string"):
            report.add("unknown-fact", ("routing", "home_facility_fact"), fact=home_fact)

        exceptions: dict[str, CompiledException] = {}
        conditional: list[CompiledException] = []
        for index, exc in enumerate(model.exceptions):
            path = ("exceptions", index)
            if exc.code in exceptions:
                report.add("duplicate-id", (*path, "code"), name=exc.code)
            condition = None if exc.when is None else self.condition(exc.when, (*path, "when"))
            compiled_exc = CompiledException(
                code=exc.code,
                explanation=MatchedRule(exc.code, "exception", exc.reason_zh, exc.reason_en, exc.source),
                skips_tier_check=exc.skips_tier_check,
                skips_criteria_check=exc.skips_criteria_check,
                insurance_penalty=exc.insurance_penalty,
                condition=condition,
                facts=frozenset() if condition is None else _recorded_facts(condition),
            )
            exceptions[exc.code] = compiled_exc
            if condition is not None:
                conditional.append(compiled_exc)

        rule_ids: set[str] = set()
        sections: dict[RuleSection, list[CompiledRule]] = {}
        section_names: tuple[RuleSection, ...] = ("emergency", "upward", "downward", "lateral")
        for section in section_names:
            compiled_rules: list[CompiledRule] = []
            for index, rule in enumerate(getattr(model.rules, section)):
                path = ("rules", section, index)
                if rule.id in rule_ids:
                    report.add("duplicate-id", (*path, "id"), name=rule.id)
                rule_ids.add(rule.id)
                compiled_rule = self.rule(rule, section, path)
                if compiled_rule is not None:
                    compiled_rules.append(compiled_rule)
            sections[section] = compiled_rules

        windows = model.insurance.validity
        long_term = self.ranges(
            windows.long_term_out_of_county.icd10, ("insurance", "validity", "long_term_out_of_county", "icd10")
        )
        followups = tuple(
            (self.ranges(item.icd10, ("sla", "followup", "by_icd10", index, "icd10")), item.days)
            for index, item in enumerate(model.sla.followup.by_icd10)
        )
        ack = model.sla.receiver_ack_minutes

        if report.errors:
            return None
        return CompiledPolicy(
            model=model,
            document=document,
            effective_from_line=effective_from_at[0],
            effective_from_column=effective_from_at[1],
            tiers=tiers,
            facts=self.facts,
            flags=model.flags,
            stable_fact=caps.stable_fact,
            tier_capabilities=tier_caps,
            facility_capabilities=facility_caps,
            emergency_rules=tuple(sections["emergency"]),
            upward_rules=tuple(sections["upward"]),
            downward_rules=tuple(sections["downward"]),
            lateral_rules=tuple(sections["lateral"]),
            exceptions=exceptions,
            conditional_exceptions=tuple(conditional),
            emergency_min_level=tiers[model.routing.emergency_min_tier].level,
            home_facility_fact=home_fact,
            min_override_chars=model.override.min_reason_chars,
            ack_minutes={"routine": ack.routine, "urgent": ack.urgent, "asap": ack.asap, "stat": ack.stat},
            long_term_codes=long_term,
            followup_overrides=followups,
            reads_to_tier=any(_reads_to_tier(r.condition) for rules in sections.values() for r in rules)
            or any(_reads_to_tier(e.condition) for e in conditional if e.condition is not None),
        )


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _index_node(node: yaml.Node, path: Path, marks: _Marks, report: _Reporter, active: set[int]) -> None:
    marks.values.setdefault(path, node.start_mark)
    if id(node) in active:  # an alias that refers to its own ancestor: stop, the constructor copes
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child: Path = (*path, key)
            if key in seen:
                marks.keys[child] = key_node.start_mark
                report.add("duplicate-key", child, name=key)
            seen.add(key)
            marks.keys[child] = key_node.start_mark
            _index_node(value_node, child, marks, report, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_node(item, (*path, index), marks, report, active)
    active.discard(id(node))


def _parse_yaml(text: str, report: _Reporter) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            report.add("empty-document", ())
            return None
        _index_node(node, (), report.marks, report, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            # PyYAML notices an unclosed bracket where it ends; say where it was opened too.
            context = f"{context} (line {exc.context_mark.line + 1})"
        detail = " ".join(part for part in (context, exc.problem) if part) or str(exc)
        zh, en = _MESSAGES["yaml-syntax"]
        report.errors.append(
            PolicyError(
                code="yaml-syntax",
                message_zh=zh.format(detail=detail),
                message_en=en.format(detail=detail),
                path="",
                line=None if mark is None else mark.line + 1,
                column=None if mark is None else mark.column + 1,
                document=report.document,
            )
        )
        return None
    except yaml.YAMLError as exc:
        report.add("yaml-syntax", (), detail=str(exc))
        return None
    finally:
        loader.dispose()


_VALID_PREFIX: Final = "Input should be a valid "


def _report_pydantic(exc: ValidationError, report: _Reporter) -> None:
    # A value that fits no member of a union (``value: bool | int | float | str | list``) fails once per member,
    # each with the member's name in ``loc``: fold those into one error at the path that exists in the file.
    invalid: dict[Path, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc: Path = tuple(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            report.add("unknown-field", loc, name=str(loc[-1]) if loc else "")
        elif kind == "missing":
            report.add("missing-field", loc, name=str(loc[-1]) if loc else "")
        else:
            located, _, _ = report.marks.locate(loc)
            invalid.setdefault(located, []).append(error["msg"])
    for located, messages in invalid.items():
        unique = list(dict.fromkeys(messages))
        if len(unique) > 1 and all(m.startswith(_VALID_PREFIX) for m in unique):
            kinds = [m.removeprefix(_VALID_PREFIX) for m in unique]
            detail = f"{_VALID_PREFIX}{', '.join(kinds[:-1])} or {kinds[-1]}"
        else:
            detail = "; ".join(unique)
        report.add("invalid-value", located, detail=detail)


def _compile(text: str, document: str | None) -> tuple[CompiledPolicy | None, list[PolicyError]]:
    report = _Reporter(_Marks(), document)
    data = _parse_yaml(text, report)
    if report.errors:
        return None, _sorted(report.errors)
    try:
        model = Policy.model_validate(data)
    except ValidationError as exc:
        _report_pydantic(exc, report)
        return None, _sorted(report.errors)
    _, line, column = report.marks.locate(("effective_from",))
    compiled = _Compiler(model, report).compile(document, (line, column))
    return compiled, _sorted(report.errors)


def _sorted(errors: list[PolicyError]) -> list[PolicyError]:
    return sorted(errors, key=lambda e: (e.line or 0, e.column or 0))


def validate_policy(text: str, *, document: str | None = None) -> list[PolicyError]:
    """Every problem in a policy document (empty when it loads), each with line and column."""
    return _compile(text, document)[1]


def load_policy(text: str, *, document: str | None = None) -> CompiledPolicy:
    """Validate and compile a policy document; raise :class:`PolicyValidationError` listing every problem.

    ``document`` names the source (a file name, an upload id) in errors and in :func:`check_effective_dates`.
    """
    compiled, errors = _compile(text, document)
    if compiled is None:
        raise PolicyValidationError(errors)
    return compiled


@functools.cache
def load_default_policy() -> CompiledPolicy:
    """The shipped default policy (``referral/policies/default.yaml``), compiled once per process."""
    text = files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")
    return load_policy(text, document="default.yaml")


# ---------------------------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------------------------


def _describe(policy: CompiledPolicy) -> str:
    where = policy.document or policy.version_label
    return f"{where}:{policy.effective_from_line}" if policy.effective_from_line else where


def check_effective_dates(versions: Iterable[CompiledPolicy]) -> list[PolicyError]:
    """Refuse two versions of one community that share an ``effective_from`` or whose periods overlap.

    A version runs from its ``effective_from`` until the next version's, or until its own ``effective_until``
    (exclusive) when set; a period that reaches past the next version's start overlaps it. The error names the
    line of the offending (later-listed, or later-starting) version's ``effective_from``.
    """
    by_community: dict[str, list[tuple[date, int, CompiledPolicy]]] = {}
    for order, policy in enumerate(versions):
        by_community.setdefault(policy.community, []).append((policy.effective_from, order, policy))
    errors: list[PolicyError] = []
    for community, entries in by_community.items():
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        for (_, _, earlier), (_, _, later) in itertools.pairwise(entries):
            params: dict[str, object] = {
                "community": community,
                "date": later.effective_from.isoformat(),
                "other": _describe(earlier),
            }
            if later.effective_from == earlier.effective_from:
                code = "duplicate-effective-from"
            elif earlier.effective_until is not None and earlier.effective_until > later.effective_from:
                code = "overlapping-effective-dates"
                params["until"] = earlier.effective_until.isoformat()
            else:
                continue
            zh, en = _MESSAGES[code]
            errors.append(
                PolicyError(
                    code=code,
                    message_zh=zh.format(**params),
                    message_en=en.format(**params),
                    path="effective_from",
                    line=later.effective_from_line,
                    column=later.effective_from_column,
                    document=later.document,
                )
            )
    return errors


def policy_in_force(versions: Iterable[CompiledPolicy], community: str, on: date) -> CompiledPolicy | None:
    """The version of ``community`` in force on ``on`` (the latest that has started and not ended)."""
    best: CompiledPolicy | None = None
    for policy in versions:
        if policy.community != community or policy.effective_from > on:
            continue
        if policy.effective_until is not None and on >= policy.effective_until:
            continue
        if best is None or policy.effective_from > best.effective_from:
            best = policy
    return best
