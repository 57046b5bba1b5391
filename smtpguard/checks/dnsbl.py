"""`dnsbl`: IP-address block lists (RFC 5782), queried at CONNECT, every zone concurrently.

Outcomes: `dnsbl.listed`, `dnsbl.<zone>.listed`, `dnsbl.error`, `dnsbl.<zone>.error`, and
`dnsbl.not_listed` only when every zone answered cleanly and none listed the client. The score
is the sum of the hit weights; a TXT reason reaches `template_fields["dnsbl_reason"]` only from
a zone with `txt_reason_in_reply: true`. Engine, error codes, DQS keys and health probes:
`smtpguard.dnslist`.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.dnslist import DNSList, ZoneListOptions, summarize, zone_outcomes
from smtpguard.stage import Scope, Stage


class DNSBLCheck(CheckBase):
    name: ClassVar[str] = "dnsbl"
    stage: ClassVar[Stage] = Stage.CONNECT
    scope: ClassVar[Scope] = Scope.CONNECTION
    DEFAULT_WEIGHT: ClassVar[float] = 1.0

    Options: ClassVar[type[ZoneListOptions]] = ZoneListOptions
    options: ZoneListOptions

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        self.lists = DNSList(self.name, self.options.zones, default_weight=self.DEFAULT_WEIGHT, kind="address")

    def declared_outcomes(self) -> frozenset[str]:
        return zone_outcomes(self.name, self.lists.names)

    async def run(self, ctx: CheckContext) -> CheckResult:
        answers = await self.lists.query_address(ctx.env.dns, ctx.session.client_ip)
        return summarize(self.name, answers, f"{self.name}_reason")

    async def start(self) -> None:
        await self.lists.start(self.env.dns)

    async def close(self) -> None:
        await self.lists.close()


CHECK = DNSBLCheck
