"""DATA framing and canonical re-emission: the SMTP-smuggling defence (field survey R1-R3, R7).

Pure code, no I/O. `DataFramer.feed_line` takes each chunk the reader returns (a line ending in
LF, or an over-long fragment without one) and decides. Invariants (tests/unit/test_data_framing.py):
- R1: only a `.` CRLF line that starts right after a CRLF (or at the start of DATA) ends the
  message; `\\n.\\n`, `\\r\\n.\\n`, `\\n.\\r\\n`, `\\r.\\r\\n`, a dot after an over-long fragment...
  never do.
- R2/R3: the stored content is canonical: lines without CR, LF or NUL inside, unstuffed; bare
  LF, bare CR and NUL are recorded as violations (reject mode) or repaired (normalize mode:
  bare LF ends a line, bare CR becomes a space, NUL is dropped) -- never passed on.
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
    lines: list[bytes] = field(default_factory=list)
    size: int = 0  # canonical bytes (content + CRLF per line), counted even past max_size
    violations: set[str] = field(default_factory=set)
    done: bool = False
    _at_line_start: bool = True
    _fragment: bytearray | None = None  # an over-long line being skipped

    @property
    def too_big(self) -> bool:
        return self.size > self.max_size

    def feed_line(self, chunk: bytes) -> bool:
        """Consume one reader chunk; return True when the end of data was seen."""
        if self.done:
            raise RuntimeError("DATA already ended")
        if not chunk.endswith(b"\n"):
            # over-long fragment (reader limit hit): never a line start afterwards
            self.violations.add("line_too_long")
            self._at_line_start = False
            self.size += len(chunk)
            return False
        if self._at_line_start and chunk == b".\r\n":
            self.done = True
            return True
        was_line_start = self._at_line_start
        if chunk.endswith(CRLF):
            body = chunk[:-2]
            self._at_line_start = True
        else:
            body = chunk[:-1]
            self._at_line_start = False
            self.violations.add("bare_lf")
            if self.normalize:
                self._at_line_start = True  # normalize: a bare LF ends the line
        if not was_line_start and "line_too_long" in self.violations and not self.normalize:
            # the tail of an over-long line: counted, never stored, never a line start
            self.size += len(chunk)
            return False
        self._add(body, unstuff=was_line_start or self.normalize)
        return False

    def _add(self, body: bytes, unstuff: bool) -> None:
        if b"\r" in body:
            self.violations.add("bare_cr")
            body = body.replace(b"\r", b" ")
        if b"\x00" in body:
            self.violations.add("nul")
            body = body.replace(b"\x00", b"")
        if b"\n" in body:  # cannot happen with LF-delimited chunks; kept as a guard
            self.violations.add("bare_lf")
            body = body.replace(b"\n", b" ")
        if unstuff and body.startswith(b"."):
            body = body[1:]
        if len(body) > self.max_line_length:
            self.violations.add("line_too_long")
        self.size += len(body) + 2
        if self.size <= self.max_size:
            self.lines.append(body)

    @property
    def rejected_violations(self) -> set[str]:
        """Violations that make the message unacceptable in the current mode."""
        if self.normalize:
            return self.violations & {"line_too_long"}
        return set(self.violations)

    def content(self) -> bytes:
        """The canonical, unstuffed message (CRLF line endings)."""
        if not self.lines:
            return b""
        return CRLF.join(self.lines) + CRLF


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


def parse_headers(content: bytes, limit: int = 1000) -> list[tuple[str, str]]:
    """(name, unfolded value) pairs of the header block; tolerant of garbage."""
    raw, _ = split_header_block(content)
    headers: list[tuple[str, str]] = []
    for line in raw:
        text = line.decode("utf-8", "replace")
        if text[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or " " in name:
            break  # not a header: the body starts here (RFC 5322 tolerant reading)
        headers.append((name.strip(), value.strip()))
        if len(headers) >= limit:
            break
    return headers
