"""DATA framing and canonical re-emission: the SMTP-smuggling defence (field survey R1-R3, R7).

Pure code, no I/O. `DataFramer.feed_line` takes each chunk the reader returns (a line ending in
LF, or an over-long fragment without one) and decides. Invariants (tests/unit/test_data_framing.py):
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


@dataclass(slots=True)
class DataFramer:
    max_size: int
    max_line_length: int = 998
    normalize: bool = False
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

    def feed_line(self, chunk: bytes) -> bool:
        """Consume one reader chunk; return True when the end of data was seen."""
        if self.done:
            raise RuntimeError("DATA already ended")
        if not chunk.endswith(b"\n"):
            # an over-long fragment (reader limit hit): what follows is never a line start
            self.violations.add("line_too_long")
            self._in_long_line, self._eod_ok = True, False
            self._fragment_cr = chunk.endswith(b"\r")
            self.size += len(chunk)
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
        if b"\r" in body:
            self.violations.add("bare_cr")
            body = body.replace(b"\r", b" ")
        if b"\x00" in body:
            self.violations.add("nul")
            body = body.replace(b"\x00", b"")
        if unstuff and body.startswith(b"."):
            body = body[1:]
        if len(body) > self.max_line_length:
            self.violations.add("line_too_long")
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
