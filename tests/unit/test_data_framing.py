"""The DATA framer: R1 (strict end of data), R2/R3 (canonical output), R7 (line length)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.protocol.data import DataFramer, emit, parse_headers

STRAY = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def chunks(data: bytes, limit: int = 1001) -> list[bytes]:
    """Split like StreamReader.readuntil(b"\\n") with a limit (over-long fragments)."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0 or end - pos + 1 > limit:
            take = min(limit, len(data) - pos) if end < 0 or end - pos + 1 > limit else end - pos + 1
            out.append(data[pos:pos + take])
            pos += take
        else:
            out.append(data[pos:end + 1])
            pos = end + 1
    return out


def frame(data: bytes, normalize: bool = False, limit: int = 1001) -> tuple[DataFramer, bytes]:
    framer = DataFramer(max_size=10_000_000, normalize=normalize)
    parts = chunks(data, limit)
    for i, chunk in enumerate(parts):
        if framer.feed_line(chunk):
            return framer, b"".join(parts[i + 1:])
    return framer, b""


@pytest.mark.parametrize("seq", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r\n.\n", b"\r.\r\n",
                                 b"\r\r\n.\r\r\n", b"\r\n.\x00\r\n"])
def test_only_crlf_dot_crlf_ends_data(seq: bytes) -> None:
    framer, rest = frame(b"a" + seq + b"b\r\n.\r\nNEXT\r\n")
    assert framer.done and rest == b"NEXT\r\n"
    assert framer.violations  # and the odd sequence is noticed


def test_unstuffing_and_emit_roundtrip() -> None:
    framer, _ = frame(b"..one\r\n.\r\n")
    assert framer.lines == [b".one"]
    assert emit(framer.lines) == b"..one\r\n.\r\n"


def test_normalize_repairs_everything() -> None:
    framer, _ = frame(b"a\nb\rc\x00d\r\n.\r\n", normalize=True)
    assert framer.rejected_violations == set()
    assert framer.content() == b"a\r\nb cd\r\n"  # LF ends a line, CR -> space, NUL dropped


def test_overlong_line_and_dot_after_fragment() -> None:
    framer, rest = frame(b"x" * 2000 + b".\r\nSMUGGLE\r\n.\r\n")
    assert framer.done and rest == b""
    assert "line_too_long" in framer.rejected_violations
    assert all(line != b"SMUGGLE" for line in framer.lines) or "line_too_long" in framer.violations


def test_size_is_counted_past_the_limit_without_storing() -> None:
    framer = DataFramer(max_size=10)
    for chunk in chunks(b"0123456789\r\nabcdef\r\n.\r\n"):
        framer.feed_line(chunk)
    assert framer.too_big and framer.lines == []


@given(st.lists(st.binary(max_size=40), max_size=30), st.booleans())
def test_emitted_payload_is_always_canonical(parts: list[bytes], normalize: bool) -> None:
    data = b"\r\n".join(parts) + b"\r\n.\r\n"
    framer, _ = frame(data, normalize=normalize, limit=64)
    assert framer.done
    payload = emit(framer.lines)
    assert not STRAY.search(payload)
    assert payload.endswith(b".\r\n")
    assert payload.count(b"\r\n.\r\n") + (payload == b".\r\n") == 1 or payload.startswith(b".\r\n")
    assert b"\x00" not in payload


def test_parse_headers_unfolds() -> None:
    headers = parse_headers(b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n")
    assert headers == [("Subject", "a b"), ("From", "x")]


async def _frame_with_streamreader(data: bytes, limit: int, normalize: bool = False) -> tuple[DataFramer, bytes]:
    """Exactly the server's read loop over a real asyncio.StreamReader (fragments as asyncio cuts them)."""
    import asyncio

    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    framer = DataFramer(max_size=10_000_000, normalize=normalize)
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return framer, b""
        if framer.feed_line(chunk):
            return framer, await reader.read()


async def test_long_line_right_before_the_terminator_still_ends_data() -> None:
    # asyncio cuts an over-long line right before its LF: the fragment ends in CR, the LF comes
    # alone; the CRLF . CRLF that follows must still end the message (and say line_too_long)
    framer, rest = await _frame_with_streamreader(b"Subject: x\r\n\r\n" + b"A" * 3000 + b"\r\n.\r\nQUIT\r\n", 1001)
    assert framer.done and rest == b"QUIT\r\n"
    assert "line_too_long" in framer.rejected_violations and "bare_lf" not in framer.violations


async def test_normalize_mode_never_ends_data_after_a_bare_lf() -> None:
    data = b"text\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n"
    framer, rest = await _frame_with_streamreader(data, 1001, normalize=True)
    assert framer.done and rest == b""
    assert framer.content() == b"text\r\n.\r\nMAIL FROM:<evil@x>\r\n"  # one message; the dot is content
    assert emit(framer.lines) == b"text\r\n..\r\nMAIL FROM:<evil@x>\r\n.\r\n"
