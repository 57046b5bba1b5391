"""Header edits on the message sent upstream, built and inserted at a record boundary (R6).

- Every added header is generated here from a (name, value) pair whose value has been stripped
  of CR, LF and NUL and folded at 78 columns with CRLF SP, so no client-controlled value can
  split a header or the message.
- Incoming Authentication-Results headers that claim our authserv-id are removed (RFC 8601 §5).
- New headers are prepended (trace-header order: newest first).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from smtpguard.facts import Session, Transaction
from smtpguard.protocol.data import CRLF, split_header_block
from smtpguard.stage import Stage

if TYPE_CHECKING:
    from smtpguard.protocol.context import ProxyContext

log = logging.getLogger("smtpguard.headers")
_NAME = re.compile(r"^[!-9;-~]+$")
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def build_header(name: str, value: str) -> bytes:
    if not _NAME.match(name):
        raise ValueError(f"invalid header name {name!r}")
    words = _UNSAFE.sub(" ", value).split()
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > 78 and current.strip() != f"{name}:":
            lines.append(current)
            current = "\t" + word
        else:
            current = f"{current} {word}"
    lines.append(current)
    return CRLF.join(line.encode("utf-8", "surrogateescape") for line in lines) + CRLF


def rewrite(content: bytes, added: list[tuple[str, str]], authserv_id: str) -> bytes:
    """Prepend `added`, drop Authentication-Results headers that claim `authserv_id`. Linear in
    the size of the header block. The caller refuses messages whose first line is folded
    (`starts_with_folded_line`): client bytes must never continue a header we generated."""
    raw_headers, rest = split_header_block(content)
    kept: list[bytes] = []
    i = 0
    while i < len(raw_headers):
        line = raw_headers[i]
        j = i + 1
        while j < len(raw_headers) and raw_headers[j][:1] in (b" ", b"\t"):
            j += 1  # raw_headers[i:j] is one header with its continuation lines
        name, colon, _ = line.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            value = b" ".join(part.strip() for part in raw_headers[i:j]).decode("utf-8", "replace")
            if _claims_us(value.partition(":")[2], authserv_id):
                log.info("removed a forged Authentication-Results header claiming our authserv-id")
                i = j
                continue
        kept.extend(raw_headers[i:j])
        i = j
    out = bytearray()
    for header_name, header_value in added:
        out += build_header(header_name, header_value)
    for line in kept:
        out += line + CRLF
    if rest or raw_headers:
        out += rest
    else:
        out += content
    return bytes(out)


def starts_with_folded_line(content: bytes) -> bool:
    """A message whose first line starts with SP/HT would continue whatever header precedes it."""
    return content[:1] in (b" ", b"\t")


def _claims_us(value: str, authserv_id: str) -> bool:
    try:
        from smtpguard.authresults import is_forged
    except ImportError:  # the sender-authentication module is optional at this layer
        head = re.sub(r"\([^)]*\)", " ", value).strip().split(";", 1)[0].split()
        return bool(head) and head[0].lower() == authserv_id.lower()
    return bool(is_forged(value, authserv_id))


async def authentication_results(proxy: ProxyContext, session: Session, txn: Transaction) -> str | None:
    """Our Authentication-Results value from the checks the policy has configured, or None."""
    try:
        from smtpguard.authresults import build_authentication_results
    except ImportError:
        return None
    results = await proxy.gate.run_checks(proxy.auth_results_checks, Stage.DATA, session, txn)
    if not results:
        return None
    try:
        return str(build_authentication_results(proxy.authserv_id, results, session, txn))
    except Exception:
        log.exception("building Authentication-Results failed")
        return None
