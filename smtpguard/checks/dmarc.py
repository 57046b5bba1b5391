"""`dmarc`: RFC 7489 evaluation of the RFC5322.From domain against the spf and dkim results.

In-house on purpose (see docs/checks/auth.md): ~200 lines, async DNS through our Resolver,
temperror semantics we control, org domains from `publicsuffixlist` (loaded once per process).

Invariants:
- Exactly one From header with exactly one address and a valid domain, else `permerror`.
- Record discovery: `_dmarc.<from>`, then `_dmarc.<org(from)>`; several DMARC records at one
  name, or none, is `none`. A DNS failure anywhere in discovery is `temperror`, never `fail`.
- `pass` iff SPF passed for an aligned domain or ANY DKIM signature passed with an aligned d=
  (relaxed: same org domain; strict: same domain).
- A `fail` is `temperror` instead when an aligned SPF or DKIM result was itself a temperror.
- Every `fail` also carries exactly one of `fail_reject`, `fail_quarantine`, `fail_none`: the
  disposition after `pct` sampling (RFC 7489 §6.6.4: a sampled-out reject becomes quarantine,
  quarantine becomes none). Sampling is a pure function of the transaction id (deterministic).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.stage import Scope, Stage

POLICIES = ("none", "quarantine", "reject")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class Options(CheckOptions):
    honor_pct: bool = True  # False: apply the requested policy to every failure (pct ignored)


@functools.cache
def public_suffix_list() -> PublicSuffixList:
    """The PSL, parsed once per process (~100 ms; first called at check construction)."""
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """RFC 7489 §3.2 organizational domain; a public suffix itself is its own org domain."""
    return public_suffix_list().privatesuffix(domain) or domain


def valid_domain(text: str) -> str | None:
    """Lowercase A-label domain with >= 2 labels, or None."""
    domain = text.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return domain


def parse_from_domain(values: list[str]) -> tuple[str | None, str]:
    """(From domain, "") or (None, reason) for a missing, repeated or unusable From."""
    if not values:
        return None, "no From header"
    if len(values) > 1:
        return None, "multiple From headers"
    addresses = [a for _, a in email.utils.getaddresses(values) if a]
    domains = {valid_domain(a.rpartition("@")[2]) for a in addresses if "@" in a}
    if len(addresses) != 1 or len(domains) != 1:
        return None, "From must hold exactly one address"
    domain = domains.pop()
    return (domain, "") if domain else (None, "invalid From domain")


@dataclass(frozen=True, slots=True)
class Record:
    p: str
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_record(text: bytes) -> Record | None:
    """A DMARC record, or None when `text` is not one (RFC 7489 §6.3, §6.6.3)."""
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags: dict[str, str] = {}
    for i, part in enumerate(s.split(";")):
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if i == 0 and (key != "v" or value != "DMARC1"):
            return None
        if eq and key and key not in tags:
            tags[key] = value
    p, sp = tags.get("p", "").lower(), tags.get("sp", "").lower()
    if p not in POLICIES or (sp and sp not in POLICIES):
        if "rua" not in tags:  # §6.6.3: no valid p and no rua -> no DMARC processing
            return None
        p, sp = "none", ""
    np = tags.get("np", "").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    mode = {"r": "r", "s": "s"}
    return Record(p=p, sp=sp or None, np=np if np in POLICIES else None,
                  adkim=mode.get(tags.get("adkim", "r").lower(), "r"),
                  aspf=mode.get(tags.get("aspf", "r").lower(), "r"), pct=pct if 0 <= pct <= 100 else 100)


async def fetch_record(resolver: Any, domain: str) -> list[Record]:
    """Every DMARC record at `_dmarc.<domain>` (raises DNSError)."""
    found = [parse_record(t) for t in await resolver.lookup_txt(f"_dmarc.{domain}")]
    return [r for r in found if r is not None]


async def domain_exists(resolver: Any, domain: str) -> bool:
    """Approximation of RFC 9091 non-existence: no A, AAAA or MX (DNS errors count as existing)."""
    try:
        for lookup in (resolver.lookup_a, resolver.lookup_aaaa, resolver.lookup_mx):
            if await lookup(domain):
                return True
    except DNSError:
        return True
    return False


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def sample(transaction_id: str) -> int:
    """Deterministic 0..99 draw for pct sampling, from the transaction id."""
    return int.from_bytes(hashlib.sha256(transaction_id.encode()).digest()[:4], "big") % 100


def dkim_results(details: Mapping[str, str]) -> list[tuple[str, str]]:
    """(d=, result) per signature from the dkim check's details."""
    try:
        count = int(details.get("signatures", "0"))
    except ValueError:
        return []
    return [(details.get(f"sig{i}.domain", ""), details.get(f"sig{i}.result", "")) for i in range(count)]


