"""Loading the referral policy: the default loads, and every kind of mistake is reported at its line."""

from __future__ import annotations

from datetime import date
from importlib.resources import files

import pytest

from referral.policy import (
    IcdRangeSet,
    PolicyError,
    PolicyValidationError,
    check_effective_dates,
    icd10_key,
    load_default_policy,
    load_policy,
    parse_icd10_pattern,
    policy_in_force,
    validate_policy,
)

DEFAULT_TEXT = files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of ``needle``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1


def mutate(old: str, new: str, text: str = DEFAULT_TEXT) -> tuple[str, int]:
    """Replace the first ``old`` with ``new``; return the text and the line where the change starts."""
    assert old in text, old
    return text.replace(old, new, 1), line_of(text, old)


def only_error(text: str, code: str) -> PolicyError:
    errors = validate_policy(text)
    matching = [e for e in errors if e.code == code]
    assert len(matching) == 1, errors
    return matching[0]


# -- the default policy ------------------------------------------------------------------------------------------


def test_default_policy_loads_without_errors() -> None:
    assert validate_policy(DEFAULT_TEXT) == []
    policy = load_default_policy()
    assert policy.community == "default"
    assert policy.version_label == "default@2026.1"
    assert policy.effective_from == date(2026, 1, 1)
    assert policy.effective_from_line == line_of(DEFAULT_TEXT, "effective_from:")
    assert load_default_policy() is policy  # compiled once per process


def test_default_policy_covers_the_guideline_areas() -> None:
    policy = load_default_policy()
    ids = {r.id for r in (*policy.emergency_rules, *policy.upward_rules, *policy.downward_rules)}
    for expected in (
        "HTN-EMERG-01",
        "HTN-FU-01",
        "ACS-PCI-01",
        "STROKE-THROMB-01",
        "DM-ACUTE-01",
        "DM-SPEC-01",
        "COPD-AE-01",
        "OB-CRIT-01",
        "NEO-CRIT-01",
        "EMG-GCS-01",
        "EMG-RESP-01",
        "DOWN-STABLE-01",
        "DOWN-VILLAGE-01",
    ):
        assert expected in ids
    assert set(policy.exceptions) >= {"emergency-green-channel", "patient-choice-self-pay"}


def test_every_default_rule_cites_a_source_and_explains_itself_in_both_languages() -> None:
    model = load_default_policy().model
    rules = [*model.rules.emergency, *model.rules.upward, *model.rules.downward, *model.rules.lateral]
    for rule in rules:
        assert rule.source.strip(), rule.id
        assert rule.reason_zh.strip()
        assert rule.reason_en.strip(), rule.id
    for exc in model.exceptions:
        assert exc.source.strip(), exc.code
    assert model.insurance.validity.primary_first.source
    assert model.sla.receiver_ack_minutes.source


# -- YAML syntax and structure -----------------------------------------------------------------------------------


def test_bad_yaml_syntax_names_the_line() -> None:
    text, line = mutate("title_en: Default two-way", "title_en: Default: two-way")
    error = only_error(text, "yaml-syntax")
    assert (error.line, error.column) == (line, len("title_en: Default") + 1)
    assert "YAML" in error.message_en
    assert "YAML" in error.message_zh


def test_unclosed_bracket_names_where_it_was_opened() -> None:
    text, line = mutate("title_en: Default two-way", "title_en: [Default two-way")
    error = only_error(text, "yaml-syntax")
    # PyYAML notices at the next key; the message names the line the sequence was opened on.
    assert error.line is not None
    assert error.line > line
    assert f"(line {line})" in error.message_en


def test_tab_indentation_is_a_syntax_error_at_its_line() -> None:
    text, line = mutate("  escalation:\n", "  escalation:\n\t  bad: 1\n")
    error = only_error(text, "yaml-syntax")
    assert error.line == line + 1


def test_empty_document_is_reported() -> None:
    assert [e.code for e in validate_policy("")] == ["empty-document"]


