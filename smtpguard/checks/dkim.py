"""`dkim`: verify EVERY DKIM-Signature of the message (RFC 6376, RSA and ed25519 per RFC 8463).

Flow: parse signatures (no I/O) -> fetch all keys concurrently through the async Resolver ->
verify with dkimpy using a dict-backed `dnsfunc` (pure CPU; in a worker thread when the message
is larger than `executor_threshold`).

Invariants:
- One result per signature, in header order, each one of pass / fail / neutral / temperror /
  permerror (RFC 8601 names); outcomes are the set of those, plus `dkim.none` when the message
  has no signature. `dkim.pass` means at least one signature verified.
- A DNS failure for a key is `temperror` for that signature, never fail. No key, a malformed
  key, a revoked key, an RSA key shorter than `min_key_bits` or rsa-sha1 (unless `allow_sha1`,
  RFC 8301) are `permerror`.
- A signature with `l=` that verifies is `neutral` unless `allow_body_length` (content may have
  been appended after the signed part).
- Details only hold sanitised text: `sigN.domain|selector|algorithm|result|reason`,
  `signatures` (count), `pass_domains` (comma-separated d= of passing signatures, lowercase).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.stage import Scope, Stage

_UNSAFE = re.compile(r"[^\x20-\x7e]|[;\\\"]")
_SPACE = re.compile(r"\s+")
RESULTS = ("pass", "fail", "neutral", "temperror", "permerror")
_PRECEDENCE = ("pass", "temperror", "fail", "neutral", "permerror")


class Options(CheckOptions):
    allow_sha1: bool = False  # RFC 8301: rsa-sha1 MUST NOT be considered valid
    min_key_bits: int = 1024  # RFC 8301: RSA keys shorter than 1024 bits MUST NOT be valid
    allow_body_length: bool = False  # `l=` signatures that verify become neutral when False
    executor_threshold: int = 262144  # bytes; larger messages are verified in a worker thread
    max_signatures: int = 10  # signatures beyond this are not evaluated (resource bound)


def sanitize(text: str | bytes, limit: int = 120) -> str:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return _UNSAFE.sub("?", _SPACE.sub(" ", text).strip())[:limit]


@dataclass(slots=True)
class Signature:
    index: int
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    key_name: bytes = b""  # exactly as dkimpy asks its dnsfunc: b"s._domainkey.d."
    body_length: bool = False
    result: str = ""  # set early when the signature cannot be verified at all
    reason: str = ""


def parse_signatures(d: Any, count: int, options: Options) -> list[Signature]:
    """Pure: read every signature's tags; decide early the ones that need no key."""
    out: list[Signature] = []
    for idx in range(count):
        sig = Signature(idx)
        out.append(sig)
        if idx >= options.max_signatures:
            sig.result, sig.reason = "permerror", "too many signatures"
            continue
        try:
            prep = d.verify_headerprep(idx)
        except dkimpy.DKIMException as exc:
            sig.result, sig.reason = "permerror", sanitize(str(exc))
            continue
        if not prep:
            sig.result, sig.reason = "permerror", "unparsable signature"
            continue
        fields = prep[0]
        sig.domain = sanitize(fields[b"d"]).lower()
        sig.selector = sanitize(fields[b"s"])
        sig.algorithm = sanitize(fields[b"a"]).lower()
        sig.body_length = b"l" in fields
        sig.key_name = fields[b"s"] + b"._domainkey." + fields[b"d"] + b"."
        if sig.algorithm == "rsa-sha1" and not options.allow_sha1:
            sig.result, sig.reason = "permerror", "rsa-sha1 not accepted (RFC 8301)"
        else:
            try:
                sig.key_name.decode("ascii")
            except UnicodeDecodeError:
                sig.result, sig.reason = "permerror", "non-ASCII selector or domain"
    return out


async def fetch_keys(resolver: Any, names: Sequence[bytes]) -> dict[bytes, list[bytes] | DNSError]:
    """Concurrently fetch the TXT records of every key name ([] = no key, DNSError = temporary)."""

    async def one(name: bytes) -> list[bytes] | DNSError:
        try:
            records: list[bytes] = await resolver.lookup_txt(name.decode("ascii"))
        except DNSError as exc:
            return exc
        return records

    unique = list(dict.fromkeys(names))
    found = await asyncio.gather(*(one(n) for n in unique))
    return dict(zip(unique, found, strict=True))


