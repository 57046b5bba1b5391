"""One SMTP reply as one value: code, enhanced status code and text, validated together.

Invariants (tested in tests/unit/test_reply.py):
- the code is 2xx-5xx and its class equals the enhanced code's class (RFC 3463: 4xx <-> 4.x.x);
- the text never contains CR, LF or other control characters, so a reply can never split the
  SMTP stream however it was built (templates are escaped before they get here);
- `lines()` renders multi-line replies with `NNN-` continuation prefixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpguard.errors import ReplyError

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PARSE = re.compile(r"^(\d{3})(?:[ -](?:([245]\.\d{1,3}\.\d{1,3})(?: |$))?(.*))?$", re.DOTALL)
MAX_TEXT = 400
_CLASSES = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}  # codes are validated to be 200-599


def sanitize_text(text: str, limit: int = MAX_TEXT) -> str:
    """Make arbitrary (client- or DNS-controlled) text safe inside one reply line."""
    cleaned = _CONTROL.sub(" ", text).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3] + "..."
    return cleaned


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str
    extra_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ReplyError(f"reply code {self.code} is not between 200 and 599")
        if self.enhanced is not None:
            m = _ENHANCED.match(self.enhanced)
            if not m:
                raise ReplyError(f"enhanced status code {self.enhanced!r} is not of the form N.N.N")
            if int(m.group(1)) != self.code // 100:
                raise ReplyError(
                    f"reply code {self.code} and enhanced code {self.enhanced} disagree "
                    f"({self.code // 100}xx needs {self.code // 100}.x.x)"
                )
        for line in (self.text, *self.extra_lines):
            if _CONTROL.search(line):
                raise ReplyError("reply text contains a control character")

    @property
    def klass(self) -> str:
        """The reply class for metrics: '2xx', '3xx', '4xx' or '5xx'."""
        return _CLASSES[self.code // 100]

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> list[str]:
        texts = [self.text, *self.extra_lines]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for i, text in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{text}".rstrip())
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines())

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, sanitize_text(text), ())

    def with_suffix(self, suffix: str) -> Reply:
        """Append e.g. a transaction id to the last line's text."""
        if self.extra_lines:
            last = f"{self.extra_lines[-1]} {suffix}"
            return Reply(self.code, self.enhanced, self.text, (*self.extra_lines[:-1], last))
        return Reply(self.code, self.enhanced, f"{self.text} {suffix}".strip(), ())


def parse_reply(value: str) -> Reply:
    """Parse a one-line reply such as `550 5.7.1 Go away` (used for rule files)."""
    m = _PARSE.match(value.strip())
    if not m:
        raise ReplyError(f"{value!r} is not a reply like '550 5.7.1 text'")
    code = int(m.group(1))
    enhanced = m.group(2)
    text = (m.group(3) or "").strip()
    if enhanced is None and text:
        head = text.split(" ", 1)[0]
        if re.match(r"^\d+\.\d+\.\d+$", head):
            raise ReplyError(f"enhanced status code {head!r} is not valid")
    return Reply(code, enhanced, text)


def from_upstream(code: int, message: str) -> Reply:
    """Build the client's reply from an upstream answer (aiosmtplib joins lines with \\n)."""
    raw_lines = [sanitize_text(x, 1000) for x in (message or "").split("\n")] or [""]
    enhanced = None
    first = raw_lines[0]
    head, _, rest = first.partition(" ")
    if _ENHANCED.match(head) and int(head[0]) == code // 100:
        enhanced = head
        raw_lines = [rest] + [
            line.partition(" ")[2] if line.startswith(head + " ") else line for line in raw_lines[1:]
        ]
    if not 200 <= code <= 599:
        return Reply(451, "4.4.0", "Upstream sent an invalid reply")
    return Reply(code, enhanced, raw_lines[-1] if len(raw_lines) == 1 else raw_lines[0], tuple(raw_lines[1:]))
