"""The transaction decision record has exactly the fields docs/observability.md documents."""

from __future__ import annotations

import re
import smtplib
import uuid
from pathlib import Path

from capture_upstream import CaptureUpstream
from realservers import wait_for
from sgproc import Smtpguard

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def documented_fields() -> set[str]:
    text = DOC.read_text()
    section = text.split("## Logs and decision records", 1)[1].split("\n## ", 1)[0]
    fields: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+) \|", section, re.MULTILINE):
        fields.update(re.findall(r"`([a-z_]+)`", row))
    return fields


def test_transaction_record_fields_match_the_docs(tmp_workdir: Path) -> None:
    up = CaptureUpstream()
    sg = Smtpguard.start(tmp_workdir / f"sg-records-{uuid.uuid4().hex[:8]}", upstream=up.url, no_policy=True)
    try:
        with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="client.test") as client:
            client.sendmail("s@client.test", ["alice@example.test"], "Subject: records\r\n\r\nx\r\n")
            reply_text = client.noop()  # the session is still in sync after the transaction
            assert reply_text[0] == 250
        record = wait_for(lambda: next((r for r in sg.decisions() if r.get("event") == "transaction"), None),
                          what="transaction record")
    finally:
        assert sg.stop() == 0
        up.close()
    assert set(record) - {"ts", "level", "logger", "msg"} == documented_fields()
    assert record["outcome"] == "delivered" and record["recipients"] == ["alice@example.test"]
    assert record["stages"] == []  # no rules: nothing to trace, only the version
    assert record["policy"]
    assert record["upstream"][-1].startswith("DATA 250")
