"""The proxy core end to end: real clients -> smtpguard -> a real Postfix (issue 2).

Every test talks over real sockets; Postfix's own replies and Maildir deliveries are the oracle.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binaries
from realservers import Postfix, wait_for
from sgproc import Smtpguard


def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def guard(postfix: Postfix, tmp_workdir: Path) -> Iterator[Smtpguard]:
    sg = Smtpguard.start(tmp_workdir / f"sg-core-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True)
    yield sg
    assert sg.stop() == 0


class Raw:
    """A byte-exact SMTP client for protocol tests."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def open_session(port: int, helo: str = "client.test") -> Raw:
    raw = Raw(port)
    assert raw.reply()[0] == 220
    code, text = raw.cmd(f"EHLO {helo}")
    assert code == 250, text
    return raw


def test_message_is_delivered_intact_with_upstream_reply(guard: Smtpguard, postfix: Postfix) -> None:
    subject = unique()
    body = "\r\n".join([".leading dot line", "..two dots", "trailing spaces   ", "é unicode 8bit", "", "end"])
    message = f"From: s@client.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", guard.port, local_hostname="client.test") as client:
        client.ehlo()
        assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
        assert not client.has_extn("chunking") and not client.has_extn("auth")
        code, text = client.mail("s@client.test", ["BODY=8BITMIME"])
        assert code == 250
        client.rcpt("alice@example.test")
        code, text = client.data(message.encode())
    assert code == 250
    assert b"queued as" in text and b"[txn " in text  # Postfix's own reply, plus our transaction id
    delivered = postfix.wait_message("alice", subject.encode())
    for line in body.split("\r\n"):
        assert line.encode() in delivered
    assert b"\r" not in delivered  # Postfix stores LF; no stray CR reached it


def test_client_address_reaches_postfix_through_xclient(guard: Smtpguard, postfix: Postfix) -> None:
    subject = unique()
    with smtplib.SMTP("127.0.0.1", guard.port, local_hostname="xclient-check.test") as client:
        client.sendmail("s@client.test", ["bob@example.test"], f"Subject: {subject}\r\n\r\nhi\r\n")
    delivered = postfix.wait_message("bob", subject.encode())
    # with XCLIENT, Postfix records the client's HELO and address, not the proxy's EHLO name
    assert b"from xclient-check.test (" in delivered and b"[127.0.0.1]" in delivered
    assert b"guard.test" not in delivered.split(b"\n\n")[0].split(b"by ")[0]


def test_unknown_user_is_refused_at_rcpt_with_postfix_reply(guard: Smtpguard) -> None:
    raw = open_session(guard.port)
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    code, text = raw.cmd("RCPT TO:<nobody@example.test>")
    assert code == 550 and "5.1.1" in text and "nobody@example.test" in text
    code, text = raw.cmd("RCPT TO:<x@elsewhere.test>")
    assert code == 554 and "5.7.1" in text and "Relay access denied" in text
    code, text = raw.cmd("DATA")
    assert code == 554 and "5.5.1" in text  # no valid recipient: no 354
    assert raw.cmd("QUIT")[0] == 221


def test_several_transactions_and_pipelining(guard: Smtpguard, postfix: Postfix) -> None:
    subjects = [unique() for _ in range(3)]
    raw = open_session(guard.port)
    for subject in subjects:  # RFC 2920 pipelined groups: MAIL+RCPT+RCPT+DATA, then body+QUIT
        raw.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<alice@example.test>\r\n"
                 b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        assert raw.reply()[0] == 250
        assert raw.reply()[0] == 250
        assert raw.reply()[0] == 550
        assert raw.reply()[0] == 354
        raw.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        code, text = raw.reply()
        assert code == 250, text
    code, text = raw.cmd("RSET")
    assert code == 250
    raw.send(b"NOOP\r\n")
    assert raw.reply()[0] == 250
    raw.send(b"QUIT\r\n")
    assert raw.reply()[0] == 221
    for subject in subjects:
        postfix.wait_message("alice", subject.encode())


def test_vrfy_expn_help_are_answered_locally(guard: Smtpguard) -> None:
    raw = open_session(guard.port)
    code, text = raw.cmd("VRFY alice")
    assert code == 252 and "2.5.2" in text
    code, text = raw.cmd("EXPN staff")
    assert code == 502 and "5.5.1" in text
    assert raw.cmd("HELP")[0] == 214
    code, text = raw.cmd("XYZZY")
    assert code == 500 and "5.5.2" in text
    code, _ = raw.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    assert code == 502
    raw.close()