def select_key(records: list[bytes] | DNSError, min_key_bits: int) -> tuple[bytes | None, str, str]:
    """(key record, result, reason): result is "" when the key is usable."""
    if isinstance(records, DNSError):
        return None, "temperror", "key lookup failed"
    if not records:
        return None, "permerror", "no key"
    reason = "malformed key"
    for record in records:
        try:
            _pk, keysize, ktag, _tlsrpt = dkimpy.evaluate_pk(b"key", record)
        except Exception as exc:  # dkimpy raises several types for bad keys
            reason = sanitize(str(exc)) if isinstance(exc, dkimpy.DKIMException) else "malformed key"
            continue
        if ktag == b"rsa" and keysize < min_key_bits:
            return None, "permerror", f"key too small ({keysize} bits)"
        return record, "", ""
    return None, "permerror", reason


def verify_signatures(d: Any, sigs: list[Signature], keys: Mapping[bytes, bytes], options: Options) -> None:
    """CPU only: verify the signatures still undecided, with `keys` as the only DNS."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name)

    for sig in sigs:
        if sig.result:
            continue
        try:
            ok = d.verify(sig.index, dnsfunc=dnsfunc)
        except dkimpy.ValidationError as exc:  # body hash mismatch: the signature does not verify
            sig.result, sig.reason = "fail", sanitize(str(exc).split("(")[0])
            continue
        except dkimpy.DKIMException as exc:
            sig.result, sig.reason = "permerror", sanitize(str(exc))
            continue
        except Exception:  # dkimpy/crypto raise assorted errors on hostile input
            sig.result, sig.reason = "permerror", "unverifiable signature"
            continue
        if not ok:
            sig.result, sig.reason = "fail", "signature did not verify"
        elif sig.body_length and not options.allow_body_length:
            sig.result, sig.reason = "neutral", "l= body length limit not accepted"
        else:
            sig.result, sig.reason = "pass", ""


def summarize(sigs: list[Signature]) -> dict[str, str]:
    details: dict[str, str] = {"signatures": str(len(sigs))}
    for s in sigs:
        p = f"sig{s.index}."
        details.update({p + "domain": s.domain, p + "selector": s.selector, p + "algorithm": s.algorithm,
                        p + "result": s.result, p + "reason": s.reason})
    details["pass_domains"] = ",".join(dict.fromkeys(s.domain for s in sigs if s.result == "pass"))
    found = {s.result for s in sigs}
    details["result"] = next((r for r in _PRECEDENCE if r in found), "none")
    return details


class DkimCheck(CheckBase):
    name = "dkim"
    stage = Stage.DATA
    scope = Scope.TRANSACTION
    Options = Options
    OUTCOMES = (*RESULTS, "none")

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        opts = self.options
        message = ctx.transaction.message if ctx.transaction is not None else None
        if message is None:
            return CheckResult.of(self.outcome("none"), result="none", signatures="0")
        count = sum(1 for v in message.header_values("DKIM-Signature"))
        if count == 0:
            return CheckResult.of(self.outcome("none"), result="none", signatures="0")
        try:
            d = dkimpy.DKIM(message.raw, minkey=opts.min_key_bits)
        except dkimpy.DKIMException:
            return CheckResult.of(self.outcome("permerror"), result="permerror", signatures=str(count),
                                  reason="unparsable message")
        count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")  # dkimpy's view
        sigs = parse_signatures(d, count, opts)
        fetched = await fetch_keys(ctx.env.dns, [s.key_name for s in sigs if not s.result])
        keys: dict[bytes, bytes] = {}
        for sig in sigs:
            if sig.result:
                continue
            key, result, reason = select_key(fetched[sig.key_name], opts.min_key_bits)
            if key is None:
                sig.result, sig.reason = result, reason
            else:
                keys[sig.key_name] = key
        if message.size > opts.executor_threshold:
            await asyncio.get_running_loop().run_in_executor(None, verify_signatures, d, sigs, keys, opts)
        else:
            verify_signatures(d, sigs, keys, opts)
        details = summarize(sigs)
        return CheckResult(frozenset(self.outcome(s.result) for s in sigs), details)


CHECK = DkimCheck
