"""An upstream that stops answering: the client gets a 4xx within the configured timeout, never
a 2xx, and its session stays usable (issue 2: "upstream unreachable, slow or dropping
mid-transaction gives a 4xx ... and the client session stays usable").

The upstream is the byte-capturing fake, told to go silent at one point: before its banner
(`upstream.connect_timeout`), at MAIL (`command_timeout`) or after the end of data
(`data_timeout`). smtpguard's watchdog must notice and close that connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_upstream import CaptureUpstream
from realservers import wait_for
from sgproc import Smtpguard
from test_proxy_postfix import Raw

TIMEOUTS = {"connect_timeout": "1s", "command_timeout": "1s", "data_timeout": "1s"}
BIG = 12_000_000  # more than the sockets between smtpguard and a stalled upstream can buffer


@pytest.fixture
def stalled(request: pytest.FixtureRequest, tmp_workdir: Path) -> Iterator[tuple[CaptureUpstream, Smtpguard]]:
    up = CaptureUpstream(stall=request.param)
    sg = Smtpguard.start(tmp_workdir / f"sg-stall-{uuid.uuid4().hex[:8]}", upstream=up.url, no_policy=True,
                         config={"upstream": TIMEOUTS},
                         listeners=[{"name": "smtp", "limits": {"max_message_size": "50MB"}}])
    try:
        yield up, sg
    finally:
        code = sg.stop()
        up.close()
        assert code == 0


def _session(sg: Smtpguard) -> Raw:
    raw = Raw(sg.port)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.test")[0] == 250
    return raw


def _still_usable(raw: Raw) -> None:
    assert raw.cmd("RSET")[0] == 250
    assert raw.cmd("NOOP")[0] == 250
    assert raw.cmd("QUIT")[0] == 221


def _timeouts(sg: Smtpguard) -> float:
    return sg.metric('smtpguard_upstream_errors_total{kind="timeout"}')


@pytest.mark.parametrize("stalled", ["banner"], indirect=True)
def test_upstream_that_never_greets_gives_451_4_4_1(stalled: tuple[CaptureUpstream, Smtpguard]) -> None:
    up, sg = stalled
    raw = _session(sg)
    code, text = raw.cmd("MAIL FROM:<s@client.test>")
    assert (code, text.split()[1]) == (451, "4.4.1"), text
    assert up.capture.stalled >= 1
    assert wait_for(lambda: _timeouts(sg) >= 1, what="upstream timeout counted")
    _still_usable(raw)
    assert up.capture.messages == []


@pytest.mark.parametrize("stalled", ["MAIL"], indirect=True)
def test_upstream_silent_at_mail_gives_451_4_4_2(stalled: tuple[CaptureUpstream, Smtpguard]) -> None:
    up, sg = stalled
    raw = _session(sg)
    code, text = raw.cmd("MAIL FROM:<s@client.test>")
    assert (code, text.split()[1]) == (451, "4.4.2"), text
    assert up.capture.stalled == 1
    assert "[txn " in text
    assert wait_for(lambda: _timeouts(sg) >= 1, what="upstream timeout counted")
    # the transaction is over: RCPT needs a new MAIL, the session itself goes on
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 503
    _still_usable(raw)


@pytest.mark.parametrize("stalled", ["EOD"], indirect=True)
def test_upstream_silent_after_end_of_data_never_gives_2xx(stalled: tuple[CaptureUpstream, Smtpguard]) -> None:
    up, sg = stalled
    raw = _session(sg)
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    code, text = raw.cmd("Subject: stalled\r\n\r\nbody\r\n.")
    # the upstream got every byte but never said 250: the client must retry, not trust us
    assert (code, text.split()[1]) == (451, "4.4.2"), text
    assert len(up.capture.messages) == 1
    assert wait_for(lambda: _timeouts(sg) >= 1, what="upstream timeout counted")
    records = wait_for(lambda: [r for r in sg.decisions() if r.get("event") == "transaction"],
                       what="transaction record")
    assert records[-1]["outcome"] == "upstream_error"
    _still_usable(raw)


@pytest.mark.parametrize("stalled", ["DATA_NOREAD"], indirect=True)
def test_upstream_that_stops_reading_mid_message_gives_451(stalled: tuple[CaptureUpstream, Smtpguard]) -> None:
    """The upstream says 354 and then reads nothing: smtpguard's writes block. The data timeout
    must still end it (a plain close would wait for the write buffer to drain, forever)."""
    up, sg = stalled
    raw = _session(sg)
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    line = b"x" * 998 + b"\r\n"
    raw.send(b"Subject: big\r\n\r\n" + line * (BIG // len(line)) + b".\r\n")
    code, text = raw.reply()
    assert (code, text.split()[1]) == (451, "4.4.2"), text
    assert up.capture.stalled == 1 and up.capture.messages == []
    assert wait_for(lambda: _timeouts(sg) >= 1, what="upstream timeout counted")
    _still_usable(raw)
