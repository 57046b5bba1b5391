"""Test doubles for the policy engine: scriptable fake checks, a registry of them, facts builders.

`fake_check(name, stage, scope, outcomes)` makes a check class whose `run` returns what the
test scripted in `Script` (per check name: outcomes, score, template fields, an exception, a
hang) and records every call. Nothing here touches the network or the clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.checks.registry import CheckRegistry
from smtpguard.checks.relay import RelayCheck
from smtpguard.facts import Message, Session, Transaction
from smtpguard.policy.runner import PolicyRunner
from smtpguard.stage import Scope, Stage


class FakeClock:
    """The `clock` of CheckEnv: time() and monotonic() both return `now`, which tests move."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@dataclass
class Script:
    outcomes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    raises: set[str] = field(default_factory=set)
    hangs: set[str] = field(default_factory=set)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # run waits for the event
    calls: list[tuple[str, Stage]] = field(default_factory=list)
    seen_requires: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)


SCRIPT = Script()


class _FakeOptions(CheckOptions):
    level: int = 0


def fake_check(name: str, stage: Stage = Stage.CONNECT, scope: Scope = Scope.CONNECTION,
               outcomes: Iterable[str] = ("hit", "miss"), requires: tuple[str, ...] = (),
               volatile: bool = False) -> type[CheckBase]:
    class Fake(CheckBase):
        OUTCOMES: ClassVar[tuple[str, ...]] = tuple(outcomes)
        Options: ClassVar[type[CheckOptions]] = _FakeOptions

        async def run(self, ctx: CheckContext) -> CheckResult:
            SCRIPT.calls.append((self.name, ctx.stage))
            SCRIPT.seen_requires[self.name] = {k: v.outcomes for k, v in ctx.results.items()}
            gate = SCRIPT.gates.get(self.name)
            if gate is not None:
                await gate.wait()
            if self.name in SCRIPT.raises:
                raise RuntimeError("boom: secret detail")
            if self.name in SCRIPT.hangs:
                await asyncio.Event().wait()
            emitted = SCRIPT.outcomes.get(self.name, ("miss",))
            return CheckResult(frozenset(f"{self.name}.{o}" for o in emitted), {},
                               SCRIPT.scores.get(self.name, 0.0), SCRIPT.fields.get(self.name, {}))

        async def observe(self, event: str, ctx: CheckContext) -> None:
            SCRIPT.events.append((self.name, event))

    Fake.name = name  # type: ignore[misc]
    Fake.stage = stage  # type: ignore[misc]
    Fake.scope = scope  # type: ignore[misc]
    Fake.requires = requires  # type: ignore[misc]
    Fake.volatile = volatile  # type: ignore[attr-defined]
    Fake.__name__ = f"Fake_{name}"
    return Fake


def fake_registry() -> CheckRegistry:
    """Fake checks named like the real ones, at their real stages and scopes."""
    return CheckRegistry([
        fake_check("conn", Stage.CONNECT),
        fake_check("dnsbl", Stage.CONNECT, outcomes=("listed", "not_listed", "zen")),
        fake_check("hello", Stage.HELO, outcomes=("bare_ip", "ok")),
        fake_check("spf", Stage.MAIL, Scope.TRANSACTION, outcomes=("pass", "fail", "softfail", "none", "temperror")),
        fake_check("grey", Stage.RCPT, Scope.RECIPIENT, outcomes=("greylisted", "passed")),
        fake_check("dkim", Stage.DATA, Scope.TRANSACTION, outcomes=("pass", "fail", "none")),
        fake_check("dmarc", Stage.DATA, Scope.TRANSACTION, outcomes=("pass", "fail"), requires=("spf", "dkim")),
        fake_check("cmd", Stage.COMMAND, outcomes=("vrfy", "other"), volatile=True),
        fake_check("slow", Stage.CONNECT, outcomes=("done",)),
        RelayCheck,  # a real one: its options read a list file
    ])


def reset_script() -> Script:
    global SCRIPT
    SCRIPT.__init__()  # type: ignore[misc]
    return SCRIPT


def env() -> CheckEnv:
    return CheckEnv(hostname="mx.example.net", local_addresses=frozenset({"192.0.2.25"}))


def session(ip: str = "198.51.100.7", helo: str | None = "mail.example.org", sid: str = "s1",
            listener: str = "mx", tls: bool = False, name: str | None = None) -> Session:
    s = Session(id=sid, listener=listener, client_ip=ipaddress.ip_address(ip), client_port=40000, helo=helo,
                client_name=name)
    if tls:
        from smtpguard.facts import TLSFacts

        s.tls = TLSFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    return s


def transaction(sender: str = "alice@example.org", recipient: str | None = "bob@example.net",
                tid: str = "T1", message: bytes | None = None) -> Transaction:
    t = Transaction(id=tid, sender=sender, recipient=recipient)
    if message is not None:
        head = message.split(b"\r\n\r\n", 1)[0].decode()
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in head.split("\r\n") if ":" in line]
        t.message = Message(message, [(h[0], h[1]) for h in headers])
    return t


def write_policy(directory: Path, text: str, name: str = "10-main.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def runner_for(directory: Path, text: str | None = None, **kw: Any) -> PolicyRunner:
    if text is not None:
        write_policy(directory, text)
    runner = PolicyRunner(directory, env(), registry=fake_registry(), **kw)
    runner.load()
    return runner
