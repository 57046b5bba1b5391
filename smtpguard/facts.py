"""What is known about a session and its current transaction: the facts policy decides on.

The proxy fills these in as the SMTP dialogue goes on; checks and rule conditions only read
them. Invariant: nothing here does I/O, and every field has a value at the stage named in its
comment (before that it is None / empty).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class TLSFacts:
    version: str  # e.g. "TLSv1.3"
    cipher: str


class Message:
    """The message at the data stage: raw bytes (CRLF lines, unstuffed) plus parsed headers.

    `headers` are parsed on first use (most policies never look at them), unless given."""

    __slots__ = ("_headers", "raw")

    def __init__(self, raw: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.raw = raw
        self._headers = headers

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, unfolded value) in order."""
        if self._headers is None:
            from smtpguard.protocol.data import parse_headers

            self._headers = parse_headers(self.raw)
        return self._headers

    @property
    def size(self) -> int:
        return len(self.raw)

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def __repr__(self) -> str:
        return f"Message(size={len(self.raw)})"


@dataclass(slots=True)
class Transaction:
    """One MAIL FROM ... end-of-data transaction. `id` appears in replies and logs."""

    id: str
    sender: str | None = None  # mail stage; "" is the null sender <>
    mail_params: dict[str, str | None] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)  # accepted by upstream so far
    recipient: str | None = None  # rcpt stage: the one being decided
    rcpt_params: dict[str, str | None] = field(default_factory=dict)
    failed_recipients: int = 0
    message: Message | None = None  # data stage
    declared_size: int | None = None  # MAIL SIZE=
    # owned by the policy runner (checks and conditions never write these):
    policy: Any = None  # the policy version pinned for this transaction (hot reload safety)
    results: dict[str, Any] = field(default_factory=dict)  # transaction-scope check results
    rcpt_results: dict[str, dict[str, Any]] = field(default_factory=dict)  # recipient -> results
    score: float = 0.0
    headers: list[tuple[str, str]] = field(default_factory=list)  # from add_header / tag actions
    accepted_by_rule: bool = False  # an `accept` rule with scope transaction matched

    @property
    def sender_domain(self) -> str | None:
        return domain_of(self.sender)

    @property
    def recipient_domain(self) -> str | None:
        return domain_of(self.recipient)


@dataclass(slots=True)
class Session:
    """One client connection. Survives STARTTLS (the proxy carries it over)."""

    id: str
    listener: str
    client_ip: IPAddress
    client_port: int
    local_ip: IPAddress | None = None
    local_port: int | None = None
    client_name: str | None = None  # verified rDNS name (FCrDNS) when looked up, else None
    helo: str | None = None  # helo stage
    esmtp: bool = False  # EHLO (True) or HELO (False)
    tls: TLSFacts | None = None
    proxied: bool = False  # the client address came from a PROXY protocol header
    command: str | None = None  # command stage: the verb (uppercase)
    command_arg: str | None = None
    unknown_commands: int = 0
    pipelining_violation: bool = False
    early_talker: bool = False
    transactions: int = 0
    transaction: Transaction | None = None
    # owned by the policy runner:
    results: dict[str, Any] = field(default_factory=dict)  # connection-scope check results
    score: float = 0.0
    accepted_by_rule: bool = False  # an `accept` rule with scope session matched


def domain_of(address: str | None) -> str | None:
    """`user@Example.COM` -> `example.com`; None for None, "" (null sender) or no domain."""
    if not address:
        return None
    _, at, domain = address.rpartition("@")
    if not at or not domain:
        return None
    return domain.rstrip(".").lower()
