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


# ---------------------------------------------------------------------------------------------
# `DataFramer.feed` (bulk, what the server uses) against `feed_line` (line by line, the reference)

LIMIT = 1001
TOKENS = [b"\r\n", b"\n", b"\r", b".", b"..", b"\x00", b"a", b" ", b"MAIL FROM:<x@y>", b"\r\n.\r\n", b"\r\n.",
          b".\r\n", b"\r\r\n", b"\n.\n", b"x" * 70, b"y" * 996, b"z" * 1100]


def feed_in_pieces(data: bytes, cuts: list[int], normalize: bool,
                   max_size: int = 10_000_000) -> tuple[DataFramer, bytes]:
    """The server's loop over a growing buffer: bytes arrive in pieces, `feed` consumes what it
    can; returns the framer and everything left unconsumed once it is done."""
    framer = DataFramer(max_size=max_size, normalize=normalize, fragment_limit=LIMIT)
    buffer = bytearray()
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos:pos + cut])
        pos += cut
    pieces.append(data[pos:])
    for i, piece in enumerate(pieces):
        buffer += piece
        while buffer and not framer.done:
            used = framer.feed(buffer)
            del buffer[:used]
            if not used:
                break
        if framer.done:
            return framer, bytes(buffer) + b"".join(pieces[i + 1:])
    return framer, b""


@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.lists(st.integers(1, 400), max_size=12), st.booleans(),
       st.booleans())
def test_feed_ends_data_exactly_where_feed_line_does(tokens: list[bytes], cuts: list[int], normalize: bool,
                                                     terminate: bool) -> None:
    data = b"".join(tokens) + (b"\r\n.\r\nQUIT\r\n" if terminate else b"")
    ref, ref_rest = frame(data, normalize=normalize, limit=LIMIT)
    new, new_rest = feed_in_pieces(data, cuts, normalize)
    assert new.done == ref.done
    if not ref.done:
        return
    assert new_rest == ref_rest  # the smuggling property: same end, same leftover for the command loop
    if "line_too_long" in ref.violations or "line_too_long" in new.violations:
        # over-long lines are refused in every mode; their content is never looked at
        assert "line_too_long" in ref.violations and "line_too_long" in new.violations
        assert new.rejected_violations and ref.rejected_violations
        return
    assert new.violations == ref.violations
    assert new.rejected_violations == ref.rejected_violations
    assert new.size == ref.size
    assert new.content() == ref.content()
    assert not STRAY.search(emit(new.lines))


def test_feed_keeps_an_unfinished_line_and_what_follows_the_end() -> None:
    framer = DataFramer(max_size=1000, fragment_limit=LIMIT)
    assert framer.feed(b"Subject: x\r\n\r\nbody\r\n.") == len(b"Subject: x\r\n\r\nbody\r\n")
    assert not framer.done
    assert framer.feed(b".\r\nRSET\r\nQUIT\r\n") == 3
    assert framer.done and framer.content() == b"Subject: x\r\n\r\nbody\r\n"


def test_feed_unstuffs_only_at_line_starts() -> None:
    framer = DataFramer(max_size=1000, fragment_limit=LIMIT)
    data = b"..a\r\nb.\r\n...\r\n.\r\n"
    assert framer.feed(data) == len(data)
    assert framer.lines == [b".a", b"b.", b".."]


def test_feed_over_long_unfinished_line_is_a_fragment() -> None:
    framer = DataFramer(max_size=10_000, fragment_limit=LIMIT)
    assert framer.feed(b"x" * 1500) == 1500  # no LF yet, already too long: consumed, flagged
    assert "line_too_long" in framer.violations
    assert framer.feed(b"xx\r\n.\r\nNEXT") == 7  # the CRLF ends it; the dot line then ends DATA
    assert framer.done


def test_feed_size_past_the_limit_is_counted_not_stored() -> None:
    framer, _ = feed_in_pieces(b"0123456789\r\nabcdef\r\n.\r\n", [3, 9], normalize=False, max_size=10)
    assert framer.done and framer.too_big and framer.lines == []


async def _read_with_real_streamreader(pieces: list[bytes], eof: bool = False) -> tuple[DataFramer, bytes, int]:
    """`readbuf.read_message` over a real asyncio.StreamReader fed in pieces while it reads."""
    import asyncio

    from smtpguard.protocol.readbuf import read_message

    reader = asyncio.StreamReader(limit=LIMIT)
    framer = DataFramer(max_size=50_000_000, fragment_limit=LIMIT)
    calls = 0

    def progress() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.get_running_loop().create_task(read_message(reader, framer, progress))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)  # let the reader run between pieces, as the network would
    if eof:
        reader.feed_eof()
    await task
    return framer, await reader.read(len(reader._buffer)) if reader._buffer else b"", calls  # type: ignore[attr-defined]


async def test_read_message_leaves_pipelined_commands_in_the_reader() -> None:
    framer, rest, calls = await _read_with_real_streamreader(
        [b"Subject: a\r\n", b"\r\nline\r", b"\n.", b"\r\nQUIT\r\n"])
    assert framer.done and framer.content() == b"Subject: a\r\n\r\nline\r\n"
    assert rest == b"QUIT\r\n" and calls >= 2


async def test_read_message_big_message_in_network_sized_pieces() -> None:
    body = b"".join(b"line %07d ..........................................................\r\n" % i
                    for i in range(80_000))  # ~5.6 MB
    data = b"Subject: big\r\n\r\n" + body + b".\r\n"
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    framer, rest, _ = await _read_with_real_streamreader(pieces)
    assert framer.done and rest == b"" and framer.content() == data[:-3]


async def test_read_message_eof_before_the_end_raises() -> None:
    import asyncio

    with pytest.raises(asyncio.IncompleteReadError):
        await _read_with_real_streamreader([b"Subject: a\r\n\r\nno end"], eof=True)


async def test_read_message_surfaces_a_connection_reset_that_came_while_not_waiting() -> None:
    """A reset sets the reader's exception, not EOF: read_message must raise it at once instead
    of waiting for the DATA timeout."""
    import asyncio

    from smtpguard.protocol.readbuf import read_message

    reader = asyncio.StreamReader(limit=LIMIT)
    reader.feed_data(b"Subject: a\r\n\r\npartial line")
    reader.set_exception(ConnectionResetError("reset"))
    framer = DataFramer(max_size=1000, fragment_limit=LIMIT)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(read_message(reader, framer, lambda: None), 30)
