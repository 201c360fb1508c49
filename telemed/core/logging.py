"""Structured (JSON) logs that never carry patient identifiers.

Code never logs names, ID numbers or phone numbers; as a second line of defence every record is scrubbed of
anything shaped like a resident ID number or a mainland mobile number, and CR/LF and terminal escapes in
values are escaped so that user input cannot forge log lines (ASVS 16.4.1).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any, Final

_ID_NUMBER: Final = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
_PHONE: Final = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\x1b]")
#: Libraries whose debug output echoes SQL parameters or URLs, i.e. patient data: never below WARNING.
QUIET_LOGGERS: Final = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg", "httpx", "httpcore",
                        "websockets", "multipart", "python_multipart")  # fmt: skip
_STANDARD_ATTRS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def scrub(text: str) -> str:
    text = _ID_NUMBER.sub("[id-number]", text)
    text = _PHONE.sub("[phone]", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = _scrub_value(value)
        if record.exc_info:
            data["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our own access log names the route template, never the raw path or query string.
    for name in ("uvicorn.access",):
        logging.getLogger(name).disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
