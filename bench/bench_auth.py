"""CPU cost per message of the sender-authentication checks, as ratios to baselines of the same run.

    .venv/bin/python bench/bench_auth.py [--seconds 1.0] [--rounds 3]

Everything runs in-process: DNS answers come from the tests' authoritative UDP fake
(tests/fakedns.py) in a thread, through the real `DNSResolver` (its cache is warmed first, so SPF/DKIM/DMARC measure the
warm-cache path the proxy sees for repeat senders). CPU = `time.process_time()` (all threads:
SPF's worker thread counts) per operation, median of `--rounds`. Baselines, measured in the same
run: a bare dict lookup and `email.message_from_bytes` of the same 2 KB message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import ipaddress
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dkim
import nacl.encoding
import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakedns import FakeDNS

from smtpguard.checks import dkim as dkim_check
from smtpguard.checks import dmarc as dmarc_check
from smtpguard.checks import spf as spf_check
from smtpguard.checks.base import CheckContext, CheckEnv, CheckResult
from smtpguard.dns.resolver import DNSResolver
from smtpguard.facts import Message, Session, Transaction
from smtpguard.stage import Stage


def rsa_key() -> tuple[bytes, str]:
    pem = subprocess.run(["openssl", "genrsa", "2048"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem, capture_output=True,
                         check=True).stdout
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed_key() -> tuple[bytes, str]:
    sk = nacl.signing.SigningKey.generate()
    pub = sk.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return sk.encode(encoder=nacl.encoding.Base64Encoder), "v=DKIM1; k=ed25519; p=" + pub


def quoted(txt: str) -> str:
    return " ".join(f'"{txt[i:i + 250]}"' for i in range(0, len(txt), 250))


def message(size: int) -> bytes:
    head = (b"From: Alice <alice@example.com>\r\nTo: bob@guard.test\r\nSubject: benchmark\r\n"
            b"Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <b1@example.com>\r\n\r\n")
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    msg = email.message_from_bytes(raw)
    return [(k, str(v)) for k, v in msg.items()]


def ctx(resolver: DNSResolver, raw: bytes | None = None, results: dict[str, CheckResult] | None = None,
        stage: Stage = Stage.MAIL) -> CheckContext:
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address("192.0.2.1"), client_port=1,
                      helo="mail.example.com")
    tx = Transaction(id="tx-bench", sender="bounce@example.com")
    if raw is not None:
        tx.message = Message(raw=raw, headers=headers_of(raw))
    return CheckContext(stage=stage, session=session, transaction=tx, env=CheckEnv(hostname="mx", dns=resolver),
                        results=results or {})


def cpu_per_op(fn: Callable[[], object], seconds: float) -> float:
    """CPU seconds per call, over at least `seconds` of CPU (batches grow to keep timer cost low)."""
    n, batch, start = 0, 1, time.process_time()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        batch = min(batch * 2, 1000)
        used = time.process_time() - start
        if used >= seconds:
            return used / n


def run_async(loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[object]]) -> Callable[[], object]:
    return lambda: loop.run_until_complete(make())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    rsa_pem, rsa_txt = rsa_key()
    ed_priv, ed_txt = ed_key()
    records = {
        ("example.com", "TXT"): ['"v=spf1 ip4:198.51.100.0/24 include:_spf.example.com mx -all"'],
        ("_spf.example.com", "TXT"): ['"v=spf1 ip4:203.0.113.0/24 ip4:192.0.2.0/24 -all"'],
        ("example.com", "MX"): ["10 mx.example.com."],
        ("mx.example.com", "A"): ["198.51.100.7"],
        ("rsa._domainkey.example.com", "TXT"): [quoted(rsa_txt)],
        ("ed._domainkey.example.com", "TXT"): [quoted(ed_txt)],
        ("_dmarc.example.com", "TXT"): ['"v=DMARC1; p=reject"'],
    }
    server = FakeDNS()
    server.records = {key: (3600, values) for key, values in records.items()}
    resolver = DNSResolver([f"127.0.0.1:{server.port}"], timeout=2.0)
    loop = asyncio.new_event_loop()

    def signed(size: int, algo: str) -> bytes:
        raw = message(size)
        if algo == "rsa":
            return bytes(dkim.sign(raw, b"rsa", b"example.com", rsa_pem)) + raw
        return bytes(dkim.sign(raw, b"ed", b"example.com", ed_priv, signature_algorithm=b"ed25519-sha256")) + raw

    small = message(2048)
    spf = spf_check.CHECK(spf_check.Options(), CheckEnv(hostname="mx", dns=resolver))
    dk = dkim_check.CHECK(dkim_check.Options(), CheckEnv(hostname="mx", dns=resolver))
    dm = dmarc_check.CHECK(dmarc_check.Options(), CheckEnv(hostname="mx", dns=resolver))
    table: dict[str, Callable[[], object]] = {}
    lookup_dict = {f"k{i}": i for i in range(1000)}
    table["baseline: dict lookup"] = lambda: lookup_dict.get("k500")
    table["baseline: email parse 2 KB"] = lambda: email.message_from_bytes(small)

    async def noop() -> None:
        return None

    table["baseline: run_until_complete(no-op)"] = run_async(loop, noop)  # harness overhead per op
    spf_ctx = ctx(resolver)
    table["spf (warm cache, mailfrom, 4 lookups)"] = run_async(loop, lambda: spf.run(spf_ctx))
    for size, label in ((2048, "2 KB"), (100 * 1024, "100 KB")):
        for algo in ("rsa", "ed25519"):
            c = ctx(resolver, signed(size, algo), stage=Stage.DATA)
            table[f"dkim verify {label} {'rsa-sha256 2048' if algo == 'rsa' else 'ed25519-sha256'}"] = \
                run_async(loop, lambda c=c: dk.run(c))  # type: ignore[misc]
    dkim_result = CheckResult(frozenset({"dkim.pass"}), {"signatures": "1", "sig0.domain": "example.com",
                                                         "sig0.result": "pass"})
    spf_result = CheckResult.of("spf.fail", result="fail", domain="example.com", identity="mailfrom")
    dm_ctx = ctx(resolver, small, {"spf": spf_result, "dkim": dkim_result}, Stage.DATA)
    table["dmarc evaluation (warm cache)"] = run_async(loop, lambda: dm.run(dm_ctx))

    for fn in table.values():  # warm caches, check that everything works
        result = fn()
        if isinstance(result, CheckResult):
            assert not any(o.endswith(("error", "temperror", "none", "fail")) for o in result.outcomes
                           if not o.startswith("spf")), result

    medians = {}
    for name, fn in table.items():
        medians[name] = statistics.median(cpu_per_op(fn, args.seconds) for _ in range(args.rounds))
    base_dict = medians["baseline: dict lookup"]
    base_parse = medians["baseline: email parse 2 KB"]
    print(f"{'operation':<44} {'CPU us/op':>11} {'x email-parse':>14} {'x dict-lookup':>14}")
    for name, sec in medians.items():
        print(f"{name:<44} {sec * 1e6:>11.2f} {sec / base_parse:>14.2f} {sec / base_dict:>14.0f}")
    resolver.close()
    server.close()
    loop.close()


if __name__ == "__main__":
    main()
