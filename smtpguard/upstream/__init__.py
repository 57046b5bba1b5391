"""The upstream side: where accepted commands and messages go.

`Upstream.open(identity)` gives one `UpstreamSession` per client session (opened lazily at the
first MAIL that passes local policy). Every method returns the upstream's reply as a `Reply`
for the client, or raises `UpstreamError` when the upstream is unreachable or drops the session
(the proxy answers 451 4.4.1 / 4.4.2 then; nothing is ever acknowledged that the upstream did
not accept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from smtpguard.reply import Reply


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """What the upstream is told about the real client (XCLIENT / XFORWARD)."""

    addr: str
    port: int
    name: str | None  # verified rDNS name, None -> [UNAVAILABLE]
    helo: str | None
    proto: str  # SMTP or ESMTP


class UpstreamSession(Protocol):
    extensions: frozenset[str]  # upper-case EHLO keywords of the upstream (after XCLIENT)

    async def mail(self, sender: str, params: dict[str, str | None]) -> Reply: ...
    async def rcpt(self, recipient: str, params: dict[str, str | None]) -> Reply: ...
    async def data(self, content: bytes) -> Reply: ...
    async def rset(self) -> None: ...
    async def command(self, verb: str, arg: str | None) -> Reply: ...
    async def close(self) -> None: ...
    @property
    def usable(self) -> bool: ...


class Upstream(Protocol):
    description: str
    known_extensions: frozenset[str] | None  # learnt from the last session or probe

    async def open(self, identity: ClientIdentity) -> UpstreamSession: ...
    async def probe(self) -> bool: ...
