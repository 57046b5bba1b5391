"""The deadline timer of the upstream watchdog and the idle timeout: one timer, deadlines moved per
command (smtpguard/deadline.py), and the upstream connect timeout (smtpguard/upstream/smtp.py)."""

from __future__ import annotations

import asyncio

from smtpguard.deadline import DeadlineTimer


def test_fires_once_after_the_deadline() -> None:
    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        done = asyncio.Event()

        def expired() -> None:
            fired.append(loop.time())
            done.set()

        dog = DeadlineTimer(expired)
        start = loop.time()
        dog.arm(0.05)
        await done.wait()
        assert dog.expired
        return [t - start for t in fired]

    fired = asyncio.run(run())
    assert len(fired) == 1 and fired[0] >= 0.05


def test_disarm_and_rearm_never_fire_early() -> None:
    async def run() -> tuple[list[str], bool]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        dog = DeadlineTimer(lambda: fired.append("expired"))
        dog.arm(0.02)
        dog.disarm()  # the command answered in time
        dog.arm(10.0)  # the next command: a later deadline, the early timer re-arms itself

        async def rearmed() -> None:  # the 20 ms timer fires, sees the later deadline, re-arms
            while not (dog._handle is not None and dog._when > loop.time() + 5):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(rearmed(), 30)
        armed_later = True
        dog.cancel()
        return fired, armed_later

    fired, armed_later = asyncio.run(run())
    assert fired == []
    assert armed_later


def test_an_earlier_deadline_replaces_a_later_timer() -> None:
    async def run() -> bool:
        done = asyncio.Event()
        dog = DeadlineTimer(done.set)
        dog.arm(60.0)
        dog.arm(0.01)
        await asyncio.wait_for(done.wait(), 30)  # would hang for 60 s if the timer were not moved
        return dog.expired

    assert asyncio.run(run())


def test_connect_timeout_covers_a_tcp_handshake_that_never_completes() -> None:
    """An upstream that drops SYNs: `connect_timeout` must end the opening, not the OS (~2 min)."""
    from smtpguard.config import UpstreamConfig
    from smtpguard.errors import UpstreamError
    from smtpguard.upstream import ClientIdentity
    from smtpguard.upstream.smtp import SMTPUpstream

    async def run() -> UpstreamError:
        loop = asyncio.get_running_loop()

        async def never(*args: object, **kwargs: object) -> None:
            await asyncio.sleep(3600)

        loop.create_connection = never  # type: ignore[assignment,method-assign]
        upstream = SMTPUpstream(UpstreamConfig(url="smtp://192.0.2.10:25", connect_timeout=0.2, starttls="off"),
                                "proxy.test")
        identity = ClientIdentity(addr="192.0.2.1", port=1, name=None, helo="x", proto="ESMTP")
        try:
            await asyncio.wait_for(upstream.open(identity), 30)  # a hang fails, it does not block CI
        except UpstreamError as exc:
            return exc
        raise AssertionError("open() succeeded against a black hole")

    error = asyncio.run(run())
    assert error.kind == "timeout" and "timed out" in str(error)
