"""Test doubles for the sender-authentication checks: an in-memory Resolver and context builders.

`FakeResolver` follows the `smtpguard.dns.Resolver` contract: unknown name or type -> [],
a name/type listed in `timeouts` (or a name in `dead`) -> DNSError. CNAMEs are followed like a
recursive resolver would. `FakeBlockingResolver` adds the `.sync` / `run_blocking` face that
`DNSResolver` offers (so SPF runs on its blocking path).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from smtpguard.checks.base import CheckContext, CheckEnv, CheckResult
from smtpguard.errors import DNSError
from smtpguard.facts import Message, Session, Transaction
from smtpguard.stage import Stage

T = TypeVar("T")


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def ptr_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


class FakeResolver:
    def __init__(self, records: Iterable[tuple[str, str, Any]] = (), timeouts: Iterable[tuple[str, str]] = (),
                 dead: Iterable[str] = ()) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        for name, rtype, value in records:
            self.add(name, rtype, value)
        self.timeouts = {(_norm(n), t) for n, t in timeouts}
        self.dead = {_norm(n) for n in dead}
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rtype: str, value: Any) -> None:
        self.records.setdefault((_norm(name), rtype), []).append(value)

    def get(self, name: str, rtype: str, depth: int = 0) -> list[Any]:
        n = _norm(name)
        self.queries.append((n, rtype))
        if n in self.dead or (n, rtype) in self.timeouts:
            raise DNSError("DNS timeout")
        found = self.records.get((n, rtype))
        if found:
            return list(found)
        cname = self.records.get((n, "CNAME"))
        if cname and depth < 10:
            return self.get(cname[0], rtype, depth + 1)
        return []

    # the blocking face
    def a(self, name: str) -> list[str]:
        return self.get(name, "A")

    def aaaa(self, name: str) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in self.get(name, "AAAA")]

    def txt(self, name: str) -> list[bytes]:
        return [v if isinstance(v, bytes) else v.encode() for v in self.get(name, "TXT")]

    def mx(self, name: str) -> list[tuple[int, str]]:
        return [(int(p), _norm(h)) for p, h in self.get(name, "MX")]

    def ptr(self, address: str) -> list[str]:
        return [_norm(v) for v in self.get(ptr_name(address), "PTR")]

    # the async Resolver protocol
    async def lookup_a(self, name: str) -> list[str]:
        return self.a(name)

    async def lookup_aaaa(self, name: str) -> list[str]:
        return self.aaaa(name)

    async def lookup_txt(self, name: str) -> list[bytes]:
        return self.txt(name)

    async def lookup_mx(self, name: str) -> list[tuple[int, str]]:
        return self.mx(name)

    async def lookup_ptr(self, address: str) -> list[str]:
        return self.ptr(address)


class _SyncFace:
    def __init__(self, fake: FakeResolver) -> None:
        self.lookup_a = fake.a
        self.lookup_aaaa = fake.aaaa
        self.lookup_txt = fake.txt
        self.lookup_mx = fake.mx
        self.lookup_ptr = fake.ptr


class FakeBlockingResolver(FakeResolver):
    pool = ThreadPoolExecutor(4, thread_name_prefix="fake-dns")

    @property
    def sync(self) -> _SyncFace:
        return _SyncFace(self)

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))


def make_ctx(resolver: Any, *, ip: str = "192.0.2.1", helo: str | None = "mail.example.com",
             sender: str | None = None, raw: bytes | None = None, stage: Stage = Stage.MAIL,
             results: dict[str, CheckResult] | None = None, tx_id: str = "tx1",
             hostname: str = "mx.guard.test") -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25000, helo=helo)
    tx = Transaction(id=tx_id, sender=sender)
    if raw is not None:
        tx.message = Message(raw=raw, headers=parse_headers(raw))
    session.transaction = tx
    env = CheckEnv(hostname=hostname, dns=resolver)
    return CheckContext(stage=stage, session=session, transaction=tx, env=env, results=results or {})


def parse_headers(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            name, value = out[-1]
            out[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            out.append((name.strip(), value.strip()))
    return out


# ---------------------------------------------------------------------------------------------
# DKIM keys and signing (openssl for RSA, PyNaCl for ed25519)
# ---------------------------------------------------------------------------------------------

@functools.cache
def rsa_key(bits: int = 1024, n: int = 0) -> tuple[bytes, str]:
    """(PEM private key, DNS TXT `v=DKIM1; k=rsa; p=...`); `n` distinguishes several keys."""
    import base64
    import subprocess

    pem = subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem, capture_output=True,
                         check=True).stdout
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@functools.cache
def ed25519_key(n: int = 0) -> tuple[bytes, str]:
    """(base64 seed as dkimpy wants it, DNS TXT `v=DKIM1; k=ed25519; p=...`)."""
    import nacl.encoding
    import nacl.signing

    sk = nacl.signing.SigningKey.generate()
    priv = sk.encode(encoder=nacl.encoding.Base64Encoder)
    pub = sk.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return priv, "v=DKIM1; k=ed25519; p=" + pub


def make_message(from_addr: str = "alice@example.com", body: bytes = b"Hello.\r\n", subject: str = "test",
                 extra: bytes = b"") -> bytes:
    return (f"From: {from_addr}\r\nTo: bob@guard.test\r\nSubject: {subject}\r\n"
            "Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n").encode() + extra + \
        b"\r\n" + body


def sign(msg: bytes, domain: str, selector: str, key: bytes, algorithm: bytes = b"rsa-sha256",
         length: bool = False) -> bytes:
    import dkim

    header = dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=algorithm,
                       length=length, include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return bytes(header) + msg


def arc_seal(msg: bytes, domain: str, selector: str, key: bytes, cv: str | None = None) -> bytes:
    """Add one ARC set as a forwarder at `domain` would (its own A-R header first; `cv` = the arc=
    result it saw, None for the first hop)."""
    import dkim

    ar = f"Authentication-Results: {domain}; spf=pass smtp.mailfrom=example.com"
    if cv is not None:
        ar += f"; arc={cv}"
    msg = ar.encode() + b"\r\n" + msg
    headers = dkim.arc_sign(msg, selector.encode(), domain.encode(), key, domain.encode(),
                            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert headers, "arc_sign produced no ARC set"
    return b"".join(headers) + msg