class DmarcCheck(CheckBase):
    name = "dmarc"
    stage = Stage.DATA
    scope = Scope.TRANSACTION
    requires = ("spf", "dkim")
    Options = Options
    OUTCOMES = ("pass", "fail", "none", "temperror", "permerror", "fail_reject", "fail_quarantine", "fail_none")

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        public_suffix_list()  # load now, not during the first message

    def _result(self, result: str, **details: str) -> CheckResult:
        return CheckResult(frozenset({self.outcome(result)}), {"result": result, **details})

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        tx = ctx.transaction
        message = tx.message if tx is not None else None
        if tx is None or message is None:
            return self._result("none", reason="no message")
        from_domain, reason = parse_from_domain(message.header_values("From"))
        if from_domain is None:
            return self._result("permerror", reason=reason)
        org = org_domain(from_domain)
        base = {"from_domain": from_domain, "org_domain": org}
        resolver = ctx.env.dns
        try:
            records, policy_domain = await fetch_record(resolver, from_domain), from_domain
            if not records and org != from_domain:
                records, policy_domain = await fetch_record(resolver, org), org
        except DNSError:
            return self._result("temperror", reason="DMARC record lookup failed", **base)
        if len(records) != 1:
            return self._result("none", reason="no DMARC record" if not records else "multiple DMARC records",
                                **base)
        record = records[0]
        policy = record.p
        if policy_domain != from_domain:
            policy = record.sp or record.p
            if record.np is not None and not await domain_exists(resolver, from_domain):
                policy = record.np
        spf = ctx.results.get("spf")
        dkim = ctx.results.get("dkim")
        spf_domain = spf.details.get("domain", "") if spf is not None else ""
        spf_aligned = bool(spf_domain) and aligned(spf_domain, from_domain, record.aspf)
        sigs = dkim_results(dkim.details) if dkim is not None else []
        dkim_pass = [d for d, r in sigs if r == "pass" and d and aligned(d, from_domain, record.adkim)]
        details = {**base, "policy_domain": policy_domain, "policy": policy, "pct": str(record.pct),
                   "spf_aligned": "yes" if spf_aligned and spf is not None and "spf.pass" in spf.outcomes else "no",
                   "dkim_aligned": "yes" if dkim_pass else "no", "dkim_domain": dkim_pass[0] if dkim_pass else ""}
        if details["spf_aligned"] == "yes" or dkim_pass:
            return self._result("pass", **details)
        spf_temp = spf_aligned and spf is not None and "spf.temperror" in spf.outcomes
        dkim_temp = any(r == "temperror" and d and aligned(d, from_domain, record.adkim) for d, r in sigs)
        if spf_temp or dkim_temp:
            return self._result("temperror", reason="aligned identifier had a temporary error", **details)
        disposition = policy
        sampled = sample(tx.id) < record.pct or not self.options.honor_pct
        if not sampled:
            disposition = _DOWNGRADE[policy]
        details.update(disposition=disposition, sampled="yes" if sampled else "no")
        return CheckResult(frozenset({self.outcome("fail"), self.outcome(f"fail_{disposition}")}),
                           {"result": "fail", **details})


CHECK = DmarcCheck
