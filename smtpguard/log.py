"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is.

Decision records (one per transaction) go to the `smtpguard.decision` logger with the record
in `extra={"record": {...}}`; they are emitted as one JSON object per line in both formats.

Records are formatted where they are logged but written by one writer thread
(`BackgroundStreamHandler`, every 50 ms, in one write): a stderr that stops draining (a full
pipe, a stuck log collector) must never block the event loop and with it every SMTP session. Up
to `MAX_PENDING_LINES` lines wait in memory; beyond that lines are dropped and counted
(`smtpguard_log_lines_dropped_total`, and a warning in the log once it drains). Order is kept;
`close()` (at exit) writes what is pending.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

MAX_PENDING_LINES = 100_000


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


class BackgroundStreamHandler(logging.Handler):
    """Format in the caller's thread (a snapshot of the record); a daemon thread writes what has
    accumulated every `interval` seconds in one write. No wake-up per line: a per-line hand-off
    to another thread costs a GIL switch per record (~10 % of the proxy's throughput)."""

    def __init__(self, stream: TextIO, max_lines: int = MAX_PENDING_LINES,
                 on_drop: Callable[[int], None] | None = None, interval: float = 0.05) -> None:
        super().__init__()
        self.stream = stream
        self.dropped = 0
        self.max_lines = max_lines
        self.interval = interval
        self._lines: collections.deque[str] = collections.deque()  # append/popleft are thread-safe
        self._reported = 0
        self._closed = False
        self._on_drop = on_drop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="smtpguard-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) >= self.max_lines:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
            return
        self._lines.append(line)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_pending()
        self._write_pending()

    def _write_pending(self) -> None:
        lines = [self._lines.popleft() for _ in range(len(self._lines))]
        if self.dropped > self._reported:
            lost, self._reported = self.dropped - self._reported, self.dropped
            lines.append(self.format(logging.LogRecord(
                "smtpguard.log", logging.WARNING, "", 0,
                "%d log lines dropped: the log output was not being read", (lost,), None)))
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone: nothing else can be done with a log line

    def flush(self) -> None:
        """Lines are written within `interval`; `close()` writes the rest."""

    def close(self) -> None:
        """Write what is pending (waiting up to 5 s for a blocked stream), then stop. Called at
        exit (atexit) and again by `logging.shutdown`: the second call returns at once."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._thread.join(timeout=5)
        super().close()


def setup_logging(fmt: str = "auto", level: str = "info", background: bool = False,
                  on_drop: Callable[[int], None] | None = None) -> None:
    """`background`: write from a thread (the server); off for the one-shot CLI commands."""
    # the formatters use neither the caller's file/line nor thread/process names: skip collecting
    # them for every record (the logging HOWTO's "Optimization" section; a stack walk, a getpid)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    if background:
        handler = BackgroundStreamHandler(sys.stderr, on_drop=on_drop)
        atexit.register(handler.close)
    else:
        handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command (addresses included) at INFO: keep it quiet
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
