"""The real-server helpers really work: every daemon starts, answers, and stops without leftovers."""

from __future__ import annotations

import smtplib
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from realservers import (
    NSD,
    Postfix,
    Prometheus,
    Redis,
    ServerError,
    SilentUDP,
    SmtpSink,
    free_port,
    tcp_accepts,
    wait_for,
)

EXAMPLE_ZONE = """\
$ORIGIN example.test.
$TTL 300
@       IN SOA  ns1.example.test. hostmaster.example.test. ( 2026010101 3600 600 86400 300 )
@       IN NS   ns1.example.test.
ns1     IN A    127.0.0.1
@       IN A    127.0.0.1
@       IN MX   10 mx.example.test.
mx      IN A    127.0.0.1
@       IN TXT  "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc  IN TXT  "v=DMARC1; p=reject; adkim=s; aspf=s"
"""

BL_ZONE = """\
$ORIGIN bl.test.
$TTL 60
@           IN SOA ns1.example.test. hostmaster.example.test. ( 2026010101 3600 600 86400 60 )
@           IN NS  ns1.example.test.
2.0.0.127   IN A   127.0.0.2
2.0.0.127   IN TXT "127.0.0.2 is listed for testing"
"""


def unique() -> str:
    return uuid.uuid4().hex[:12]


def message(subject: str, to: str = "alice@example.test") -> bytes:
    return (f"From: s@client.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n").encode()


# --- generic helpers -----------------------------------------------------------------------------

def test_wait_for_returns_value_and_times_out_with_what() -> None:
    calls = iter([0, 0, 7])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.001) == 7
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, what="the moon")


def test_missing_binary_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import missing_binary

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        missing_binary("nsd")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"scripts/setup\.sh"):
        missing_binary("nsd")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --- Postfix -------------------------------------------------------------------------------------

def test_postfix_delivers_to_maildir(postfix: Postfix) -> None:
    subject = f"realservers-{unique()}"
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="client.test") as smtp:
        refused = smtp.sendmail("s@client.test", ["alice@example.test"], message(subject))
    assert refused == {}
    raw = postfix.wait_message("alice", f"Subject: {subject}".encode())
    assert b"Delivered-To: alice@example.test" in raw
    assert "status=sent (delivered to maildir)" in postfix.maillog()
    assert any(f"Subject: {subject}".encode() in m for m in postfix.messages("alice"))


def test_postfix_honours_xclient_and_offers_xforward(postfix: Postfix) -> None:
    subject = f"xclient-{unique()}"
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="proxy.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("xclient") and smtp.has_extn("xforward")
        code, reply = smtp.docmd("XCLIENT", "ADDR=192.0.2.55 NAME=[UNAVAILABLE] HELO=real-client.test")
        assert code == 220, reply
        smtp.ehlo_resp = smtp.helo_resp = None  # XCLIENT restarts the session: EHLO again
        smtp.ehlo("proxy.test")
        smtp.sendmail("s@client.test", ["bob@example.test"], message(subject, "bob@example.test"))
    raw = postfix.wait_message("bob", subject.encode())
    received = raw.split(b"\nReceived: ", 1)[1][:200]
    assert b"192.0.2.55" in received, received


