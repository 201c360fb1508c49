"""Errors of the referral domain, each with its HTTP status and messages in zh-CN and English.

No patient data goes into a problem document: a refusal names rule ids, reason codes and fact names only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from telemed.core.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound, register_validation_messages

register_validation_messages(
    {
        "referral.override_required": (
            "该转诊需要书面说明越权理由（override_reason）",
            "This referral needs a written override reason (override_reason)",
        ),
        "referral.override_reason_too_short": ("越权理由过短", "The override reason is too short"),
        "referral.summary_required": (
            "完成转诊须填写回执摘要",
            "Completing a referral needs a counter-referral summary",
        ),
        "referral.reason_code_required": ("请选择原因", "A reason code is required"),
        "referral.study_uid": ("DICOM UID 格式不正确", "Not a DICOM UID (digits and dots, at most 64 characters)"),
        "referral.facility_required": (
            "您的账户未关联机构，无法转诊",
            "Your account has no facility to refer from",
        ),
        "referral.based_on_invalid": (
            "下转须基于本机构已完成的上转转诊，且为同一患者",
            "A down-referral must be based on a completed up-referral of the same patient received here",
        ),
    }
)  # fmt: skip


class ReferralNotFound(NotFound):
    """Also what a caller gets for a referral outside their scope, so that its existence is not revealed."""

    code = "referral.not_found"

    def __init__(self) -> None:
        super().__init__("未找到该转诊单，或您无权查看", "No such referral, or not within your scope")


class ReferralRoleForbidden(Forbidden):
    code = "referral.role_forbidden"

    def __init__(self) -> None:
        super().__init__("您的角色无权访问转诊（含患者信息）", "Your role has no access to referrals (patient data)")


class NotYourAction(Forbidden):
    code = "referral.not_your_action"

    def __init__(self, action: str) -> None:
        super().__init__(f"您无权对该转诊执行“{action}”", f"You may not '{action}' this referral")


class IllegalTransition(Conflict):
    code = "referral.illegal_transition"
    title_zh = "当前状态下不能执行该操作"
    title_en = "This action is not possible in the referral's current status"

    def __init__(self, status: str, command: str) -> None:
        super().__init__(
            f"转诊单状态为“{status}”，不能执行“{command}”",
            f"The referral is '{status}'; '{command}' is not possible",
            extra={"status_now": status, "action": command},
        )


class ConcurrentChange(Conflict):
    code = "referral.concurrent_change"

    def __init__(self) -> None:
        super().__init__("转诊单已被他人同时修改，请刷新后重试", "The referral was changed at the same time; reload it")


class PolicyViolation(InvalidInput):
    """The rules engine refused the referral (``blocked``): not something an override can lift."""

    code = "referral.blocked"
    title_zh = "转诊不符合分级诊疗规则，已被拒绝"
    title_en = "The referral breaks the tiered-diagnosis rules and is refused"

    def __init__(self, reasons: Sequence[dict[str, Any]], decision: dict[str, Any]) -> None:
        super().__init__(
            "；".join(str(r["reason_zh"]) for r in reasons) or None,
            "; ".join(str(r["reason_en"]) for r in reasons) or None,
            extra={"outcome": "blocked", "reasons": list(reasons), "decision": decision},
        )


class OverrideRequired(InvalidInput):
    """``needs_override`` without a (long enough) written reason: the error names the missing override."""

    code = "referral.override_required"
    title_zh = "该转诊不符合常规规则，需要书面说明理由"
    title_en = "This referral is outside the usual rules and needs a written reason"

    def __init__(
        self, too_short: bool, min_chars: int, reasons: Sequence[dict[str, Any]], decision: dict[str, Any]
    ) -> None:
        code = "referral.override_reason_too_short" if too_short else "referral.override_required"
        zh = f"越权理由至少{min_chars}个字" if too_short else "请在 override_reason 中书面说明理由"
        en = (
            f"The override reason needs at least {min_chars} characters"
            if too_short
            else "Give a written reason in override_reason"
        )
        super().__init__(
            zh,
            en,
            errors=[FieldError("override_reason", code, zh, en)],
            extra={"outcome": "needs_override", "reasons": list(reasons), "decision": decision},
        )


class PolicyVersionNotFound(NotFound):
    code = "referral_policy.not_found"

    def __init__(self) -> None:
        super().__init__("未找到该规则版本", "No such policy version")


class PolicyInvalid(InvalidInput):
    """An uploaded policy that does not load; every error names its line and column in the YAML."""

    code = "referral_policy.invalid"
    title_zh = "转诊规则文件有误，未发布；当前规则继续生效"
    title_en = "The referral policy has errors and was not published; the current policy stays in force"

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        self.located_errors = list(errors)

    def problem(self, lang: str, instance: str) -> dict[str, Any]:
        body = super().problem(lang, instance)
        body["errors"] = [
            {
                "field": e["path"] or "document",
                "code": e["code"],
                "message": e["message_en"] if lang == "en" else e["message_zh"],
                "line": e["line"],
                "column": e["column"],
                "document": e.get("document"),
            }
            for e in self.located_errors
        ]
        return body


class PatientNotInScope(NotFound):
    code = "patient.not_found"

    def __init__(self) -> None:
        super().__init__("未找到该患者，或您无权查看", "No such patient, or not within your scope")


class UnknownAction(NotFound):
    code = "referral.unknown_action"

    def __init__(self) -> None:
        super().__init__("没有这个转诊操作", "There is no such referral action")
