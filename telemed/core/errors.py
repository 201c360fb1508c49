"""Errors as RFC 9457 problem details (``application/problem+json``), in zh-CN first and English.

Each error class carries its HTTP status and a stable ``code``; handlers turn them into problem documents. Only
payload validation answers 422. No patient data ever goes into a problem document: the input that failed is
named by its field, never echoed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://telemed.example.cn/problems/"

log = logging.getLogger(__name__)


def preferred_language(request: Request) -> str:
    """``en`` when the client asks for English first, ``zh-CN`` otherwise (the default for our users)."""
    header = request.headers.get("accept-language", "")
    first = header.split(",", 1)[0].strip().lower()
    if first.startswith("en"):
        return "en"
    cookie = request.cookies.get("lang", "")
    if not header and cookie == "en":
        return "en"
    return "zh-CN"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where (``field`` as a dotted path), a stable reason code and messages in both languages."""

    field: str
    code: str
    message_zh: str
    message_en: str

    def render(self, lang: str) -> dict[str, str]:
        return {
            "field": self.field,
            "code": self.code,
            "message": self.message_en if lang == "en" else self.message_zh,
        }


class ProblemError(Exception):
    """Base of every error the API reports on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title_zh: ClassVar[str] = "请求有误"
    title_en: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail_zh: str | None = None,
        detail_en: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail_en or self.title_en)
        self.detail_zh = detail_zh
        self.detail_en = detail_en
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}

    def problem(self, lang: str, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code.replace(".", "-"),
            "title": self.title_en if lang == "en" else self.title_zh,
            "status": self.status,
            "code": self.code,
            "instance": instance,
        }
        detail = self.detail_en if lang == "en" else self.detail_zh
        if detail:
            body["detail"] = detail
        if self.errors:
            body["errors"] = [e.render(lang) for e in self.errors]
        body.update(self.extra)
        return body


class InvalidInput(ProblemError):
    status = 422
    code = "validation_failed"
    title_zh = "提交的数据未通过校验"
    title_en = "The submitted data is not valid"


class Unauthenticated(ProblemError):
    status = 401
    code = "unauthenticated"
    title_zh = "请先登录"
    title_en = "Sign-in required"

    def __init__(self, detail_zh: str | None = None, detail_en: str | None = None) -> None:
        super().__init__(detail_zh, detail_en, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status = 403
    code = "forbidden"
    title_zh = "无权执行此操作"
    title_en = "You are not allowed to do this"


class NotFound(ProblemError):
    """Also what a caller gets for an object outside their scope, so that existence is not revealed."""

    status = 404
    code = "not_found"
    title_zh = "未找到"
    title_en = "Not found"


class Conflict(ProblemError):
    status = 409
    code = "conflict"
    title_zh = "与现有数据冲突"
    title_en = "Conflicts with existing data"


class Locked(ProblemError):
    status = 423
    code = "account_locked"
    title_zh = "账户已锁定"
    title_en = "Account locked"


class ServiceUnavailable(ProblemError):
    status = 503
    code = "service_unavailable"
    title_zh = "服务暂不可用，请稍后重试"
    title_en = "Service temporarily unavailable, please retry"


def _problem_response(request: Request, error: ProblemError) -> JSONResponse:
    lang = preferred_language(request)
    headers = {"Content-Language": lang, "Cache-Control": "no-store", **error.headers}
    return JSONResponse(
        error.problem(lang, request.url.path),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_PYDANTIC_MESSAGES_ZH: Final = {
    "missing": "必填项",
    "string_too_short": "内容太短",
    "string_too_long": "内容太长",
    "string_pattern_mismatch": "格式不正确",
    "int_parsing": "应为整数",
    "float_parsing": "应为数字",
    "date_from_datetime_parsing": "应为日期（YYYY-MM-DD）",
    "date_parsing": "应为日期（YYYY-MM-DD）",
    "enum": "不是允许的取值",
    "literal_error": "不是允许的取值",
    "uuid_parsing": "应为 UUID",
    "extra_forbidden": "不允许的字段",
    "json_invalid": "JSON 格式错误",
    "value_error": "取值无效",
    "greater_than_equal": "数值过小",
    "less_than_equal": "数值过大",
}


def _validation_field_errors(exc: RequestValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        kind = str(err.get("type", "value_error"))
        ctx = err.get("ctx") or {}
        # Our own validators raise ValueError("reason.code"); carry that code instead of pydantic's generic one.
        reason = ctx.get("error")
        code = str(reason) if isinstance(reason, ValueError) and "." in str(reason) else kind
        message_en = str(err.get("msg", "invalid"))
        if isinstance(reason, ValueError) and "." in str(reason):
            message_en = str(reason)
        out.append(
            FieldError(
                field=".".join(loc) or "body",
                code=code,
                message_zh=VALIDATION_MESSAGES_ZH.get(code, _PYDANTIC_MESSAGES_ZH.get(kind, "取值无效")),
                message_en=VALIDATION_MESSAGES_EN.get(code, message_en),
            )
        )
    return out


#: Messages for the reason codes our own validators raise (``ValueError("id_number.checksum")``).
VALIDATION_MESSAGES_ZH: dict[str, str] = {}
VALIDATION_MESSAGES_EN: dict[str, str] = {}


def field_error(field: str, code: str) -> FieldError:
    """A field error whose texts come from the registered messages of ``code``."""
    return FieldError(field, code, VALIDATION_MESSAGES_ZH.get(code, "取值无效"), VALIDATION_MESSAGES_EN.get(code, code))


def register_validation_messages(messages: dict[str, tuple[str, str]]) -> None:
    """Register zh-CN and English texts for validator reason codes, e.g. ``{"id_number.checksum": (zh, en)}``."""
    for code, (zh, en) in messages.items():
        VALIDATION_MESSAGES_ZH[code] = zh
        VALIDATION_MESSAGES_EN[code] = en


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return _problem_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _problem_response(request, InvalidInput(errors=_validation_field_errors(exc)))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = ProblemError(detail_en=str(exc.detail), headers=dict(exc.headers or {}))
        body = error.problem(preferred_language(request), request.url.path)
        body["status"] = exc.status_code
        if exc.status_code == 404:
            body.update(NotFound().problem(preferred_language(request), request.url.path))
        elif exc.status_code == 405:
            body.update({"code": "method_not_allowed", "title": "Method not allowed"})
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=error.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log (which never holds patient data); the client gets no internals.
        log.exception("unhandled error", extra={"path": request.url.path})
        error = ProblemError()
        body = error.problem(preferred_language(request), request.url.path)
        body.update(
            {
                "status": 500,
                "code": "internal_error",
                "title": "Internal error" if preferred_language(request) == "en" else "服务器内部错误",
            }
        )
        return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
