"""Policy administration: upload with line-numbered errors, effective dates, the version in force, diff, dry run."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from referral.policy import load_policy
from referral.store import EXTRAS_KEY, PolicyStore, store_of
from tests.conftest import Community
from tests.referral.test_api import HTN_EMERGENCY, emergency_referral, new_patient, refer

DEFAULT_TEXT = files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")
NEW_RULE = """    - id: EMG-TEST-01
      reason_zh: 测试新增规则
      reason_en: a rule added for the test
      source: test
      priority: stat
      when: {fact: convulsions, op: "==", value: true}
"""


def line_of(text: str, needle: str) -> int:
    return text.count("\n", 0, text.index(needle)) + 1


def version_text(
    version: str = "2026.2",
    effective_from: str = "2026-06-01",
    *,
    community: str = "qingtian",
    effective_until: str | None = None,
    stricter_emergency: bool = False,
    edit_rules: bool = False,
) -> str:
    text = DEFAULT_TEXT.replace("community: default", f"community: {community}", 1)
    text = text.replace('version: "2026.1"', f'version: "{version}"', 1)
    header = f"effective_from: {effective_from}"
    if effective_until:
        header += f"\neffective_until: {effective_until}"
    text = text.replace("effective_from: 2026-01-01", header, 1)
    if stricter_emergency:  # HTN-EMERG-01 holds only from 200/120
        text = text.replace('{fact: bp_sys, op: ">=", value: 180}', '{fact: bp_sys, op: ">=", value: 200}', 1)
        text = text.replace('{fact: bp_dia, op: ">=", value: 110}', '{fact: bp_dia, op: ">=", value: 120}', 1)
    if edit_rules:
        text = re.sub(r"    - id: EMG-ANAPHYLAXIS-01\n(?:      .*\n)+", "", text, count=1)
        text = text.replace("    - id: EMG-FEVER-01\n", NEW_RULE + "    - id: EMG-FEVER-01\n", 1)
    return text


async def upload(client: httpx.AsyncClient, headers: dict[str, str], text: str, *, raw: bool = False) -> httpx.Response:
    if raw:
        return await client.post(
            "/api/v1/referral-policies",
            content=text.encode(),
            headers={**headers, "Content-Type": "application/yaml"},
        )
    return await client.post("/api/v1/referral-policies", json={"yaml": text}, headers=headers)


async def policy_in_use(client: httpx.AsyncClient, community: Community) -> str:
    vd = await community.login(client, "vd_a1")
    checked = await client.post(
        "/api/v1/referrals/evaluate", json={"icd10": ["I10"], "facts": HTN_EMERGENCY}, headers=vd
    )
    assert checked.status_code == 200, checked.text
    label: str = checked.json()["policy_version"]
    return label


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "referral_policy.invalid"
    errors: list[dict[str, Any]] = body["errors"]
    return errors


async def test_an_uploaded_version_takes_over_and_is_listed(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    admin = await community.login(client, "admin")
    assert await policy_in_use(client, community) == "default@2026.1"
    text = version_text()
    created = await upload(client, admin, text, raw=True)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["label"] == "qingtian@2026.2"
    assert body["active"] is True
    assert body["builtin"] is False
    assert body["yaml_text"] == text
    assert body["uploaded_by"] == str(community.users["admin"])
    assert await policy_in_use(client, community) == "qingtian@2026.2"

    listed = (await client.get("/api/v1/referral-policies", headers=admin)).json()
    assert [(v["id"], v["active"], v["builtin"]) for v in listed] == [
        ("default", False, True),
        (body["id"], True, False),
    ]
    assert listed[0]["rules"] == listed[1]["rules"] > 20
    fetched = await client.get(f"/api/v1/referral-policies/{body['id']}", headers=admin)
    assert fetched.json()["yaml_text"] == text
    default = await client.get("/api/v1/referral-policies/default", headers=admin)
    assert default.json()["yaml_text"] == DEFAULT_TEXT
    assert (await client.get("/api/v1/referral-policies/nope", headers=admin)).status_code == 404

    # A referral records the version it was checked under.
    rid = await emergency_referral(client, community)
    spec = await community.login(client, "spec")
    stored = (await client.get(f"/api/v1/referrals/{rid}", headers=spec)).json()
    assert stored["policy_version"] == "qingtian@2026.2"
    assert stored["policy_version_id"] == body["id"]


async def test_a_version_not_yet_in_force_waits(client: httpx.AsyncClient, community: Community) -> None:
    admin = await community.login(client, "admin")
    future = await upload(client, admin, version_text("2099.1", "2099-01-01"))
    assert future.status_code == 201
    assert future.json()["active"] is False
    assert await policy_in_use(client, community) == "default@2026.1"


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        pytest.param("title_en: Default two-way", "title_en: Default: two-way", "yaml-syntax", id="bad-yaml"),
        pytest.param(
            '{fact: anaphylaxis, op: "==", value: true}',
            '{fact: anaphylaxis, op: "~=", value: true}',
            "unknown-operator",
            id="unknown-operator",
        ),
        pytest.param(
            '{fact: anaphylaxis, op: "==", value: true}',
            '{fact: anaphylactic, op: "==", value: true}',
            "unknown-fact",
            id="unknown-fact",
        ),
        pytest.param(
            "      title_zh: 意识丧失或模糊\n",
            "      title_zh: 意识丧失或模糊\n      colour: red\n",
            "unknown-field",
            id="unknown-field",
        ),
    ],
)
async def test_a_malformed_policy_is_refused_at_its_line_and_the_active_one_stays(
    client: httpx.AsyncClient, community: Community, old: str, new: str, code: str
) -> None:
    admin = await community.login(client, "admin")
    assert (await upload(client, admin, version_text("2026.2", "2026-02-01"))).status_code == 201
    text = version_text("2026.3", "2026-03-01")
    assert old in text
    broken = text.replace(old, new, 1)
    expected_line = line_of(broken, new.strip().splitlines()[-1])
    errors = errors_of(await upload(client, admin, broken))
    located = [e for e in errors if e["code"] == code]
    assert located, errors
    assert located[0]["line"] == expected_line
    assert located[0]["column"] >= 1
    assert located[0]["message"]
    english = await client.post(
        "/api/v1/referral-policies", json={"yaml": broken}, headers={**admin, "Accept-Language": "en"}
    )
    assert english.json()["title"].startswith("The referral policy has errors")
    # Nothing was stored; the version in force is still the one before.
    listed = (await client.get("/api/v1/referral-policies", headers=admin)).json()
    assert [v["label"] for v in listed] == ["default@2026.1", "qingtian@2026.2"]
    assert await policy_in_use(client, community) == "qingtian@2026.2"


async def test_an_unclosed_bracket_is_reported_where_it_was_opened_too(
    client: httpx.AsyncClient, community: Community
) -> None:
    admin = await community.login(client, "admin")
    broken = version_text().replace("title_en: Default two-way", "title_en: [Default two-way", 1)
    (error,) = errors_of(await upload(client, admin, broken))
    assert error["code"] == "yaml-syntax"
    assert f"line {line_of(broken, 'title_en: [')}" in error["message"]
    assert error["line"] > line_of(broken, "title_en: [")


async def test_overlapping_or_repeated_dates_and_labels_are_refused(
    client: httpx.AsyncClient, community: Community
) -> None:
    admin = await community.login(client, "admin")
    first = version_text("2026.2", "2026-02-01", effective_until="2027-02-01")
    assert (await upload(client, admin, first)).status_code == 201

    overlapping = version_text("2026.3", "2026-09-01")
    (error,) = errors_of(await upload(client, admin, overlapping))
    assert error["code"] == "overlapping-effective-dates"
    assert error["line"] == line_of(overlapping, "effective_from:")
    assert "2027-02-01" in error["message"]

    same_day = version_text("2026.4", "2026-02-01")
    (error,) = errors_of(await upload(client, admin, same_day))
    assert error["code"] == "duplicate-effective-from"
    assert error["line"] == line_of(same_day, "effective_from:")

    same_label = version_text("2026.2", "2028-01-01")
    (error,) = errors_of(await upload(client, admin, same_label))
    assert error["code"] == "duplicate-version"
    assert error["line"] == line_of(same_label, "version:")

    # An earlier start that runs into a stored version is reported at the upload's own effective_until.
    earlier = version_text("2025.9", "2025-06-01", effective_until="2026-03-01")
    (error,) = errors_of(await upload(client, admin, earlier))
    assert error["code"] == "overlapping-effective-dates"
    assert error["line"] == line_of(earlier, "effective_until:")
    assert error["field"] == "effective_until"

    # After the first version ends, a new one may follow; another community has its own calendar.
    assert (await upload(client, admin, version_text("2027.1", "2027-02-01"))).status_code == 201
    assert await policy_in_use(client, community) == "qingtian@2026.2"
    assert (await upload(client, admin, version_text("2026.2", "2026-02-01", community="jingning"))).status_code == 201
    # One deployment serves one community: of two started on the same day, the later upload is in force.
    assert await policy_in_use(client, community) == "jingning@2026.2"


async def test_only_administrators_manage_the_policy(client: httpx.AsyncClient, community: Community) -> None:
    for username in ("spec", "vd_a1", "analyst"):
        headers = await community.login(client, username)
        assert (await upload(client, headers, version_text())).status_code == 403
        assert (await client.get("/api/v1/referral-policies", headers=headers)).status_code == 403
        assert (await client.get("/api/v1/referral-policies/default", headers=headers)).status_code == 403
        assert (await client.post("/api/v1/referral-policies/default/dry-run", headers=headers)).status_code == 403
    admin = await community.login(client, "admin")
    not_yaml = await client.post(
        "/api/v1/referral-policies", content=b"\xff\xfe", headers={**admin, "Content-Type": "application/yaml"}
    )
    assert not_yaml.status_code == 422
    assert not_yaml.json()["errors"][0]["field"] == "document"


async def test_the_diff_shows_text_and_rule_changes(client: httpx.AsyncClient, community: Community) -> None:
    admin = await community.login(client, "admin")
    created = await upload(client, admin, version_text(stricter_emergency=True, edit_rules=True))
    new_id = created.json()["id"]
    diff = await client.get(f"/api/v1/referral-policies/diff?from=default&to={new_id}", headers=admin)
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert (body["from_label"], body["to_label"]) == ("default@2026.1", "qingtian@2026.2")
    assert body["rules_added"] == [{"id": "EMG-TEST-01", "section": "emergency", "fields": []}]
    assert body["rules_removed"] == [{"id": "EMG-ANAPHYLAXIS-01", "section": "emergency", "fields": []}]
    assert body["rules_changed"] == [{"id": "HTN-EMERG-01", "section": "emergency", "fields": ["when"]}]
    assert {"community", "version", "effective_from"} <= set(body["sections_changed"])
    assert "insurance" not in body["sections_changed"]
    unified = body["unified_diff"]
    assert unified.startswith("--- default@2026.1 (default)\n+++ qingtian@2026.2")
    assert "\n-community: default\n" in unified
    assert "\n+community: qingtian\n" in unified
    assert '+              - {fact: bp_sys, op: ">=", value: 200}' in unified
    assert "+    - id: EMG-TEST-01" in unified
    assert "-    - id: EMG-ANAPHYLAXIS-01" in unified
    same = (await client.get("/api/v1/referral-policies/diff?from=default&to=default", headers=admin)).json()
    assert same["unified_diff"] == ""
    assert same["rules_changed"] == []
    assert same["sections_changed"] == []
    missing = await client.get("/api/v1/referral-policies/diff?from=default&to=nope", headers=admin)
    assert missing.status_code == 404


async def test_a_dry_run_reports_the_decisions_that_would_change(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    emergency = await emergency_referral(client, community)
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    diabetic = await refer(client, vd, patient, community.facilities["centre_a"], ["E11.9"], {"pregnant": True})
    assert diabetic.status_code == 201
    admin = await community.login(client, "admin")
    # A stricter version that is not yet in force can be tried on the referrals already made.
    created = await upload(client, admin, version_text("2099.1", "2099-01-01", stricter_emergency=True))
    version_id = created.json()["id"]
    run = await client.post(f"/api/v1/referral-policies/{version_id}/dry-run?months=3", headers=admin)
    assert run.status_code == 200, run.text
    body = run.json()
    assert body["policy_version"] == "qingtian@2099.1"
    assert body["months"] == 3
    assert body["evaluated"] == 2
    assert body["changed"] == 1
    (change,) = body["changes"]
    assert change["referral_id"] == emergency
    assert (change["old_outcome"], change["new_outcome"]) == ("allowed", "needs_override")
    assert (change["old_compliant"], change["new_compliant"]) == (True, False)
    assert change["old_policy_version"] == "default@2026.1"
    unchanged = (await client.post("/api/v1/referral-policies/default/dry-run?months=1", headers=admin)).json()
    assert unchanged["evaluated"] == 2
    assert unchanged["changed"] == 0
    assert (await client.post("/api/v1/referral-policies/default/dry-run?months=0", headers=admin)).status_code == 422
    assert (await client.post("/api/v1/referral-policies/nope/dry-run", headers=admin)).status_code == 404
    # Nothing about the stored referrals changed.
    spec = await community.login(client, "spec")
    assert (await client.get(f"/api/v1/referrals/{emergency}", headers=spec)).json()["outcome"] == "allowed"


async def test_each_version_is_compiled_once_per_process(
    app: FastAPI, client: httpx.AsyncClient, community: Community, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await community.login(client, "admin")
    assert (await upload(client, admin, version_text())).status_code == 201
    compiled: list[str | None] = []
    original = load_policy

    def counting(text: str, *, document: str | None = None) -> Any:
        compiled.append(document)
        return original(text, document=document)

    monkeypatch.setattr("referral.store.load_policy", counting)
    for _ in range(3):
        assert await policy_in_use(client, community) == "qingtian@2026.2"
    assert compiled == []  # compiled at upload and kept
    # A fresh process (or another worker) compiles the stored text once, then reuses it.
    app.state.ctx.extras[EXTRAS_KEY] = PolicyStore()
    for _ in range(3):
        assert await policy_in_use(client, community) == "qingtian@2026.2"
    assert len(compiled) == 1
    assert store_of(app.state.ctx.extras).compilations == 1


@pytest.mark.parametrize(("mode", "status"), [("never", "submitted"), ("skip_level_override", "pending_review")])
async def test_the_policy_says_when_the_township_reviews_first(
    client: httpx.AsyncClient, community: Community, mode: str, status: str
) -> None:
    text = version_text().replace("township_review: skip_level_override", f"township_review: {mode}", 1)
    uploaded = await upload(client, await community.login(client, "admin"), text)
    assert uploaded.status_code == 201, uploaded.text
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    facts = {"bp_sys": 150, "bp_dia": 95, "stable": False}
    county = community.facilities["county_hospital"]
    sent = await refer(client, vd, patient, county, ["I10"], facts, override_reason="家属要求到县医院复查")
    assert sent.status_code == 201, sent.text
    assert sent.json()["status"] == status
    assert sent.json()["policy_version"].endswith("2026.2")


def test_an_unknown_township_review_mode_is_refused_with_its_line() -> None:
    from referral.policy import validate_policy

    text = DEFAULT_TEXT.replace("township_review: skip_level_override", "township_review: sometimes", 1)
    errors = validate_policy(text)
    assert errors
    assert errors[0].line == line_of(text, "township_review: sometimes")