def test_document_that_is_not_a_mapping_is_reported_at_line_one() -> None:
    errors = validate_policy("- just\n- a list\n")
    assert errors
    assert errors[0].code == "invalid-value"
    assert errors[0].line == 1


def test_duplicate_key_names_the_second_occurrence() -> None:
    text, line = mutate("title_en: Default", "title_zh: 又一个标题\ntitle_en: Default")
    error = only_error(text, "duplicate-key")
    assert error.line == line
    assert "title_zh" in error.message_en


# -- pydantic shape errors mapped to lines --------------------------------------------------------------------


def test_unknown_field_in_a_rule_names_its_line() -> None:
    text, line = mutate("    - id: HTN-EMERG-02\n", "    - id: HTN-EMERG-02\n      severity: high\n")
    error = only_error(text, "unknown-field")
    assert error.line == line + 1
    assert error.column == 7
    assert error.path == "rules.emergency[1].severity"
    assert "severity" in error.message_zh
    assert "severity" in error.message_en


def test_unknown_field_inside_a_condition_names_its_line() -> None:
    text, line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: gcs, op: "<=", value: 12, unit: points}')
    error = only_error(text, "unknown-field")
    assert error.line == line
    assert error.path.endswith("when.unit")


def test_missing_required_field_points_at_its_parent() -> None:
    rule_start = "    - id: EMG-ANAPHYLAXIS-01\n"
    block_start = DEFAULT_TEXT.index(rule_start)
    reason_line = DEFAULT_TEXT.index("      reason_en:", block_start)
    end = DEFAULT_TEXT.index("\n", reason_line) + 1
    text = DEFAULT_TEXT[:reason_line] + DEFAULT_TEXT[end:]
    error = only_error(text, "missing-field")
    assert error.line == line_of(DEFAULT_TEXT, rule_start)
    assert error.path.endswith("reason_en")


def test_wrong_type_names_the_value_line() -> None:
    text, line = mutate("      days: 180\n", "      days: half a year\n")
    error = only_error(text, "invalid-value")
    assert error.line == line
    assert error.path == "insurance.validity.primary_first.days"


def test_unknown_top_level_field() -> None:
    text, line = mutate("title_zh: 县域", "colour: red\ntitle_zh: 县域")
    error = only_error(text, "unknown-field")
    assert (error.line, error.column, error.path) == (line, 1, "colour")


def test_value_fitting_no_union_member_is_one_error() -> None:
    text, line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: gcs, op: "<=", value: {points: 12}}')
    errors = validate_policy(text)
    assert [(e.code, e.line) for e in errors] == [("invalid-value", line)]
    assert errors[0].path.endswith("when.value")


def test_unknown_priority_is_rejected() -> None:
    text, line = mutate("      priority: urgent\n", "      priority: whenever\n")
    error = only_error(text, "invalid-value")
    assert error.line == line


# -- semantic errors -------------------------------------------------------------------------------------------


def test_unknown_operator_names_its_line() -> None:
    text, line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: gcs, op: "=<", value: 12}')
    error = only_error(text, "unknown-operator")
    assert error.line == line
    assert error.path.endswith("when.op")
    assert "=<" in error.message_en
    assert "=<" in error.message_zh


def test_unknown_operator_in_a_nested_group() -> None:
    text, line = mutate(
        '              - {fact: limb_paralysis, op: "==", value: true}',
        '              - {fact: limb_paralysis, op: "is", value: true}',
    )
    error = only_error(text, "unknown-operator")
    assert error.line == line
    assert error.path == "rules.emergency[0].when.all[1].any[3].op"


def test_unknown_fact_names_its_line() -> None:
    text, line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: glasgow, op: "<=", value: 12}')
    error = only_error(text, "unknown-fact")
    assert error.line == line
    assert "glasgow" in error.message_en


def test_operator_that_does_not_fit_the_fact_type() -> None:
    text, line = mutate('{fact: anaphylaxis, op: "==", value: true}', '{fact: anaphylaxis, op: ">", value: 1}')
    error = only_error(text, "operator-not-applicable")
    assert error.line == line


