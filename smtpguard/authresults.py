"""Authentication-Results (RFC 8601): build ours from check results; spot forged incoming ones.

Invariants of `build_authentication_results`:
- The value is one line: `authserv-id; resinfo; resinfo ...` (or `authserv-id; none`). It never
  contains CR, LF, NUL or any `;` other than the resinfo separators, so downstream parsers see
  exactly the results we wrote. Every value is a token, or a quoted-string with `"`/`\\` escaped
  and everything outside printable ASCII (and `;`) removed, at most 255 characters.
- Result words are only ever taken from RFC 8601's fixed vocabulary per method; anything else
  (e.g. `<check>.error` from the runner) becomes `temperror`.
- `smtp.mailfrom` is the validated sender address, or only its domain when the local part is not
  a plain token; `smtp.helo` is written only for a syntactically valid hostname.
`is_forged` is True for any incoming header that names our authserv-id (RFC 8601 §5), including
unparsable ones that merely start with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from smtpguard.checks.base import CheckResult
from smtpguard.facts import Session, Transaction

_TOKEN = re.compile(r"^[A-Za-z0-9_.+-]+(@[A-Za-z0-9_.-]+)?$")
_LOCAL = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_DROP = re.compile(r"[^\x20-\x7e]|;")
_WORDS = {
    "spf": ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"),
    "dkim": ("pass", "fail", "neutral", "none", "temperror", "permerror", "policy"),
    "dmarc": ("pass", "fail", "none", "temperror", "permerror"),
    "arc": ("pass", "fail", "none"),
    "iprev": ("pass", "fail", "temperror", "permerror"),
}
_ORDER = ("iprev", "spf", "dkim", "arc", "dmarc")


def hostname(text: str | None) -> str | None:
    """A syntactically valid multi-label hostname (lowercased, no trailing dot), else None."""
    if not text:
        return None
    name = text.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return name


def pvalue(text: str) -> str:
    """`text` as a token when safe, else as a sanitised quoted-string ("" when nothing is left)."""
    if _TOKEN.match(text) and len(text) <= 255:
        return text
    clean = _DROP.sub("", text)[:255]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"' if clean else ""


def selector(text: str) -> str | None:
    """A DKIM selector (dot-separated labels), else None."""
    labels = text.split(".")
    return text if len(text) <= 253 and all(_LABEL.match(label) for label in labels) else None


def algorithm(text: str) -> str | None:
    return text if re.fullmatch(r"[a-z0-9-]{1,32}", text) else None


_VALIDATE: dict[str, Callable[[str], str | None]] = {
    "header.d": hostname, "header.from": hostname, "header.s": selector, "header.a": algorithm}


def mailfrom(sender: str) -> str | None:
    local, at, domain = sender.rpartition("@")
    host = hostname(domain) if at else None
    if host is None:
        return None
    return f"{local}@{host}" if _LOCAL.match(local) else host


def _word(method: str, result: CheckResult | None) -> str | None:
    if result is None:
        return None
    word = result.details.get("result", "")
    if method == "iprev" and (word == "none" or "iprev.none" in result.outcomes):
        return "permerror"  # RFC 8601 §3: no PTR data is an iprev permerror
    if word in _WORDS[method]:
        return word
    for outcome in result.outcomes:
        short = outcome.partition(".")[2]
        if short in _WORDS[method]:
            return short
    return "temperror" if "temperror" in _WORDS[method] else None


def _resinfos(method: str, result: CheckResult, session: Session, tx: Transaction) -> list[str]:
    word = _word(method, result)
    if word is None:
        return []
    d = result.details
    props: list[tuple[str, str]] = []
    if method == "iprev":
        props = [("policy.iprev", str(session.client_ip))]
    elif method == "spf":
        helo = hostname(session.helo)
        sender = mailfrom(tx.sender) if tx.sender else None
        if d.get("identity") == "helo" or not tx.sender:
            props = [("smtp.helo", helo)] if helo else []
        elif sender:
            props = [("smtp.mailfrom", sender)]
    elif method == "dkim":
        count = int(d["signatures"]) if d.get("signatures", "").isdigit() else 0
        infos = []
        for i in range(count):
            sig_word = d.get(f"sig{i}.result", "")
            if sig_word not in _WORDS["dkim"]:
                continue
            sig_props = [(f"header.{k[0]}", d.get(f"sig{i}.{k}", "")) for k in ("domain", "selector", "algorithm")]
            infos.append(_render("dkim", sig_word, sig_props))
        return infos or [_render("dkim", word if count == 0 else "permerror", [])]
    elif method == "dmarc" and d.get("from_domain"):
        props = [("header.from", d["from_domain"])]
    return [_render(method, word, props)]


def _render(method: str, word: str, props: list[tuple[str, str]]) -> str:
    parts = [f"{method}={word}"]
    for key, raw in props:
        check = _VALIDATE.get(key)
        value = pvalue((check(raw) if check else raw) or "")
        if value:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def build_authentication_results(authserv_id: str, results: Mapping[str, CheckResult], session: Session,
                                 transaction: Transaction) -> str:
    """The header VALUE (no field name, no CRLF) for our Authentication-Results header."""
    server = hostname(authserv_id) or re.sub(r"[^A-Za-z0-9.-]", "", authserv_id) or "localhost"
    infos = [info for method in _ORDER if method in results
             for info in _resinfos(method, results[method], session, transaction)]
    return f"{server}; " + ("; ".join(infos) if infos else "none")


def _skip_cfws(text: str, i: int) -> int:
    """Index of the first character after whitespace and (nested) comments from `i`."""
    depth = 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    return i


def parse_authserv_id(header_value: str) -> str | None:
    """The authserv-id of an A-R header value (lowercase, no trailing dot), or None if unparsable."""
    i = _skip_cfws(header_value, 0)
    text = header_value[i:]
    if text.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        if m is None:
            return None
        value = re.sub(r"\\(.)", r"\1", m.group(1))
    else:
        m = re.match(r"[^\s;()\"]+", text)
        if m is None:
            return None
        value = m.group(0)
    return value.strip().rstrip(".").lower() or None


def is_forged(header_value: str, authserv_id: str) -> bool:
    """True when an incoming A-R header claims our authserv-id (remove it before forwarding)."""
    ours = authserv_id.strip().rstrip(".").lower()
    if not ours:
        return False
    if parse_authserv_id(header_value) == ours:
        return True
    # garbage that merely starts with our id (after CFWS) is treated as forged too
    text = header_value[_skip_cfws(header_value, 0):].lstrip('"').lower()
    if text.startswith(ours):
        rest = text[len(ours):]
        return not rest or (not re.match(r"[a-z0-9-]", rest[0]) and not re.match(r"\.[a-z0-9-]", rest))
    return False
