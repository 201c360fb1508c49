"""Errors of the registry, each with its HTTP status and messages in zh-CN and English."""

from __future__ import annotations

from typing import Final

from telemed.core.errors import Conflict, NotFound, register_validation_messages

register_validation_messages(
    {
        "id_number.format": (
            "身份证号应为18位，前17位为数字，末位为数字或X",
            "An ID number has 18 characters: 17 digits, then a digit or X",
        ),
        "id_number.province": ("身份证号的行政区划代码无效", "The ID number's division code is not a valid province"),
        "id_number.birth_date": ("身份证号中的出生日期无效", "The birth date inside the ID number is not valid"),
        "id_number.checksum": ("身份证号校验码错误", "The ID number's check character is wrong (GB 11643)"),
        "phone.format": ("手机号应为11位中国大陆手机号", "A phone number is an 11-digit mainland mobile number"),
        "birth_date.mismatch": ("出生日期与身份证号不符", "The birth date does not match the ID number"),
        "sex.mismatch": ("性别与身份证号不符", "The sex does not match the ID number"),
        "password.too_short": ("密码至少12位", "The password needs at least 12 characters"),
        "password.too_simple": (
            "密码须包含大写字母、小写字母、数字、符号中的至少三类",
            "The password needs three of: upper case, lower case, digits, symbols",
        ),
        "password.contains_username": ("密码不得包含用户名", "The password must not contain the username"),
    }
)  # fmt: skip

PATIENT_NOT_FOUND_ZH: Final = "未找到该患者，或您无权查看"
PATIENT_NOT_FOUND_EN: Final = "No such patient, or not within your scope"


class PatientNotFound(NotFound):
    code = "patient.not_found"

    def __init__(self) -> None:
        super().__init__(PATIENT_NOT_FOUND_ZH, PATIENT_NOT_FOUND_EN)


class DuplicatePatient(Conflict):
    code = "patient.duplicate"
    title_zh = "该患者已登记"
    title_en = "This patient is already registered"

    def __init__(self) -> None:
        super().__init__(
            "社区内已有相同身份证号的患者档案",
            "A patient with the same ID number is already registered in the community",
        )


class FacilityNotFound(NotFound):
    code = "facility.not_found"

    def __init__(self) -> None:
        super().__init__("未找到该机构", "No such facility")


class DuplicateCode(Conflict):
    code = "registry.duplicate_code"

    def __init__(self, what: str) -> None:
        super().__init__(f"编码已存在：{what}", f"The code is already in use: {what}")


class UnknownReference(NotFound):
    code = "registry.unknown_reference"

    def __init__(self, field: str) -> None:
        super().__init__(f"引用的对象不存在：{field}", f"The referenced object does not exist: {field}")
