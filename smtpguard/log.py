"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is.

Decision records (one per transaction) go to the `smtpguard.decision` logger with the record
in `extra={"record": {...}}`; they are emitted as one JSON object per line in both formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "record", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "record", None)
        if isinstance(extra, dict):
            text += " " + json.dumps(extra, default=str, ensure_ascii=False)
        return text


def setup_logging(fmt: str = "auto", level: str = "info") -> None:
    # the formatters use neither the caller's file/line nor thread/process names: skip collecting
    # them for every record (the logging HOWTO's "Optimization" section; a stack walk, a getpid)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command (addresses included) at INFO: keep it quiet
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
