"""Structured logs: one JSON object per line, one line per event, never message contents."""

from __future__ import annotations

import logging
import sys

import orjson
from aiohttp.http_exceptions import HttpProcessingError


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event": ..., **fields}``.

    Extra fields come from ``extra={"fields": {...}}`` on the logging call.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class BadRequestFilter(logging.Filter):
    """Turn aiohttp's traceback for a malformed HTTP request (a client's fault, e.g. an
    oversized request line) into one ``bad_http_request`` info line without client data."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info = "bad_http_request", (), None
            record.fields = {"status": exc.code, "error": type(exc).__name__}
        return True


def setup_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines at ``level`` (debug, info, ...).

    httpx's per-request info lines and the frame reader's per-connection and per-frame
    lines are left out (warnings and errors stay).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # The frame reader's debug lines would hold message contents.
    logging.getLogger("roomhub.frames").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.server").addFilter(BadRequestFilter())
