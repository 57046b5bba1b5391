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
    raw_headers, rest = split_header_block(content)
    kept: list[bytes] = []
    skipping = False
    for line in raw_headers:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = False
        name, colon, _ = line.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            full = _unfold(raw_headers, line)
            if _claims_us(full, authserv_id):
                skipping = True
                log.info("removed a forged Authentication-Results header claiming our authserv-id")
                continue
        kept.append(line)
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


def _unfold(raw_headers: list[bytes], first: bytes) -> str:
    index = raw_headers.index(first)
    parts = [first]
    for line in raw_headers[index + 1:]:
        if line[:1] in (b" ", b"\t"):
            parts.append(line)
        else:
            break
    return b" ".join(p.strip() for p in parts).decode("utf-8", "replace").partition(":")[2]


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
