"""Keys and tokens never reach a log line.

Clients put the service key in URLs (`?apikey=`, `?access_token=`), headers
(`Authorization: Bearer`) and frames; uvicorn's access log prints full
request lines, and error messages quote DSNs with passwords. `redact()`
masks all of those; `RedactingFilter` applies it to every record a handler
emits (its message, its arguments and its traceback text), so the access
log, the bridge's own loggers and library loggers are covered alike.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "<redacted>"

_SECRET_NAMES = (
    r"apikey|api_key|api-key|access_token|refresh_token|id_token|token|jwt|"
    r"service_key|anon_key|jwt_secret|secret|password|passwd"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # JWT-shaped: three base64url parts, the header being JSON ('{"' is 'eyJ').
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # Authorization header values, in any quoting: "Authorization: Bearer x".
    (
        re.compile(
            r"""(?i)(authorization["']?\s*[:=,]\s*["']?)((?:bearer|basic|token)\s+)?[^\s"',&;)]+"""
        ),
        rf"\1\2{MASK}",
    ),
    # "apikey": "x" in JSON or dict reprs.
    (
        re.compile(rf"""(?i)(["'](?:{_SECRET_NAMES})["']\s*:\s*["'])[^"']*"""),
        rf"\1{MASK}",
    ),
    # apikey=x in query strings and key=value text.
    (re.compile(rf"(?i)(\b(?:{_SECRET_NAMES})=)[^&\s\"',;)]+"), rf"\1{MASK}"),
    # The password in a URL: scheme://user:password@host.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{MASK}@"),
]


def redact(text: str) -> str:
    """`text` with every key, token and password in it masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactingFilter(logging.Filter):
    """Masks secrets in a record in place (message, arguments, traceback) before it is formatted.

    Arguments are masked one by one rather than formatted into the message,
    so formatters that read `record.args` (uvicorn's access log) still work.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        else:
            record.msg = redact(str(record.msg))
        if isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(v) for v in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(*loggers: logging.Logger) -> None:
    """Add the filter to every handler of `loggers` (default: the root logger)."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
