"""`rhsbl`: domain block lists for the sender domain, the HELO name and the rDNS name.

Runs at MAIL (all three names are known then), once per transaction. Every (zone, name) pair is
queried concurrently; a name used by several targets (HELO = rDNS) is queried once per zone.
Outcomes: `rhsbl.listed`, `rhsbl.<target>.listed`, `rhsbl.<zone>.listed`,
`rhsbl.<zone>.<target>.listed` (target: sender, helo, rdns), `rhsbl.error`,
`rhsbl.<zone>.error`, and `rhsbl.not_listed` when every query answered cleanly without a hit.
Skipped names: the null sender, HELO address literals and bare IPs and names without a dot, an unknown rDNS.
Engine: `smtpguard.dnslist` (health probes use the RFC 5782 `test` / `invalid` points).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import ClassVar, Literal

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.dnslist import DNSList, ZoneAnswer, ZoneListOptions, summarize, zone_outcomes
from smtpguard.lists import parse_domain
from smtpguard.stage import Scope, Stage

Target = Literal["sender", "helo", "rdns"]
TARGETS: tuple[Target, ...] = ("sender", "helo", "rdns")


class RHSBLCheck(CheckBase):
    name: ClassVar[str] = "rhsbl"
    stage: ClassVar[Stage] = Stage.MAIL
    scope: ClassVar[Scope] = Scope.TRANSACTION

    class Options(ZoneListOptions):
        targets: tuple[Target, ...] = TARGETS

    options: Options

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        self.lists = DNSList(self.name, self.options.zones, default_weight=1.0, kind="domain")

    def declared_outcomes(self) -> frozenset[str]:
        out = set(zone_outcomes(self.name, self.lists.names))
        for target in self.options.targets:
            out.add(f"rhsbl.{target}.listed")
            out |= {f"rhsbl.{zone}.{target}.listed" for zone in self.lists.names}
        return frozenset(out)

    def names_of(self, ctx: CheckContext) -> dict[Target, str]:
        """The queryable domain of each configured target."""
        found: dict[Target, str | None] = {
            "sender": ctx.transaction.sender_domain if ctx.transaction is not None else None,
            "helo": ctx.session.helo,
            "rdns": ctx.session.client_name,
        }
        names: dict[Target, str] = {}
        for target in self.options.targets:
            domain = _queryable(found[target])
            if domain is not None:
                names[target] = domain
        return names

    async def run(self, ctx: CheckContext) -> CheckResult:
        names = self.names_of(ctx)
        domains = sorted(set(names.values()))
        per_domain = await asyncio.gather(*(self.lists.query_domain(ctx.env.dns, d) for d in domains))
        answers_of = dict(zip(domains, per_domain, strict=True))
        flat: list[ZoneAnswer] = [a for answers in per_domain for a in answers]
        result = summarize(self.name, flat, "rhsbl_reason")
        if not domains:
            return CheckResult(frozenset({"rhsbl.not_listed"}))
        outcomes = set(result.outcomes)
        details = dict(result.details)
        for target, domain in names.items():
            for a in answers_of[domain]:
                if a.status == "listed":
                    outcomes |= {f"rhsbl.{target}.listed", f"rhsbl.{a.name}.{target}.listed"}
                    details[f"{a.name}.{target}"] = "listed " + ",".join(a.codes)
        return CheckResult(frozenset(outcomes), details, result.score, result.template_fields)

    async def start(self) -> None:
        await self.lists.start(self.env.dns)

    async def close(self) -> None:
        await self.lists.close()


def _queryable(name: str | None) -> str | None:
    if not name or name.startswith("[") or "." not in name.strip("."):
        return None
    try:
        ipaddress.ip_address(name)
        return None  # a bare IP is no domain (lists answer it with an error code)
    except ValueError:
        pass
    try:
        return parse_domain(name).lstrip(".")
    except ValueError:
        return None


CHECK = RHSBLCheck