def test_value_of_the_wrong_type_for_the_fact() -> None:
    text, line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: gcs, op: "<=", value: twelve}')
    error = only_error(text, "invalid-value")
    assert error.line == line


def test_string_value_outside_the_declared_values() -> None:
    text, line = mutate("value: [clouded, lost]", "value: [clouded, comatose]")
    error = only_error(text, "invalid-value")
    assert error.line == line
    assert "comatose" in error.message_en


@pytest.mark.parametrize("bad", ["I64-I60", "I6x", "63", "I63.12", "ICD:I63"])
def test_unknown_icd10_range_syntax_names_its_line(bad: str) -> None:
    text, line = mutate("value: [I60-I64]", f'value: ["{bad}"]')
    error = only_error(text, "invalid-icd10-range")
    assert error.line == line
    assert bad in error.message_en


def test_bad_icd10_range_in_capabilities() -> None:
    text, line = mutate("      except: [C, Q20-Q28]", "      except: [C, Q20--Q28]")
    error = only_error(text, "invalid-icd10-range")
    assert error.line == line
    assert error.path == "capabilities.tiers.county.except[1]"


def test_condition_mixing_leaf_and_group() -> None:
    text, line = mutate(
        '      when: {fact: anaphylaxis, op: "==", value: true}',
        '      when: {fact: anaphylaxis, op: "==", value: true, any: [{fact: apathy, op: "==", value: true}]}',
    )
    error = only_error(text, "bad-condition")
    assert error.line == line


def test_reference_to_unknown_flag_and_exception() -> None:
    text, flag_line = mutate("      target_capability: pci_capable\n", "      target_capability: cath_lab\n")
    text, exc_line = mutate("      exception: critical-direct-to-secondary\n", "      exception: vip\n", text)
    errors = validate_policy(text)
    assert [(e.code, e.line) for e in errors] == [("unknown-flag", flag_line), ("unknown-exception", exc_line)]


def test_duplicate_rule_id_names_the_second() -> None:
    text, line = mutate("    - id: EMG-GCS-01\n", "    - id: EMG-RESP-01\n")
    error = only_error(text, "duplicate-id")
    # The renamed rule comes first in the document, so the original EMG-RESP-01 below it is the duplicate.
    assert error.line == line_of(DEFAULT_TEXT, "    - id: EMG-RESP-01\n")
    assert error.line > line


def test_unknown_tier_in_target_tiers() -> None:
    text, line = mutate("      target_tiers: [village]\n", "      target_tiers: [hamlet]\n")
    error = only_error(text, "unknown-tier")
    assert error.line == line


def test_every_problem_is_reported_in_document_order() -> None:
    text, op_line = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: gcs, op: "~", value: 12}')
    text, fact_line = mutate('{fact: rr, op: ">", value: 30}', '{fact: resp, op: ">", value: 30}', text)
    errors = validate_policy(text)
    assert [(e.code, e.line) for e in errors] == [("unknown-operator", op_line), ("unknown-fact", fact_line)]
    with pytest.raises(PolicyValidationError) as raised:
        load_policy(text, document="county-x.yaml")
    assert len(raised.value.errors) == 2
    assert f"line {op_line}" in str(raised.value)
    assert all(e.document == "county-x.yaml" for e in raised.value.errors)


def test_messages_are_bilingual() -> None:
    text, _ = mutate('{fact: gcs, op: "<=", value: 12}', '{fact: glasgow, op: "~", value: 12}')
    for error in validate_policy(text):
        assert error.message_zh
        assert error.message_en
        assert error.message_zh != error.message_en
        assert any("\u4e00" <= ch <= "\u9fff" for ch in error.message_zh)


def test_effective_until_must_follow_effective_from() -> None:
    text, line = mutate("effective_from: 2026-01-01\n", "effective_from: 2026-01-01\neffective_until: 2025-12-31\n")
    error = only_error(text, "bad-effective-range")
    assert error.line == line + 1


# -- versions ---------------------------------------------------------------------------------------------------


