"""`dnswl`: IP-address allow lists, the same engine as `dnsbl` with negative default weights.

Outcomes: `dnswl.listed`, `dnswl.<zone>.listed`, `dnswl.error`, `dnswl.<zone>.error`,
`dnswl.not_listed`; TXT reason in `template_fields["dnswl_reason"]` when allowed. Other checks
(greylist) may require it and skip work for listed clients.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks.dnsbl import DNSBLCheck


class DNSWLCheck(DNSBLCheck):
    name: ClassVar[str] = "dnswl"
    DEFAULT_WEIGHT: ClassVar[float] = -1.0


CHECK = DNSWLCheck