def test_postfix_rejects_unknown_user_and_relay(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        assert smtp.mail("s@client.test")[0] == 250
        code, reply = smtp.rcpt(f"nobody-{unique()}@example.test")
        assert (code, reply[:5]) == (550, b"5.1.1"), reply
        code, reply = smtp.rcpt("x@elsewhere.test")
        assert code == 554 and b"Relay access denied" in reply, reply


def test_postfix_bare_newline_setting_is_default(postfix: Postfix) -> None:
    assert "smtpd_forbid_bare_newline" not in (postfix.workdir / "etc" / "main.cf").read_text()


def test_postfix_stop_and_start_again(tmp_workdir: Path) -> None:
    pf = Postfix.start(tmp_workdir / f"pf-restart-{unique()}", mailboxes=("carol",),
                       domain="restart.test")
    with pf:
        master = pf.master_pid
        assert master is not None
        pf.stop()
        assert not tcp_accepts(pf.port)
        with pytest.raises(OSError):
            smtplib.SMTP(pf.host, pf.port, timeout=2)
        assert not Path(f"/proc/{master}").exists() or b") Z" in Path(f"/proc/{master}/stat").read_bytes()
        pf.start_again()
        with smtplib.SMTP(pf.host, pf.port) as smtp:
            smtp.sendmail("s@client.test", ["carol@restart.test"], message("after restart"))
        assert b"after restart" in pf.wait_messages("carol", 1)[0]
    assert not tcp_accepts(pf.port)


def test_postfix_config_fatal_is_surfaced(tmp_workdir: Path) -> None:
    with pytest.raises(ServerError, match="maillog_file_prefixes"):
        Postfix.start(tmp_workdir / f"pf-bad-{unique()}",
                      main_cf_extra={"maillog_file_prefixes": "/nonexistent"})
    with pytest.raises(ServerError, match="unsupported dictionary type"):
        Postfix.start(tmp_workdir / f"pf-bad-{unique()}", main_cf_extra={"virtual_mailbox_maps": "bogus:x"})


# --- nsd -----------------------------------------------------------------------------------------

def test_nsd_answers_txt_a_and_nxdomain(nsd_factory: Callable[[Mapping[str, str]], NSD]) -> None:
    ns = nsd_factory({"example.test": EXAMPLE_ZONE, "bl.test": BL_ZONE})
    r = ns.resolver()
    txt = [b"".join(rr.strings) for rr in r.resolve("example.test", "TXT")]
    assert txt == [b"v=spf1 ip4:127.0.0.0/8 -all"]
    assert [a.address for a in r.resolve("2.0.0.127.bl.test", "A")] == ["127.0.0.2"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("3.0.0.127.bl.test", "A")

    ns.reload({"example.test": EXAMPLE_ZONE.replace("-all", "~all")})
    txt = [b"".join(rr.strings) for rr in ns.resolver().resolve("example.test", "TXT")]
    assert txt == [b"v=spf1 ip4:127.0.0.0/8 ~all"]


def test_nsd_rejects_a_broken_zone_with_checkzone_output(
        nsd_factory: Callable[[Mapping[str, str]], NSD]) -> None:
    with pytest.raises(ServerError, match=r"nsd-checkzone broken\.test failed"):
        nsd_factory({"broken.test": "$ORIGIN broken.test.\n@ IN TXT\n"})


def test_silent_nameserver_times_out(silent_nameserver: SilentUDP) -> None:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [silent_nameserver.host]
    r.port = silent_nameserver.port
    r.timeout = r.lifetime = 0.3
    with pytest.raises(dns.exception.Timeout):
        r.resolve("example.test", "TXT")


# --- redis ---------------------------------------------------------------------------------------

def test_redis_set_ttl_kill_and_start_again(redis_server: Redis) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    client.set("greylist:192.0.2.1", 1, ex=60)
    assert 55 <= client.ttl("greylist:192.0.2.1") <= 60

    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.start_again()
    assert client.ping()
    assert client.get("greylist:192.0.2.1") is None  # no persistence: a restart starts empty


# --- Prometheus ----------------------------------------------------------------------------------

def test_prometheus_scrapes_an_exporter(prometheus_factory: Callable[..., Prometheus],
                                        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    msgs = Counter("smtpguard_test_messages", "Messages", ["verdict"], registry=registry)
    Gauge("smtpguard_test_connections_active", "Open sessions", registry=registry).set(2)
    msgs.labels("accept").inc(3)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    try:
        rules = tmp_path / "rules.yml"
        rules.write_text(
            "groups:\n  - name: t\n    rules:\n"
            "      - record: smtpguard_test:accepted\n"
            "        expr: sum(smtpguard_test_messages_total{verdict=\"accept\"})\n")
        prom = prometheus_factory([f"127.0.0.1:{exporter_port}"], rule_files=[rules])
        targets = prom.wait_for_target_up()
        assert [t["scrapeUrl"] for t in targets] == [f"http://127.0.0.1:{exporter_port}/metrics"]
        result = prom.wait_query('smtpguard_test_messages_total{verdict="accept"}')
        assert float(result[0]["value"][1]) == 3
        assert prom.query("up")[0]["value"][1] == "1"
        assert float(prom.wait_query("smtpguard_test:accepted")[0]["value"][1]) == 3
        with pytest.raises(ServerError):
            prom.query("sum(")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- smtp-sink -----------------------------------------------------------------------------------

def test_smtp_sink_counts_messages(smtp_sink: SmtpSink) -> None:
    assert smtp_sink.count() == 0
    for i in range(3):
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as smtp:
            smtp.sendmail("a@b.test", ["c@d.test"], message(f"sink {i}"))
    assert smtp_sink.wait_count(3) == 3