def test_esmtp_parameters_are_validated(guard: Smtpguard) -> None:
    raw = open_session(guard.port)
    code, text = raw.cmd("MAIL FROM:<s@client.test> FOO=BAR")
    assert code == 555 and "5.5.4" in text
    code, text = raw.cmd("MAIL FROM:<s@client.test> SIZE=999999999999")
    assert code == 552 and "5.3.4" in text
    code, text = raw.cmd("MAIL FROM:<bad address@x>")
    assert code == 501
    assert raw.cmd("MAIL FROM:<s@client.test> SIZE=100 BODY=7BIT")[0] == 250
    code, text = raw.cmd("MAIL FROM:<s@client.test>")
    assert code == 503 and "nested" in text.lower()
    raw.close()


def test_oversize_message_gets_552_and_session_stays_usable(postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-size-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, listeners=[{"name": "smtp", "limits": {"max_message_size": "10KB"}}]) as sg:
        raw = open_session(sg.port)
        assert "SIZE 10000" in raw.cmd("EHLO c.test")[1]
        subject = unique()
        raw.cmd("MAIL FROM:<s@client.test>")
        raw.cmd("RCPT TO:<alice@example.test>")
        assert raw.cmd("DATA")[0] == 354
        raw.send(f"Subject: {subject}\r\n\r\n".encode() + (b"x" * 70 + b"\r\n") * 300 + b".\r\n")
        code, text = raw.reply()
        assert code == 552 and "5.3.4" in text
        ok = unique()
        raw.cmd("MAIL FROM:<s@client.test>")
        raw.cmd("RCPT TO:<alice@example.test>")
        raw.cmd("DATA")
        raw.send(f"Subject: {ok}\r\n\r\nsmall\r\n.\r\n".encode())
        assert raw.reply()[0] == 250
        postfix.wait_message("alice", ok.encode())
        assert not any(subject.encode() in m for m in postfix.messages("alice"))


@pytest.mark.parametrize(("payload", "expect"), [
    (b"line\x00with nul\r\n", "NUL"),
    (b"x" * 1200 + b"\r\n", "longer"),
    (b"bare\nlf\r\n", "bare <LF>"),
    (b"bare\rcr\r\n", "bare <CR>"),
])
def test_bad_message_content_gets_5xx_after_real_end(guard: Smtpguard, postfix: Postfix, payload: bytes,
                                                     expect: str) -> None:
    subject = unique()
    raw = open_session(guard.port)
    raw.cmd("MAIL FROM:<s@client.test>")
    raw.cmd("RCPT TO:<alice@example.test>")
    assert raw.cmd("DATA")[0] == 354
    raw.send(f"Subject: {subject}\r\n\r\n".encode() + payload + b"after\r\n.\r\n")
    code, text = raw.reply()
    assert code == 554 and "5.6.0" in text and expect in text
    assert raw.cmd("NOOP")[0] == 250  # the session is still in sync and usable
    raw.close()
    assert not any(subject.encode() in m for m in postfix.messages("alice"))


def test_garbage_and_long_command_lines(guard: Smtpguard) -> None:
    raw = Raw(guard.port)
    raw.reply()
    code, text = raw.cmd("EHLO " + "a" * 5000)
    assert code == 500 and "too long" in text
    raw.send(b"EHLO x\n")
    code, text = raw.reply()
    assert code == 500 and "bare <LF>" in text
    raw.send(b"\x00\x01\x02\xff\xfe binary\r\n")
    assert raw.reply()[0] == 500
    assert raw.cmd("EHLO fine.test")[0] == 250
    raw.close()


def test_bad_command_budget_closes_with_421(guard: Smtpguard) -> None:
    raw = Raw(guard.port)
    raw.reply()
    codes = [raw.cmd(f"BOGUS{i}")[0] for i in range(9)]
    assert codes == [500] * 9
    code, text = raw.cmd("BOGUS10")
    assert code == 421 and "4.7.0" in text
    assert raw.closed()


def test_unauthorised_pipelining_is_refused(guard: Smtpguard) -> None:
    raw = Raw(guard.port)
    raw.reply()
    raw.send(b"HELO client.test\r\nMAIL FROM:<s@client.test>\r\n")  # HELO: no PIPELINING negotiated
    code, text = raw.reply()
    assert code == 554 and "5.5.0" in text
    assert raw.closed()


