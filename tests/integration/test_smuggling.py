"""SMTP smuggling conformance (field survey §4, R1-R4 and R10).

Every sequence of the smtpsmug / SMTP-Smuggling-Tools family is sent through smtpguard to
(a) a byte-capturing upstream, to see exactly what went on the wire, and (b) the real Postfix.
Asserted for every sequence, in reject mode (default) and in normalize mode:
- one message in => at most one message out, never two;
- no stray CR or LF in anything smtpguard sent upstream;
- the client gets the documented reply (554 5.6.0 in reject mode, the upstream's 250 in
  normalize mode) and the session stays in sync.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_upstream import CaptureUpstream
from realservers import Postfix, wait_for
from sgproc import Smtpguard
from test_proxy_postfix import Raw

SMUGGLE = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\nevil\r\n"
SEQUENCES = {
    "lf.lf": b"\n.\n",
    "lf.crlf": b"\n.\r\n",
    "cr.cr": b"\r.\r",
    "crlf.cr": b"\r\n.\r",
    "crlf.lf": b"\r\n.\n",
    "cr.crlf": b"\r.\r\n",
    "crcrlf.crcrlf": b"\r\r\n.\r\r\n",
    "crlf.nul-crlf": b"\r\n.\x00\r\n",
    "crlf-nul.crlf": b"\r\n\x00.\r\n",
    "lf-cr.crlf": b"\n\r.\r\n",
}
STRAY = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureUpstream]:
    up = CaptureUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def guard(capture: CaptureUpstream, tmp_workdir: Path) -> Iterator[Smtpguard]:
    sg = Smtpguard.start(tmp_workdir / f"sg-smuggle-{uuid.uuid4().hex[:8]}", upstream=capture.url, no_policy=True,
                         listeners=[{"name": "strict"},
                                    {"name": "lenient", "normalize_networks": ["127.0.0.0/8"]}])
    yield sg
    assert sg.stop() == 0


def _send(port: int, body: bytes) -> tuple[int, str, Raw]:
    raw = Raw(port)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.test")[0] == 250
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    raw.send(body)
    code, text = raw.reply()
    return code, text, raw


def _body(seq: bytes, tag: str) -> bytes:
    return f"Subject: {tag}\r\n\r\nbefore\r\n".encode() + b"x" + seq + SMUGGLE + b"after\r\n.\r\n"


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_reject_mode_refuses_and_sends_nothing(guard: Smtpguard, capture: CaptureUpstream, name: str) -> None:
    tag = uuid.uuid4().hex
    code, text, raw = _send(guard.port, _body(SEQUENCES[name], tag))
    assert code == 554 and "5.6.0" in text, text
    assert raw.cmd("NOOP")[0] == 250  # still in sync: the smuggled commands were never commands
    raw.cmd("QUIT")
    assert not any(tag.encode() in m for m in capture.capture.messages)
    assert not any(b"SMUGGLED" in m for m in capture.capture.messages)
    for stream in capture.capture.raw:
        assert not STRAY.search(stream), stream


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_normalize_mode_sends_exactly_one_canonical_message(guard: Smtpguard, capture: CaptureUpstream,
                                                            name: str) -> None:
    tag = uuid.uuid4().hex
    before = len(capture.capture.messages)
    code, text, raw = _send(guard.ports["lenient"], _body(SEQUENCES[name], tag))
    assert code == 250, text
    raw.cmd("QUIT")
    mine = [m for m in capture.capture.messages[before:] if tag.encode() in m]
    assert len(mine) == 1
    # no message upstream ever starts with the smuggled headers: they stay text inside one message
    assert not any(m.startswith(b"Subject: SMUGGLED") for m in capture.capture.messages)
    message = mine[0]
    assert not STRAY.search(message)
    assert message.endswith(b"\r\n.\r\n") and message.count(b"\r\n.\r\n") == 1
    for stream in capture.capture.raw:
        assert not STRAY.search(stream)


def test_dot_after_an_overlong_fragment_is_not_an_end(guard: Smtpguard, capture: CaptureUpstream) -> None:
    tag = uuid.uuid4().hex
    # 70000 bytes without LF exceed the reader limit: the next ".\r\n" is in the middle of a line
    body = f"Subject: {tag}\r\n\r\n".encode() + b"y" * 70000 + b".\r\n" + SMUGGLE + b".\r\n"
    code, text, raw = _send(guard.ports["lenient"], body)
    assert code == 554 and "longer than allowed" in text
    assert raw.cmd("NOOP")[0] == 250
    assert not any(tag.encode() in m for m in capture.capture.messages)


def test_dot_stuffing_is_canonical(guard: Smtpguard, capture: CaptureUpstream) -> None:
    tag = uuid.uuid4().hex
    body = f"Subject: {tag}\r\n\r\n..stuffed\r\n...two\r\n.\r\n".encode()
    code, _, raw = _send(guard.port, body)
    assert code == 250
    raw.close()
    message = next(m for m in capture.capture.messages if tag.encode() in m)
    assert message.endswith(b"\r\n..stuffed\r\n...two\r\n.\r\n")


@pytest.mark.parametrize("name", ["lf.lf", "crlf.lf", "cr.crlf", "crcrlf.crcrlf"])
def test_real_postfix_never_receives_two_messages(postfix: Postfix, tmp_workdir: Path, name: str) -> None:
    tag = uuid.uuid4().hex
    with Smtpguard.start(tmp_workdir / f"sg-smpf-{tag[:8]}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, listeners=[{"name": "lenient", "normalize_networks": ["127.0.0.0/8"]}]) as sg:
        code, text, raw = _send(sg.port, _body(SEQUENCES[name], tag))
        assert code == 250, text
        raw.cmd("QUIT")
        delivered = postfix.wait_message("alice", tag.encode())
        assert b"Subject: SMUGGLED" in delivered  # the smuggled text is body text of the one message
        assert b"\r" not in delivered
        wait_for(lambda: "removed" in postfix.maillog(), what="queue file removed")
        assert not any(tag.encode() in m for m in postfix.messages("bob"))
        assert not any(b"Subject: SMUGGLED" in m and tag.encode() not in m for m in postfix.messages("bob"))


def test_normalize_mode_split_writes_cannot_smuggle(guard: Smtpguard, capture: CaptureUpstream) -> None:
    """Review finding: with normalize, `<LF>.<CR><LF>` used to end DATA when the smuggled
    commands arrived in a later write (no 'data before 354' to catch it)."""
    tag = uuid.uuid4().hex
    raw = Raw(guard.ports["lenient"])
    assert raw.reply()[0] == 220
    raw.cmd("EHLO client.test")
    raw.cmd("MAIL FROM:<s@client.test>")
    raw.cmd("RCPT TO:<alice@example.test>")
    assert raw.cmd("DATA")[0] == 354
    raw.send(f"Subject: {tag}\r\n\r\nharmless text\n.\r\n".encode())
    raw.send(b"MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    raw.send(b"From: ceo@victim.test\r\nSubject: smuggled\r\n\r\npay now\r\n.\r\n")
    code, text = raw.reply()
    assert code == 250, text  # exactly one reply: one message
    raw.cmd("QUIT")
    mine = [m for m in capture.capture.messages if tag.encode() in m]
    assert len(mine) == 1 and b"ceo@victim.test" in mine[0]
    assert not any(m.startswith(b"From: ceo@victim.test") for m in capture.capture.messages)


def test_message_starting_with_a_folded_line_is_refused(guard: Smtpguard, capture: CaptureUpstream) -> None:
    tag = uuid.uuid4().hex
    code, text, raw = _send(guard.port, f" spam; dkim=pass\r\nSubject: {tag}\r\n\r\nx\r\n.\r\n".encode())
    assert code == 554 and "folded" in text
    raw.close()
    assert not any(tag.encode() in m for m in capture.capture.messages)
