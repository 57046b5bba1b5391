"""Limits and greylisting end to end: real clients -> smtpguard processes -> real Postfix, one Redis."""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from realservers import Postfix, Redis, wait_for
from sgproc import Smtpguard


def unique() -> str:
    return uuid.uuid4().hex[:12]


GREYLIST_POLICY = """
checks:
  greylist:
    delay: 2
    retry_window: 600
    auto_allow_after: 0
rules:
  - name: greylist
    stage: rcpt
    if: {outcome: [greylist.new, greylist.retry_too_soon]}
    action: tempfail
    reply: "451 4.7.1 Greylisted, please try again later"
"""

CONN_LIMIT_POLICY = """
checks:
  ratelimit:
    limits:
      per_ip: {count: connections, key: [client_ip], rate: 1/h, burst: 3}
rules:
  - name: conn_rate
    stage: connect
    if: {outcome: ratelimit.per_ip.exceeded}
    action: tempfail
    reply: "421 4.7.0 Too many connections, slow down"
"""


def policy_dir(root: Path, text: str) -> Path:
    d = root / f"policy-{unique()}"
    d.mkdir(parents=True)
    (d / "10-limits.yaml").write_text(text)
    return d


@pytest.fixture
def guards(request: pytest.FixtureRequest, tmp_path: Path, postfix: Postfix,
           redis_server: Redis) -> Iterator[list[Smtpguard]]:
    text, count = request.param
    pdir = policy_dir(tmp_path, text)
    started: list[Smtpguard] = []
    try:
        for i in range(count):
            started.append(Smtpguard.start(tmp_path / f"sg{i}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                                           config={"store": {"url": redis_server.url}}, policy_dir=pdir))
        yield started
    finally:
        for sg in started:
            sg.stop()


@pytest.mark.parametrize("guards", [(GREYLIST_POLICY, 1)], indirect=True)
def test_greylisting_defers_then_passes_into_postfix(guards: list[Smtpguard], postfix: Postfix,
                                                     redis_server: Redis) -> None:
    [guard] = guards
    subject = unique()
    sender = f"grey-{subject}@client.test"
    with smtplib.SMTP("127.0.0.1", guard.port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        assert client.mail(sender)[0] == 250
        first_code, first_text = client.rcpt("alice@example.test")
        first_at = time.monotonic()
        assert first_code == 451 and b"4.7.1 Greylisted" in first_text
        client.rset()
        assert client.mail(sender)[0] == 250
        assert client.rcpt("alice@example.test")[0] == 451  # retry_too_soon

        def retried() -> bool:
            client.rset()
            client.mail(sender)
            return client.rcpt("alice@example.test")[0] == 250

        wait_for(retried, timeout=20, interval=0.25, what="the greylisted triplet to pass")
        assert time.monotonic() - first_at >= 1.9  # not before the delay
        code, _ = client.data(f"From: {sender}\r\nSubject: {subject}\r\n\r\ngreylisted once\r\n".encode())
        assert code == 250
    postfix.wait_message("alice", subject.encode())
    r = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(r.scan_iter(match="smtpguard:*"))
        assert keys and all(r.ttl(k) > 0 for k in keys)  # every key expires
        assert all(b"client.test" not in k for k in keys)  # triplets are hashed
    finally:
        r.close()


def _sessions_done(guard: Smtpguard) -> bool:
    m = guard.metrics()
    ended = sum(v for k, v in m.items() if k.startswith("smtpguard_connections_total"))
    active = sum(v for k, v in m.items() if k.startswith("smtpguard_connections_active"))
    return ended >= 1 and active == 0


def greeting(port: int) -> int:
    with smtplib.SMTP(timeout=20) as client:
        code, _ = client.connect("127.0.0.1", port)
        if code == 220:
            client.quit()
        return code


@pytest.mark.parametrize("guards", [(CONN_LIMIT_POLICY, 2)], indirect=True)
def test_two_processes_sharing_one_redis_enforce_one_limit(guards: list[Smtpguard], redis_server: Redis) -> None:
    a, b = guards
    for guard in guards:  # the readiness probe's connection is charged asynchronously: let it finish first
        wait_for(lambda g=guard: _sessions_done(g), what="the readiness probe's session to end")
    r = redis.Redis.from_url(redis_server.url)
    try:
        r.flushdb()  # forget the connections the readiness probes of both processes made
    finally:
        r.close()
    codes = [greeting((a if i % 2 else b).port) for i in range(8)]
    assert codes.count(220) == 3, codes
    assert all(c == 421 for c in codes if c != 220), codes


FAIL_OPEN_POLICY = CONN_LIMIT_POLICY.replace("    limits:\n", "    on_store_error: fail_open\n    limits:\n", 1)


@pytest.mark.parametrize("guards", [(FAIL_OPEN_POLICY, 1)], indirect=True)
def test_redis_down_fails_open_through_the_proxy_and_recovers(guards: list[Smtpguard], redis_server: Redis) -> None:
    [guard] = guards
    redis_server.kill()
    started = time.monotonic()
    codes = [greeting(guard.port) for _ in range(6)]
    assert codes == [220] * 6  # fail_open: the limit is not enforced, mail flows
    assert time.monotonic() - started < 15  # generous: each store call is bounded by its timeout
    assert guard.metric('smtpguard_store_circuit_open{backend="redis"}') == 1
    redis_server.start_again()
    wait_for(lambda: greeting(guard.port) == 421, timeout=30, interval=0.2,
             what="the limit to be enforced again after redis came back")
    assert guard.metric('smtpguard_store_circuit_open{backend="redis"}') == 0
    assert "store circuit open" in guard.log() and "store circuit closed" in guard.log()