def test_data_sent_before_354_is_refused(guard: Smtpguard, postfix: Postfix) -> None:
    subject = unique()
    raw = open_session(guard.port)
    raw.cmd("MAIL FROM:<s@client.test>")
    raw.cmd("RCPT TO:<alice@example.test>")
    raw.send(f"DATA\r\nSubject: {subject}\r\n\r\nearly\r\n.\r\n".encode())
    code, text = raw.reply()
    assert code == 554 and "before 354" in text
    assert raw.closed()
    assert not any(subject.encode() in m for m in postfix.messages("alice"))


def test_swaks_end_to_end(guard: Smtpguard, postfix: Postfix) -> None:
    require_binaries("swaks")
    subject = unique()
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{guard.port}", "--helo", "swaks.test", "--from", "s@client.test",
         "--to", "bob@example.test", "--header", f"Subject: {subject}", "--body", "swaks body", "--pipeline"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout
    assert b"swaks body" in postfix.wait_message("bob", subject.encode())


def test_decision_record_carries_the_transaction_id(guard: Smtpguard, postfix: Postfix) -> None:
    subject = unique()
    with smtplib.SMTP("127.0.0.1", guard.port, local_hostname="client.test") as client:
        client.ehlo()
        client.mail("record@client.test")
        client.rcpt("alice@example.test")
        code, text = client.data(f"Subject: {subject}\r\n\r\nx\r\n".encode())
    assert code == 250
    txn = text.decode().rsplit("[txn ", 1)[1].rstrip("]")
    record = wait_for(lambda: next((r for r in guard.decisions() if r["txn"] == txn), None), what="decision record")
    assert record["sender"] == "record@client.test" and record["recipients"] == ["alice@example.test"]
    assert record["outcome"] == "delivered" and record["reply"].startswith("250 ")
    assert [u.split()[0] for u in record["upstream"]] == ["MAIL", "RCPT", "DATA"]  # the MTA's own answers
    assert "queued as" in record["upstream"][-1]


# --------------------------------------------------------------------- upstream failures
@pytest.fixture
def own_postfix(tmp_workdir: Path) -> Iterator[Postfix]:
    pf = Postfix.start(tmp_workdir / f"pf-{unique()}")
    yield pf
    pf.stop()


def test_upstream_down_gives_4xx_and_recovers(own_postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-down-{unique()}", upstream=f"smtp://127.0.0.1:{own_postfix.port}",
                         no_policy=True) as sg:
        own_postfix.stop()
        raw = open_session(sg.port)
        code, text = raw.cmd("MAIL FROM:<s@client.test>")
        assert code == 451 and "4.4.1" in text
        code, _ = raw.cmd("RCPT TO:<alice@example.test>")
        assert code == 503  # no transaction was opened
        own_postfix.start_again()
        subject = unique()
        assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250  # same session, upstream is back
        assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        raw.send(f"Subject: {subject}\r\n\r\nback\r\n.\r\n".encode())
        assert raw.reply()[0] == 250
        own_postfix.wait_message("alice", subject.encode())


def test_upstream_killed_during_data_never_gives_2xx(own_postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-kill-{unique()}", upstream=f"smtp://127.0.0.1:{own_postfix.port}",
                         no_policy=True) as sg:
        subject = unique()
        raw = open_session(sg.port)
        assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
        assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        own_postfix.stop()  # the upstream session dies while the client is uploading
        raw.send(f"Subject: {subject}\r\n\r\nlost\r\n.\r\n".encode())
        code, text = raw.reply()
        assert 400 <= code < 500 and "4.4." in text, text
        assert raw.cmd("NOOP")[0] == 250  # the client session stays usable
        own_postfix.start_again()
        assert not any(subject.encode() in m for m in own_postfix.messages("alice"))


def test_sigterm_drains_a_transaction_in_data(own_postfix: Postfix, tmp_workdir: Path) -> None:
    sg = Smtpguard.start(tmp_workdir / f"sg-term-{unique()}", upstream=f"smtp://127.0.0.1:{own_postfix.port}",
                         no_policy=True)
    busy, idle = open_session(sg.port), open_session(sg.port)
    busy.cmd("MAIL FROM:<s@client.test>")
    busy.cmd("RCPT TO:<alice@example.test>")
    assert busy.cmd("DATA")[0] == 354
    subject = unique()
    busy.send(f"Subject: {subject}\r\n\r\nfirst half\r\n".encode())
    import signal
    sg.signal(signal.SIGTERM)
    code, text = idle.reply()  # the idle session is told to come back later
    assert code == 421 and "4.3.2" in text
    busy.send(b"second half\r\n.\r\n")
    code, text = busy.reply()
    assert code == 250, text  # the transaction in DATA was allowed to finish
    assert sg.proc.wait(30) == 0
    own_postfix.wait_message("alice", subject.encode())


