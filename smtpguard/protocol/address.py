"""Envelope parsing: MAIL FROM / RCPT TO paths and their ESMTP parameters (pure).

Replaces aiosmtpd's `_getaddr` (183 us per address, libraries.md §1.6) with a strict-enough
regex parser. Invariants (tests/unit/test_address.py):
- the null sender `<>` parses to "" and only for MAIL;
- an address has exactly one `@` outside a quoted local part, a non-empty local part of at most
  64 octets, and a domain that is a hostname or an address literal, at most 255 octets;
- non-ASCII is accepted only when the client said SMTPUTF8;
- only the parameters smtpguard knows are accepted, each validated (RFC 1870, 6152, 6531,
  3461): anything else is a `555 5.5.4` error, never forwarded.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from smtpguard.reply import Reply

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_U = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_DOT_ATOM = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_DOT_ATOM_U = re.compile(rf"^{_ATOM_U}(?:\.{_ATOM_U})*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])*"$')
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LABEL_U = re.compile(r"^(?!-)(?:[A-Za-z0-9-]|[^\x00-\x7f]){1,63}(?<!-)$")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")

SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")


class EnvelopeError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Path:
    address: str  # "" for the null sender
    params: dict[str, str | None]
    utf8: bool  # the address contains non-ASCII


def parse_mail(arg: str | None, *, smtputf8_offered: bool, max_size: int, dsn_offered: bool = True) -> Path:
    path = _parse(arg, "FROM:", SYNTAX_MAIL, allow_null=True)
    params = path.params
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                raise EnvelopeError(Reply(501, "5.5.4", "Bad SIZE parameter"))
            if int(value) > max_size:
                raise EnvelopeError(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise EnvelopeError(Reply(501, "5.5.4", "Bad BODY parameter (7BIT or 8BITMIME)"))
        elif key == "SMTPUTF8":
            if value is not None or not smtputf8_offered:
                raise EnvelopeError(Reply(555, "5.5.4", "SMTPUTF8 parameter not accepted here"))
        elif key in ("RET", "ENVID") and not dsn_offered:
            raise EnvelopeError(Reply(555, "5.5.4", f"{key} parameter not accepted here (no DSN)"))
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise EnvelopeError(Reply(501, "5.5.4", "Bad RET parameter (FULL or HDRS)"))
        elif key == "ENVID":
            if value is None or len(value) > 100 or not _XTEXT.match(value):
                raise EnvelopeError(Reply(501, "5.5.4", "Bad ENVID parameter"))
        else:
            raise EnvelopeError(Reply(555, "5.5.4", f"Unsupported MAIL parameter {key}"))
    if path.utf8 and "SMTPUTF8" not in params:
        raise EnvelopeError(Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter"))
    return path


def parse_rcpt(arg: str | None, *, smtputf8: bool, dsn_offered: bool = True) -> Path:
    path = _parse(arg, "TO:", SYNTAX_RCPT, allow_null=False)
    for key, value in path.params.items():
        if key in ("NOTIFY", "ORCPT") and not dsn_offered:
            raise EnvelopeError(Reply(555, "5.5.4", f"{key} parameter not accepted here (no DSN)"))
        if key == "NOTIFY":
            items = (value or "").upper().split(",")
            valid = {"SUCCESS", "FAILURE", "DELAY"}
            if not (items == ["NEVER"] or (items and all(i in valid for i in items) and len(set(items)) == len(items))):
                raise EnvelopeError(Reply(501, "5.5.4", "Bad NOTIFY parameter"))
        elif key == "ORCPT":
            kind, semi, text = (value or "").partition(";")
            if not semi or not kind or not text or len(value or "") > 500 or not _XTEXT.match(text):
                raise EnvelopeError(Reply(501, "5.5.4", "Bad ORCPT parameter"))
        else:
            raise EnvelopeError(Reply(555, "5.5.4", f"Unsupported RCPT parameter {key}"))
    if path.utf8 and not smtputf8:
        raise EnvelopeError(Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8 (given at MAIL FROM)"))
    return path


def _parse(arg: str | None, keyword: str, syntax: Reply, *, allow_null: bool) -> Path:
    if arg is None or not arg[: len(keyword)].upper() == keyword:
        raise EnvelopeError(syntax)
    rest = arg[len(keyword):].lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise EnvelopeError(syntax)
        inner, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(" "):
            raise EnvelopeError(syntax)
    else:  # lenient: MAIL FROM:user@example.com (no brackets), as Postfix accepts
        inner, _, tail = rest.partition(" ")
        tail = " " + tail if tail else ""
        if not inner:
            raise EnvelopeError(syntax)
    inner = _strip_source_route(inner)
    params = parse_params(tail.strip())
    if inner == "":
        if not allow_null:
            raise EnvelopeError(Reply(501, "5.1.3", "Bad recipient address syntax"))
        return Path("", params, False)
    if not is_valid_address(inner):
        code = "5.1.7" if allow_null else "5.1.3"
        what = "sender" if allow_null else "recipient"
        raise EnvelopeError(Reply(501, code, f"Bad {what} address syntax"))
    return Path(inner, params, not inner.isascii())


def _closing_bracket(text: str) -> int:
    quoted = False
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
        i += 1
    return -1


def _strip_source_route(inner: str) -> str:
    # RFC 5321 4.1.2: "@one,@two:user@domain" -- the route is ignored
    if inner.startswith("@") and ":" in inner:
        return inner.split(":", 1)[1]
    return inner


def parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise EnvelopeError(Reply(501, "5.5.4", "Bad ESMTP parameter syntax"))
        upper = key.upper()
        if upper in params:
            raise EnvelopeError(Reply(501, "5.5.4", f"Duplicate {upper} parameter"))
        if value and not value.isprintable():
            raise EnvelopeError(Reply(501, "5.5.4", "Bad ESMTP parameter syntax"))
        params[upper] = value if eq else None
    return params


def is_valid_address(address: str) -> bool:
    if len(address.encode("utf-8", "surrogateescape")) > 254:
        return False
    if address.startswith('"'):
        end = _closing_quote(address)
        if end < 0 or end + 1 >= len(address) or address[end + 1] != "@":
            return False
        local, domain = address[: end + 1], address[end + 2:]
        if not _QUOTED.match(local):
            return False
    else:
        local, at, domain = address.rpartition("@")
        if not at or not _DOT_ATOM_U.match(local):
            return False
    if not local or len(local.encode("utf-8", "surrogateescape")) > 64:
        return False
    return is_valid_domain(domain, allow_literal=True)


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def is_valid_domain(domain: str, *, allow_literal: bool = False) -> bool:
    if allow_literal and domain.startswith("[") and domain.endswith("]"):
        return parse_address_literal(domain) is not None
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or len(name) > 253:
        return False
    pattern = _LABEL if name.isascii() else _LABEL_U
    return all(pattern.match(label) for label in name.split("."))


def parse_address_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` -> the address, else None."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    try:
        if inner[:5].upper() == "IPV6:":
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


_XTEXT_PLAIN = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]*")  # printable ASCII but "+" and "="


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext for XCLIENT/XFORWARD attribute values (R8)."""
    if _XTEXT_PLAIN.fullmatch(value):
        return value  # the usual HELO name or host name: nothing to encode
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
