"""Errors of the imaging domain: RFC 9457 problems, and the DICOM status codes of refused instances.

Problems carry no patient data and no DICOM values other than UIDs the caller sent in the path. The STOW-RS
response is the exception to problem documents: PS3.18 §10.5.3 mandates a DICOM JSON body there, with a Failure
Reason per refused instance (:class:`FailureReason`).
"""

from __future__ import annotations

from enum import IntEnum

from telemed.core.errors import Conflict, Forbidden, NotFound, ProblemError


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values this service sends (PS3.18 Table I.2-2; PS3.7 Annex C).

    The ``0xC0xx`` values are implementation-specific refinements of "Error: Cannot understand" (Cxxx), which
    PS3.18 allows ("additional codes may be used"); a client that only knows Cxxx still reads them right.
    """

    out_of_resources = 0xA700
    processing_failure = 0x0110
    duplicate_sop_instance = 0x0111  # another object is already stored under this SOP Instance UID
    not_authorized = 0x0124  # the study belongs to a facility outside the sender's scope
    cannot_understand = 0xC000  # not a DICOM file, or a part that is not application/dicom
    malformed = 0xC001
    truncated = 0xC002
    length_beyond_file = 0xC003
    missing_uid = 0xC004
    invalid_uid = 0xC005
    study_mismatch = 0xC010  # the Study Instance UID differs from the study named in the request URL
    series_in_other_study = 0xC011  # the Series Instance UID is already indexed under another study


class ImagingNotFound(NotFound):
    """Also what a caller gets for a study outside their facility scope, so that existence is not revealed."""

    code = "imaging.not_found"

    def __init__(self) -> None:
        super().__init__("未找到该影像，或您无权查看", "No such study, series or instance, or not within your scope")


class ImagingForbidden(ProblemError):
    status = 403
    code = "imaging.forbidden"
    title_zh = "您的角色无权访问影像"
    title_en = "Your role has no access to images"


class UnsupportedMediaType(ProblemError):
    status = 415
    code = "imaging.unsupported_media_type"
    title_zh = "不支持的内容类型"
    title_en = "Unsupported media type"


class NotAcceptable(ProblemError):
    status = 406
    code = "imaging.not_acceptable"
    title_zh = "无法提供所请求的格式"
    title_en = "The requested representation is not available"


class BadStowRequest(ProblemError):
    status = 400
    code = "imaging.bad_request_body"
    title_zh = "请求体无法解析"
    title_en = "The request body could not be read"


class BadQuery(ProblemError):
    status = 400
    code = "imaging.bad_query"
    title_zh = "查询参数有误"
    title_en = "The query parameters are not valid"


class NotImplementedYet(ProblemError):
    status = 501
    code = "imaging.not_implemented"
    title_zh = "此功能尚未提供"
    title_en = "Not implemented"


class FrameNotFound(NotFound):
    code = "imaging.frame_not_found"

    def __init__(self) -> None:
        super().__init__("请求的帧不存在", "The requested frame does not exist in this instance")


class BlobMissing(ProblemError):
    """An index row whose file is gone: never by construction; ``telemed imaging repair`` reports it."""

    status = 503
    code = "imaging.blob_missing"
    title_zh = "影像文件暂不可用"
    title_en = "The image file is not available"


class DuplicateNode(Conflict):
    code = "imaging.duplicate_ae_title"

    def __init__(self) -> None:
        super().__init__("该 AE 名称已登记", "This AE title is already registered")


class UnknownFacility(NotFound):
    code = "imaging.unknown_facility"

    def __init__(self) -> None:
        super().__init__("机构不存在", "No such facility")


class NodeNotFound(NotFound):
    code = "imaging.node_not_found"

    def __init__(self) -> None:
        super().__init__("未找到该 DICOM 节点", "No such DICOM node")


class ExportForbidden(Forbidden):
    """De-identified exports are made by county radiologists and specialists only."""

    code = "imaging.export_forbidden"
    title_zh = "您的角色无权导出影像"
    title_en = "Your role may not export studies"


class ExportNotFound(NotFound):
    """Also what anyone but the requester gets, so that another user's export is not revealed."""

    code = "imaging.export_not_found"

    def __init__(self) -> None:
        super().__init__("未找到该导出任务，或您无权查看", "No such export, or not one you requested")


class ExportNotReady(Conflict):
    code = "imaging.export_not_ready"
    title_zh = "导出尚未完成，暂不能下载"
    title_en = "The export is not finished; there is nothing to download yet"

    def __init__(self, status: str) -> None:
        super().__init__(f"导出任务状态为“{status}”", f"The export is '{status}'", extra={"export_status": status})


class ExportExpired(ProblemError):
    status = 410
    code = "imaging.export_expired"
    title_zh = "导出文件已过期并被删除"
    title_en = "The export has expired and its file was deleted"
