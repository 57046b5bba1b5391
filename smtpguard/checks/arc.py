"""`arc`: verify the ARC chain (RFC 8617) with dkimpy, keys pre-fetched through the async Resolver.

Invariants:
- Every key an ARC-Seal or ARC-Message-Signature names is fetched concurrently first; dkimpy's
  verify then only sees a dict (`dnsfunc`), so it never does I/O (worker thread when large).
- Outcomes: exactly one of `arc.pass` / `arc.fail` / `arc.none` / `arc.temperror`; a chain that
  did not pass while a key lookup failed temporarily is `temperror`, never `fail`.
- `arc.trusted_pass` is added to `arc.pass` only when the sealer of the highest instance (its
  ARC-Seal d=) is in `trusted_sealers` (exact, case-insensitive domain match). Rules use it to
  override a DMARC failure for trusted forwarders / mailing lists.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import dkim as dkimpy
from dkim.util import parse_tag_value

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.checks.dkim import fetch_keys, sanitize
from smtpguard.errors import DNSError
from smtpguard.stage import Scope, Stage

_ARC = re.compile(r"^arc-(seal|message-signature|authentication-results)$", re.IGNORECASE)


class Options(CheckOptions):
    trusted_sealers: list[str] = []  # domains (ARC-Seal d=) whose passing chains are trusted
    min_key_bits: int = 1024
    executor_threshold: int = 262144  # bytes; larger messages are verified in a worker thread
    max_instances: int = 50  # RFC 8617 §4.2.1: i= is at most 50


def key_names(a: Any) -> tuple[list[bytes], int, str]:
    """(key names as dkimpy asks for them, highest instance, its sealer domain) -- no I/O."""
    max_instance, headers = a.sorted_arc_headers()
    names: list[bytes] = []
    sealer = ""
    for instance, (name, value) in headers:
        if name.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        try:
            tags = parse_tag_value(value)
        except Exception:  # malformed tag list: verification will report it
            continue
        if b"s" in tags and b"d" in tags:
            names.append(tags[b"s"] + b"._domainkey." + tags[b"d"] + b".")
            if instance == max_instance and name.lower() == b"arc-seal":
                sealer = sanitize(tags[b"d"]).lower()
    return names, max_instance, sealer


def verify_chain(a: Any, keys: dict[bytes, bytes]) -> tuple[str, str]:
    """CPU only: (cv as text: pass/fail/none, reason)."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name)

    try:
        cv, _results, reason = a.verify(dnsfunc=dnsfunc)
    except dkimpy.DKIMException as exc:
        return "fail", sanitize(str(exc))
    except Exception:  # hostile input can raise assorted errors inside dkimpy
        return "fail", "unverifiable ARC set"
    text = {b"pass": "pass", b"none": "none"}.get(cv or b"", "fail")
    return text, sanitize(str(reason))


class ArcCheck(CheckBase):
    name = "arc"
    stage = Stage.DATA
    scope = Scope.TRANSACTION
    Options = Options
    OUTCOMES = ("pass", "fail", "none", "temperror", "trusted_pass")

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        opts = self.options
        message = ctx.transaction.message if ctx.transaction is not None else None
        if message is None or not any(_ARC.match(n) for n, _ in message.headers):
            return CheckResult.of(self.outcome("none"), result="none")
        try:
            a = dkimpy.ARC(message.raw, minkey=opts.min_key_bits)
            names, instances, sealer = key_names(a)
        except dkimpy.DKIMException:
            return CheckResult.of(self.outcome("fail"), result="fail", reason="unparsable message")
        if instances > opts.max_instances:
            return CheckResult.of(self.outcome("fail"), result="fail", reason="too many ARC instances")
        fetched = await fetch_keys(ctx.env.dns, names)
        temp = any(isinstance(v, DNSError) for v in fetched.values())
        keys = {n: v[0] for n, v in fetched.items() if not isinstance(v, DNSError) and v}
        if message.size > opts.executor_threshold:
            cv, reason = await asyncio.get_running_loop().run_in_executor(None, verify_chain, a, keys)
        else:
            cv, reason = verify_chain(a, keys)
        if cv != "pass" and temp:
            cv, reason = "temperror", "key lookup failed"
        details = {"result": cv, "reason": reason, "instances": str(instances), "sealer": sealer}
        outcomes = {self.outcome(cv)}
        if cv == "pass" and sealer and sealer in {s.lower().rstrip(".") for s in opts.trusted_sealers}:
            outcomes.add(self.outcome("trusted_pass"))
            details["trusted"] = "yes"
        return CheckResult(frozenset(outcomes), details)


CHECK = ArcCheck
