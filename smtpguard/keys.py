"""Store keys built from session facts (rate limits, concurrency, greylisting).

Invariants:
- `FACT_STAGE` names the earliest stage at which each keyable fact exists; checks refuse at
  load time a key fact their stage does not know yet;
- `client_net` masks the client address to the configured prefix (IPv4-mapped IPv6 counts as
  IPv4), so a /64 of IPv6 addresses is one key;
- values are normalised (lowercase domains and addresses, `<>` for the null sender, `-` for an
  unknown value) and joined with `|`; a value that could contain the separator is hashed.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Literal

from smtpguard.facts import IPAddress, Session, Transaction
from smtpguard.stage import Stage

Fact = Literal["client_ip", "client_net", "sender", "sender_domain", "recipient", "recipient_domain", "helo",
               "listener"]

FACT_STAGE: dict[str, Stage] = {
    "client_ip": Stage.CONNECT,
    "client_net": Stage.CONNECT,
    "listener": Stage.CONNECT,
    "helo": Stage.HELO,
    "sender": Stage.MAIL,
    "sender_domain": Stage.MAIL,
    "recipient": Stage.RCPT,
    "recipient_domain": Stage.RCPT,
}
RECIPIENT_FACTS = frozenset({"recipient", "recipient_domain"})


def mask_address(address: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """`192.0.2.77`, 24 -> `192.0.2.0/24`; IPv4-mapped IPv6 is treated as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        prefix, bits = ipv4_prefix, 32
    else:
        prefix, bits = ipv6_prefix, 128
    masked = int(address) & (((1 << prefix) - 1) << (bits - prefix))  # cheaper than ip_network()
    network = ipaddress.IPv4Address(masked) if bits == 32 else ipaddress.IPv6Address(masked)
    return f"{network}/{prefix}"


def fact_value(fact: str, session: Session, transaction: Transaction | None, *, ipv4_prefix: int = 32,
               ipv6_prefix: int = 128) -> str:
    """The normalised value of one keyable fact (`-` when it is not known)."""
    tx = transaction
    value: str | None
    if fact == "client_ip":
        address = session.client_ip
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        value = str(address)
    elif fact == "client_net":
        value = mask_address(session.client_ip, ipv4_prefix, ipv6_prefix)
    elif fact == "listener":
        value = session.listener
    elif fact == "helo":
        value = session.helo.lower() if session.helo else None
    elif fact == "sender":
        value = None if tx is None or tx.sender is None else (tx.sender.lower() or "<>")
    elif fact == "sender_domain":
        value = None if tx is None else (tx.sender_domain or ("<>" if tx.sender == "" else None))
    elif fact == "recipient":
        value = tx.recipient.lower() if tx is not None and tx.recipient else None
    elif fact == "recipient_domain":
        value = tx.recipient_domain if tx is not None else None
    else:  # pragma: no cover - Options models only admit the facts above
        raise ValueError(f"unknown key fact {fact!r}")
    return "-" if value is None else value


def join_key(*parts: str) -> str:
    """Join key parts; parts with a separator, control characters or over 200 chars are hashed."""
    safe = []
    for part in parts:
        if "|" in part or len(part) > 200 or not part.isprintable():
            part = "h:" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        safe.append(part)
    return "|".join(safe)