def version(effective_from: str, *, until: str | None = None, community: str = "default", doc: str = "v.yaml") -> str:
    text = DEFAULT_TEXT.replace("effective_from: 2026-01-01\n", f"effective_from: {effective_from}\n", 1)
    if until is not None:
        text = text.replace(
            f"effective_from: {effective_from}\n", f"effective_from: {effective_from}\neffective_until: {until}\n", 1
        )
    return text.replace("community: default\n", f"community: {community}\n", 1)


def test_duplicate_effective_from_names_the_later_documents_line() -> None:
    first = load_policy(version("2026-01-01"), document="a.yaml")
    # Push effective_from down two lines so the reported line is clearly the second document's.
    second_text = version("2026-01-01").replace("community:", "# 重复版本\n# duplicate\ncommunity:", 1)
    second = load_policy(second_text, document="b.yaml")
    errors = check_effective_dates([first, second])
    assert len(errors) == 1
    error = errors[0]
    assert error.code == "duplicate-effective-from"
    assert error.document == "b.yaml"
    assert error.line == line_of(second_text, "effective_from:")
    assert error.line == (first.effective_from_line or 0) + 2
    assert error.column == 1
    assert "a.yaml" in error.message_en
    assert "2026-01-01" in error.message_zh


def test_overlapping_periods_name_the_later_start() -> None:
    old = load_policy(version("2025-01-01", until="2026-03-01"), document="2025.yaml")
    new = load_policy(version("2026-01-01"), document="2026.yaml")
    errors = check_effective_dates([new, old])
    assert [(e.code, e.document, e.line) for e in errors] == [
        ("overlapping-effective-dates", "2026.yaml", new.effective_from_line)
    ]
    assert "2026-03-01" in errors[0].message_en


def test_consecutive_versions_and_other_communities_are_fine() -> None:
    versions = [
        load_policy(version("2025-01-01", until="2026-01-01")),
        load_policy(version("2026-01-01")),
        load_policy(version("2027-01-01")),
        load_policy(version("2026-01-01", community="other-county")),
    ]
    assert check_effective_dates(versions) == []
    assert policy_in_force(versions, "default", date(2025, 6, 1)) is versions[0]
    assert policy_in_force(versions, "default", date(2026, 1, 1)) is versions[1]
    assert policy_in_force(versions, "default", date(2030, 1, 1)) is versions[2]
    assert policy_in_force(versions, "other-county", date(2026, 6, 1)) is versions[3]
    assert policy_in_force(versions, "default", date(2024, 12, 31)) is None


# -- ICD-10 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "same_as"),
    [
        ("I10.x00x002", "I10"),  # 国家临床版 extension of an unspecified subcategory
        ("I21.900", "I21.9"),
        ("i21.9", "I21.9"),
        ("I219", "I21.9"),
        ("E11.9†", "E11.9"),
    ],
)
def test_national_edition_codes_reduce_to_who_prefixes(code: str, same_as: str) -> None:
    assert icd10_key(code) == icd10_key(same_as)
    assert icd10_key(code) is not None


@pytest.mark.parametrize("code", ["", "10", "I1", "高血压", "I10..1"])
def test_non_icd10_codes_are_rejected(code: str) -> None:
    assert icd10_key(code) is None


def test_range_membership() -> None:
    bounds = [parse_icd10_pattern(p) for p in ("I20-I25", "I10", "M50.0-M51.2", "C")]
    ranges = IcdRangeSet.from_bounds(b for b in bounds if b is not None)

    def has(code: str) -> bool:
        key = icd10_key(code)
        assert key is not None, code
        return key in ranges

    assert all(has(c) for c in ("I20", "I21.0", "I25.9", "I10", "I10.0", "M50.0", "M51.2", "C00", "C97"))
    assert not any(has(c) for c in ("I19", "I26", "I11", "M51.3", "D00", "B99.9"))
    # The whole chapter C is one interval; I20-I25 and nothing touching it stay separate.
    assert len(ranges.starts) == 4
