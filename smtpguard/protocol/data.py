"""DATA framing and canonical re-emission: the SMTP-smuggling defence (field survey R1-R3, R7).

Pure code, no I/O. `DataFramer.feed(buffer)` takes whatever the client has sent so far and
consumes complete lines -- never a byte past the end of data, so pipelined commands stay in the
reader -- handling a run of clean CRLF lines in a few C-level bytes operations and falling back
to `feed_line` (one line, or an over-long fragment without LF) for anything unusual. Both give
the same result (property-tested against each other). Invariants (tests/unit/test_data_framing.py):
- R1: only a `.` CRLF line that starts right after a CRLF (or at the start of DATA) ends the
  message; `\\n.\\n`, `\\r\\n.\\n`, `\\n.\\r\\n`, `\\r.\\r\\n`, a dot after an over-long fragment...
  never do.
- R2/R3: the stored content is canonical: lines without CR, LF or NUL inside, unstuffed; bare
  LF, bare CR and NUL are recorded as violations (reject mode) or repaired (normalize mode:
  bare LF ends a line's content, bare CR becomes a space, NUL is dropped) -- never passed on.
  Even in normalize mode a line after a bare LF is never a line start: `\n.\r\n` is content.
- R7: a line longer than the limit is a violation; its fragments are never taken for line starts.
- Size: bytes beyond `max_size` are counted, not stored.
`emit(lines)` produces the exact upstream DATA payload: CRLF endings, dot-stuffed after
canonicalisation, exactly one terminator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"
END = b"\r\n.\r\n"  # CRLF . CRLF: the only end of data (R1)


@dataclass(slots=True)
class DataFramer:
    max_size: int
    max_line_length: int = 998
    normalize: bool = False
    fragment_limit: int = 0  # an unfinished line longer than this is over-long (0: max_line_length + 3)
    size: int = 0  # canonical bytes (content + CRLF per line), counted even past max_size
    violations: set[str] = field(default_factory=set)
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)  # canonical content: one object, not a list
    _eod_ok: bool = True  # the previous chunk ended in a real CRLF: a "." line here ends DATA
    _in_long_line: bool = False  # inside an over-long line (after a fragment without LF)
    _fragment_cr: bool = False  # that fragment ended in CR (its LF comes alone next)

    @property
    def too_big(self) -> bool:
        return self.size > self.max_size

    def feed(self, data: bytes | bytearray) -> int:
        """Consume complete lines of `data` (what the client sent so far, unread), up to and
        including the end-of-data line; return how many bytes were consumed. An unfinished last
        line is left for later, unless it is already over-long (then it is consumed as a
        fragment). Sets `done` when the end of data was consumed."""
        if self.done:
            raise RuntimeError("DATA already ended")
        pos, n = 0, len(data)
        if self._in_long_line:  # finish the over-long line first: its end decides the next start
            lf = data.find(b"\n")
            if lf < 0:
                self._fragment(data)
                return n
            self.feed_line(bytes(data[:lf + 1]))
            pos = lf + 1
        last_lf = data.rfind(b"\n", pos)
        if last_lf >= 0:
            if self._eod_ok and data.startswith(b".\r\n", pos):
                self.done = True
                return pos + 3
            end = data.find(END, pos, last_lf + 1)
            if end >= 0:
                self._lines(data[pos:end + 2])
                self.done = True
                return end + 5
            self._lines(data[pos:last_lf + 1])
            pos = last_lf + 1
        if n - pos > (self.fragment_limit or self.max_line_length + 3):
            self._fragment(data[pos:])
            return n
        return pos

    def _lines(self, block: bytes | bytearray) -> None:
        """Complete lines (`block` ends in LF) known not to contain the end of data."""
        crlf = block.count(CRLF)
        if crlf == block.count(b"\n") and crlf == block.count(b"\r") and b"\x00" not in block \
                and max(map(len, block.split(CRLF))) <= self.max_line_length:
            # the usual case: clean CRLF lines, every one a line start (only the first one can
            # follow a bare LF): unstuff and store in bulk
            if block[:1] == b"." and self._eod_ok:
                block = block[1:]
            if b"\r\n." in block:
                block = block.replace(b"\r\n.", b"\r\n")
            self.size += len(block)
            if self.size <= self.max_size:
                self._buf += block
            self._eod_ok = True
            return
        start = 0
        while start < len(block):  # bare LF/CR, NUL or a long line: line by line, exactly
            lf = block.index(b"\n", start)
            self.feed_line(bytes(block[start:lf + 1]))
            start = lf + 1

    def _fragment(self, chunk: bytes | bytearray) -> None:
        """Part of a line without its LF, already too long: counted, never stored; what follows
        is never a line start."""
        self.violations.add("line_too_long")
        self._in_long_line, self._eod_ok = True, False
        self._fragment_cr = chunk.endswith(b"\r")
        self.size += len(chunk)

    def feed_line(self, chunk: bytes) -> bool:
        """Consume one reader chunk; return True when the end of data was seen."""
        if self.done:
            raise RuntimeError("DATA already ended")
        if not chunk.endswith(b"\n"):
            # an over-long fragment (reader limit hit): what follows is never a line start
            self._fragment(chunk)
            return False
        if self._in_long_line:
            # the tail of an over-long line: counted, never stored; a CRLF split between the
            # fragment and this chunk (asyncio cuts right before the LF) still ends the line
            ends_crlf = chunk.endswith(CRLF) or (chunk == b"\n" and self._fragment_cr)
            self._in_long_line = self._fragment_cr = False
            self._eod_ok = ends_crlf
            if not ends_crlf:
                self.violations.add("bare_lf")
            self.size += len(chunk)
            return False
        if self._eod_ok and chunk == b".\r\n":
            self.done = True
            return True
        line_start = self._eod_ok
        if chunk.endswith(CRLF):
            body = chunk[:-2]
            self._eod_ok = True
        else:
            # a bare LF: in normalize mode it ends the line's content, but never makes the next
            # line a possible terminator (only CRLF . CRLF ends DATA, R1)
            body = chunk[:-1]
            self._eod_ok = False
            self.violations.add("bare_lf")
        self._add(body, unstuff=line_start)
        return False

    def _add(self, body: bytes, unstuff: bool) -> None:
        # unstuff and measure the line as sent, then repair (a NUL before a dot is not stuffing)
        if unstuff and body.startswith(b"."):
            body = body[1:]
        if len(body) > self.max_line_length:
            self.violations.add("line_too_long")
        if b"\r" in body:
            self.violations.add("bare_cr")
            body = body.replace(b"\r", b" ")
        if b"\x00" in body:
            self.violations.add("nul")
            body = body.replace(b"\x00", b"")
        self.size += len(body) + 2
        if self.size <= self.max_size:
            self._buf += body
            self._buf += CRLF

    @property
    def rejected_violations(self) -> set[str]:
        """Violations that make the message unacceptable in the current mode."""
        if self.normalize:
            return self.violations & {"line_too_long"}
        return set(self.violations)

    @property
    def lines(self) -> list[bytes]:
        """The stored content as lines (for tests and `emit`)."""
        if not self._buf:
            return []
        return bytes(self._buf[:-2]).split(CRLF)

    def head(self, n: int) -> bytes:
        return bytes(self._buf[:n])

    def content(self) -> bytes:
        """The canonical, unstuffed message (CRLF line endings)."""
        return bytes(self._buf)

    def stop_storing(self) -> None:
        """Keep reading to the real end of data without holding more bytes (memory budget)."""
        self.max_size = -1
        self._buf = bytearray()


def emit(lines: list[bytes]) -> bytes:
    """The DATA payload for the upstream: stuffed lines, CRLF, exactly one `.` terminator."""
    out = bytearray()
    for line in lines:
        if CRLF[0:1] in line or b"\n" in line:
            raise ValueError("emit() takes canonical lines without CR or LF")
        if line.startswith(b"."):
            out += b"."
        out += line
        out += CRLF
    out += b".\r\n"
    return bytes(out)


def split_header_block(content: bytes) -> tuple[list[bytes], bytes]:
    """Split canonical content into header lines (folded lines kept raw) and the rest."""
    lines: list[bytes] = []
    pos = 0
    while pos < len(content):
        end = content.find(CRLF, pos)
        if end < 0:
            end = len(content)
        line = content[pos:end]
        if line == b"":
            return lines, content[pos:]
        lines.append(line)
        pos = end + 2
    return lines, b""


def parse_headers(content: bytes, limit: int = 1000, max_bytes: int = 256 * 1024) -> list[tuple[str, str]]:
    """(name, unfolded value) pairs of the header block, for policy; tolerant of garbage and
    linear in its size: at most `limit` headers and `max_bytes` of header block are read."""
    raw, _ = split_header_block(content[:max_bytes])
    headers: list[tuple[str, list[str]]] = []
    for line in raw:
        text = line.decode("utf-8", "replace")
        if text[:1] in (" ", "\t"):
            if headers:
                headers[-1][1].append(text.strip())
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or " " in name:
            break  # not a header: the body starts here (RFC 5322 tolerant reading)
        if len(headers) >= limit:
            break
        headers.append((name.strip(), [value.strip()]))
    return [(name, " ".join(parts)) for name, parts in headers]
