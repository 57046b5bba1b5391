"""A stalled log reader must not stall the mail (the event loop never blocks on stderr).

smtpguard's stdout/stderr is a pipe nobody reads (a stuck log collector, a supervisor that
stopped draining): once the pipe's 64 KB are full, a synchronous log write would block the event
loop and with it every SMTP session. Here 300 transactions (~180 KB of decision records) must
all be delivered while nobody reads; then the reader starts and every record arrives, in order.
"""

from __future__ import annotations

import json
import smtplib
import threading
import uuid
from pathlib import Path

from capture_upstream import CaptureUpstream
from realservers import wait_for
from sgproc import Smtpguard

MESSAGES = 300


def test_mail_flows_while_nobody_reads_the_logs(tmp_workdir: Path) -> None:
    up = CaptureUpstream()
    sg = Smtpguard.start(tmp_workdir / f"sg-logpipe-{uuid.uuid4().hex[:8]}", upstream=up.url, no_policy=True,
                         output_pipe=True)
    try:
        errors: list[BaseException] = []

        def send_all() -> None:
            try:
                for i in range(MESSAGES):
                    with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="client.test", timeout=60) as client:
                        client.sendmail("s@client.test", ["alice@example.test"], f"Subject: log {i}\r\n\r\nx\r\n")
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        sender.join(timeout=300)  # a deadline for a hang, not a speed requirement
        assert not sender.is_alive() and not errors, f"mail stalled while the log pipe was full: {errors}"
        assert len(up.capture.messages) == MESSAGES
        assert sg.proc.stdout is not None
        lines: list[bytes] = []

        def read_all() -> None:
            assert sg.proc.stdout is not None
            for line in sg.proc.stdout:
                lines.append(line)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()

        def records() -> list[dict[str, object]]:
            out = []
            for line in list(lines):
                if line.startswith(b"{"):
                    doc = json.loads(line)
                    if doc.get("event") == "transaction":
                        out.append(doc)
            return out

        got = wait_for(lambda: len(records()) >= MESSAGES and records(), timeout=60, what="all decision records")
        assert [r["outcome"] for r in got] == ["delivered"] * MESSAGES
    finally:
        assert sg.stop() == 0
        up.close()
