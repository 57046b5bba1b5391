"""Sender authentication end to end (issue 4): client -> smtpguard -> real Postfix, with a real
nsd serving the SPF/DKIM/DMARC records.

Shown here: the delivered message carries our Authentication-Results; a forged one claiming
our authserv-id arrives stripped; SPF fail is refused at MAIL with the policy's reply; DMARC
p=reject failures are refused at end of DATA; DNS timeouts give 4xx, never 5xx.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from auth_fakes import rsa_key, sign
from realservers import NSD, Postfix, SilentUDP, silent_udp_port
from sgproc import Smtpguard

ZONE = """$ORIGIN e2e.test.
$TTL 300
@        IN SOA ns1.e2e.test. hostmaster.e2e.test. ( 2026112901 3600 600 86400 60 )
@        IN NS  ns1.e2e.test.
ns1      IN A   127.0.0.1
good     IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.good IN TXT "v=DMARC1; p=reject"
s1._domainkey.good IN TXT ( {dkim} )
"""
# another organisational domain (relaxed alignment compares organisational domains)
EVIL_ZONE = """$ORIGIN evil.test.
$TTL 300
@        IN SOA ns1.e2e.test. hostmaster.e2e.test. ( 2026112901 3600 600 86400 60 )
@        IN NS  ns1.e2e.test.
@        IN TXT "v=spf1 -all"
_dmarc   IN TXT "v=DMARC1; p=reject"
"""

POLICY = """
rules:
  - name: spf-fail
    stage: mail
    if: {outcome: spf.fail}
    action: reject
    reply: "550 5.7.23 SPF validation failed for {sender}"
  - name: spf-temperror
    stage: mail
    if: {outcome: spf.temperror}
    action: tempfail
    reply: "451 4.7.24 SPF validation error, try again later"
  - name: dmarc-reject
    stage: data
    if: {outcome: dmarc.fail_reject}
    action: reject
    reply: "550 5.7.1 Rejected by the sender domain's DMARC policy"
  - name: dmarc-temperror
    stage: data
    if: {outcome: dmarc.temperror}
    action: tempfail
    reply: "451 4.7.1 DMARC evaluation failed, try again later"
"""


def _chunks(record: str) -> str:
    return " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))


@pytest.fixture(scope="module")
def key() -> bytes:
    return rsa_key(1024, n=7)[0]


@pytest.fixture(scope="module")
def nsd(tmp_workdir: Path, key: bytes) -> Iterator[NSD]:
    server = NSD.start(tmp_workdir / f"nsd-e2e-{uuid.uuid4().hex[:6]}",
                       {"e2e.test": ZONE.format(dkim=_chunks(rsa_key(1024, n=7)[1])), "evil.test": EVIL_ZONE})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def policy_dir(tmp_workdir: Path) -> Path:
    d = tmp_workdir / f"policy-auth-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / "10-auth.yaml").write_text(POLICY)
    return d


@pytest.fixture(scope="module")
def guard(postfix: Postfix, nsd: NSD, policy_dir: Path, tmp_workdir: Path) -> Iterator[Smtpguard]:
    sg = Smtpguard.start(tmp_workdir / f"sg-auth-{uuid.uuid4().hex[:6]}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         policy_dir=policy_dir, config={"dns": {"nameservers": [f"127.0.0.1:{nsd.port}"]}})
    yield sg
    assert sg.stop() == 0


def message(sender_domain: str, subject: str, extra: str = "") -> bytes:
    return (f"From: someone@{sender_domain}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{subject}@{sender_domain}>\r\n{extra}\r\n"
            "Hello.\r\n").encode()


def send(port: int, sender: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.e2e.test") as client:
        client.ehlo()
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        client.rcpt("alice@example.test")
        return client.data(data)


def test_delivered_message_carries_authentication_results(guard: Smtpguard, postfix: Postfix, key: bytes) -> None:
    subject = uuid.uuid4().hex
    forged = "Authentication-Results: guard.test; spf=pass smtp.mailfrom=evil.test; dkim=pass\r\n" \
             "Authentication-Results: other.test; spf=none\r\n"
    data = sign(message("good.e2e.test", subject, forged), "good.e2e.test", "s1", key)
    code, text = send(guard.port, "someone@good.e2e.test", data)
    assert code == 250, text
    delivered = postfix.wait_message("alice", subject.encode()).decode()
    ours = [h for h in delivered.split("\n") if h.startswith("Authentication-Results: guard.test")]
    assert len(ours) == 1, delivered  # ours is there; the forged one claiming our id is gone
    header = delivered.split("Authentication-Results: guard.test", 1)[1].split("\nReceived:")[0]
    header = header.split("\n") [0] + " " + " ".join(
        line.strip() for line in header.split("\n")[1:] if line[:1] in (" ", "\t"))
    assert "spf=pass" in header and "dkim=pass" in header and "dmarc=pass" in header, header
    assert "smtp.mailfrom=evil.test" not in delivered
    assert "Authentication-Results: other.test; spf=none" in delivered


def test_spf_fail_is_refused_at_mail_with_the_policy_reply(guard: Smtpguard) -> None:
    with smtplib.SMTP("127.0.0.1", guard.port, local_hostname="client.e2e.test") as client:
        client.ehlo()
        code, text = client.mail("someone@evil.test")
    assert code == 550 and b"5.7.23" in text and b"someone@evil.test" in text and b"[txn " in text


def test_dmarc_reject_is_refused_at_end_of_data(guard: Smtpguard, postfix: Postfix) -> None:
    subject = uuid.uuid4().hex
    # SPF passes for the envelope (good.e2e.test), but the From: domain evil.test is not aligned
    code, text = send(guard.port, "someone@good.e2e.test", message("evil.test", subject))
    assert code == 550 and b"5.7.1" in text and b"DMARC" in text
    assert not any(subject.encode() in m for m in postfix.messages("alice"))


@pytest.fixture
def silent() -> Iterator[SilentUDP]:
    server = silent_udp_port()
    yield server
    server.close()


@pytest.fixture
def guard_factory(postfix: Postfix, tmp_workdir: Path) -> Iterator[Callable[..., Smtpguard]]:
    started: list[Smtpguard] = []

    def start(**kwargs: object) -> Smtpguard:
        sg = Smtpguard.start(tmp_workdir / f"sg-dns-{uuid.uuid4().hex[:6]}",
                             upstream=f"smtp://127.0.0.1:{postfix.port}", **kwargs)  # type: ignore[arg-type]
        started.append(sg)
        return sg

    yield start
    for sg in started:
        sg.stop()


def test_dns_timeouts_give_4xx_never_5xx(guard_factory: Callable[..., Smtpguard], silent: SilentUDP,
                                         policy_dir: Path, postfix: Postfix) -> None:
    dns = {"dns": {"nameservers": [f"127.0.0.1:{silent.port}"], "timeout": 1}}
    enforcing = guard_factory(policy_dir=policy_dir, config=dns)
    with smtplib.SMTP("127.0.0.1", enforcing.port, local_hostname="client.e2e.test") as client:
        client.ehlo()
        code, text = client.mail("someone@good.e2e.test")
    assert code == 451 and b"4.7.24" in text
    # the shipped default policy: a DNS timeout defers (4xx), it never turns into a 5xx
    default = guard_factory(config=dns)
    subject = uuid.uuid4().hex
    code, text = send(default.port, "someone@good.e2e.test", message("good.e2e.test", subject))
    assert code == 451 and b"4.7.24" in text, text