# --------------------------------------------------------------------- TLS and PROXY protocol
@pytest.fixture(scope="module")
def cert(tmp_workdir: Path) -> tuple[Path, Path]:
    require_binaries("openssl")
    d = tmp_workdir / f"tls-{unique()}"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=guard.test", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_starttls_and_implicit_tls(postfix: Postfix, tmp_workdir: Path, cert: tuple[Path, Path]) -> None:
    tls = {"cert": str(cert[0]), "key": str(cert[1])}
    with Smtpguard.start(tmp_workdir / f"sg-tls-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, listeners=[{"name": "mx", "tls": {"mode": "starttls", **tls}},
                                                    {"name": "smtps", "tls": {"mode": "implicit", **tls}}]) as sg:
        s1, s2 = unique(), unique()
        with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="tls.test") as client:
            client.ehlo()
            assert client.has_extn("starttls")
            client.starttls(context=_client_tls())
            client.ehlo()
            assert not client.has_extn("starttls")
            client.sendmail("s@client.test", ["alice@example.test"], f"Subject: {s1}\r\n\r\ntls\r\n")
        with smtplib.SMTP_SSL("127.0.0.1", sg.ports["smtps"], local_hostname="tls.test",
                              context=_client_tls()) as client:
            client.sendmail("s@client.test", ["alice@example.test"], f"Subject: {s2}\r\n\r\nsmtps\r\n")
        postfix.wait_message("alice", s1.encode())
        postfix.wait_message("alice", s2.encode())
        decisions = {r["sender"]: r for r in sg.decisions()}
        assert all(r["tls"] and r["tls"].startswith("TLSv1.") for r in decisions.values())
        assert sg.metrics().get('smtpguard_tls_handshakes_total{listener="smtps",result="ok",version="TLSv1.3"}')


def _proxy_v2(src: str, dst: str, sport: int, dport: int) -> bytes:
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


def test_proxy_protocol_v1_v2_trusted_and_untrusted(postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-proxy-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, listeners=[
                             {"name": "lb", "proxy_protocol": {"enabled": True, "trusted_networks": ["127.0.0.0/8"]}},
                             {"name": "strict", "proxy_protocol": {"enabled": True,
                                                                   "trusted_networks": ["10.0.0.0/8"]}},
                         ], wait=False) as sg:
        wait_for(lambda: sg._http("/healthz")[0] == 200, what="smtpguard up")
        for header, addr in ((b"PROXY TCP4 192.0.2.55 127.0.0.1 40000 25\r\n", b"192.0.2.55"),
                             (_proxy_v2("198.51.100.7", "127.0.0.1", 40001, 25), b"198.51.100.7")):
            subject = unique()
            raw = Raw(sg.port)
            raw.send(header)
            assert raw.reply()[0] == 220
            raw.cmd("EHLO real-client.test")
            raw.cmd("MAIL FROM:<s@client.test>")
            raw.cmd("RCPT TO:<bob@example.test>")
            raw.cmd("DATA")
            raw.send(f"Subject: {subject}\r\n\r\nvia lb\r\n.\r\n".encode())
            assert raw.reply()[0] == 250
            delivered = postfix.wait_message("bob", subject.encode())
            assert b"[" + addr + b"]" in delivered  # the real client's address reached Postfix (XCLIENT)
        raw = Raw(sg.ports["strict"])  # 127.0.0.1 is not a trusted PROXY peer there
        raw.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 1 25\r\n")
        assert raw.closed()


def test_per_ip_cap_and_idle_timeout(postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-caps-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, listeners=[{"name": "smtp", "limits": {"max_connections_per_ip": 2,
                                                                                "idle_timeout": "1s"}}]) as sg:
        first, second = Raw(sg.port), Raw(sg.port)
        assert first.reply()[0] == 220 and second.reply()[0] == 220
        third = Raw(sg.port)
        code, text = third.reply()
        assert code == 421 and "4.7.0" in text  # before any banner
        assert third.closed()
        code, text = first.reply()  # idle: the server speaks first, after idle_timeout
        assert code == 421 and "4.4.2" in text
        assert first.closed()
        second.close()
        wait_for(lambda: sg.metric('smtpguard_connections_active{listener="smtp"}') == 0, what="sessions closed")
        fourth = Raw(sg.port)
        assert fourth.reply()[0] == 220  # the slots were given back
        fourth.close()


