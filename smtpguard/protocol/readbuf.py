"""Reading DATA straight from an `asyncio.StreamReader`'s buffer, without consuming past the end.

`readuntil(b"\\n")` per line costs a coroutine step, a search and a copy for every line; a
2 KB message is ~35 of them. `read_message` instead hands the framer everything buffered and
removes only what the framer consumed, so commands pipelined after the end of data stay in the
reader for the command loop (there is no public "peek", hence the private attributes below).

StreamReader internals used (stable since Python 3.8; tests/unit/test_aiosmtpd_internals.py
fails loudly if they change): `_buffer` (bytearray of unread bytes), `_eof`,
`_wait_for_data(name)` (waits until more bytes or EOF arrive, resuming a paused transport) and
`_maybe_resume_transport()` (flow control after consuming).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from smtpguard.protocol.data import DataFramer


def buffered(reader: asyncio.StreamReader) -> int:
    """Bytes the client sent that have not been read yet."""
    return len(reader._buffer)  # type: ignore[attr-defined]


def _raise_if_failed(reader: asyncio.StreamReader) -> None:
    """A connection reset (`set_exception`) does not set EOF: surface it like `readuntil` does."""
    exc = reader.exception()
    if exc is not None:
        raise exc


async def wait_for_input(reader: asyncio.StreamReader) -> None:
    """Return as soon as the client has sent something or closed, without reading it."""
    if reader._buffer or reader._eof or reader.exception() is not None:  # type: ignore[attr-defined]
        return
    await reader._wait_for_data("wait_for_input")  # type: ignore[attr-defined]


async def read_message(reader: asyncio.StreamReader, framer: DataFramer, progress: Callable[[], None]) -> None:
    """Feed the client's bytes to `framer` until it has seen the end of data. `progress` is
    called after every step that consumed bytes (memory-budget bookkeeping). Raises
    `asyncio.IncompleteReadError` if the client closes first, the reader's exception (e.g.
    `ConnectionResetError`) if the connection failed."""
    while True:
        _raise_if_failed(reader)
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        if buffer:
            used = framer.feed(buffer)
            if used:
                del buffer[:used]
                reader._maybe_resume_transport()  # type: ignore[attr-defined]
                progress()
            if framer.done:
                return
        if reader._eof:  # type: ignore[attr-defined]
            raise asyncio.IncompleteReadError(bytes(buffer), None)
        await reader._wait_for_data("read_message")  # type: ignore[attr-defined]