def test_xforward_when_xclient_is_off(postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-xf-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, config={"upstream": {"xclient": "off"}}) as sg:
        subject = unique()
        with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="xforward-client.test") as client:
            client.sendmail("s@client.test", ["bob@example.test"], f"Subject: {subject}\r\n\r\nxf\r\n")
        postfix.wait_message("bob", subject.encode())
        # smtpd logs its per-session command counts at disconnect, after the delivery
        wait_for(lambda: re.search(r"disconnect from .* xforward=1", postfix.maillog()), what="xforward=1 in the log")


def test_dsn_and_smtputf8_parameters_reach_postfix(guard: Smtpguard, postfix: Postfix) -> None:
    raw = open_session(guard.port)
    ehlo = raw.cmd("EHLO client.test")[1]
    assert "DSN" in ehlo and "SMTPUTF8" in ehlo  # Postfix has both, so they are offered
    assert raw.cmd("MAIL FROM:<s@client.test> RET=HDRS ENVID=abc+2Bdef")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test")[0] == 250
    assert raw.cmd("RSET")[0] == 250
    subject = unique()
    raw.send("MAIL FROM:<jürgen@client.test> SMTPUTF8\r\n".encode())
    assert raw.reply()[0] == 250
    assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    raw.send(f"Subject: {subject}\r\nFrom: jürgen@client.test\r\n\r\nutf8\r\n.\r\n".encode())
    assert raw.reply()[0] == 250
    raw.close()
    assert "jürgen@client.test".encode() in postfix.wait_message("bob", subject.encode())


def test_starttls_to_the_upstream(tmp_workdir: Path, cert: tuple[Path, Path]) -> None:
    tls_postfix = Postfix.start(tmp_workdir / f"pf-tls-{unique()}", main_cf_extra={
        "smtpd_tls_cert_file": str(cert[0]), "smtpd_tls_key_file": str(cert[1]),
        "smtpd_tls_security_level": "may", "smtpd_tls_received_header": "yes"})
    plain_postfix = Postfix.start(tmp_workdir / f"pf-plain-{unique()}")
    try:
        with Smtpguard.start(tmp_workdir / f"sg-uptls-{unique()}", upstream=f"smtp://127.0.0.1:{tls_postfix.port}",
                             no_policy=True, config={"upstream": {"starttls": "required"}}) as sg:
            subject = unique()
            with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="client.test") as client:
                client.sendmail("s@client.test", ["alice@example.test"], f"Subject: {subject}\r\n\r\ntls\r\n")
            delivered = tls_postfix.wait_message("alice", subject.encode())
            assert b"with ESMTPS" in delivered and b"TLSv1." in delivered  # the hop to the MTA was encrypted
        with Smtpguard.start(tmp_workdir / f"sg-uptls2-{unique()}", upstream=f"smtp://127.0.0.1:{plain_postfix.port}",
                             no_policy=True, config={"upstream": {"starttls": "required"}}) as sg:
            raw = open_session(sg.port)
            code, text = raw.cmd("MAIL FROM:<s@client.test>")
            assert code == 451 and "4.4.1" in text  # required TLS is not offered: never in clear
            raw.close()
    finally:
        tls_postfix.stop()
        plain_postfix.stop()


def test_memory_budget_is_given_back_when_clients_drop_mid_data(postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-mem-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, config={"data_memory_budget": "1MB"}) as sg:
        for _ in range(4):  # each drop used to keep its reservation for good
            raw = open_session(sg.port)
            raw.cmd("MAIL FROM:<s@client.test>")
            raw.cmd("RCPT TO:<alice@example.test>")
            assert raw.cmd("DATA")[0] == 354
            raw.send(b"Subject: dropped\r\n\r\n" + (b"y" * 76 + b"\r\n") * 4000)  # ~300 KB, no end
            wait_for(lambda: sg.metric("smtpguard_data_in_flight_bytes") > 0, what="bytes reserved")
            raw.close()
            wait_for(lambda: sg.metric("smtpguard_data_in_flight_bytes") == 0, what="reservation released")
        subject = unique()
        raw = open_session(sg.port)
        raw.cmd("MAIL FROM:<s@client.test>")
        raw.cmd("RCPT TO:<alice@example.test>")
        raw.cmd("DATA")
        raw.send(f"Subject: {subject}\r\n\r\n".encode() + (b"z" * 76 + b"\r\n") * 8000 + b".\r\n")
        code, text = raw.reply()
        assert code == 250, text  # ~620 KB fits: nothing leaked
        raw.close()
