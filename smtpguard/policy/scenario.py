"""A scripted SMTP session for `explain` and `test`: facts in, one verdict per stage out.

Invariants: stages are evaluated in session order (connect, helo, command, mail, each rcpt,
data, disconnect) exactly as the proxy would; a refusal at connect/helo/mail ends the
session (a client cannot go on), a refused recipient is not added to the transaction, data
is evaluated only when a message is given and some recipient was accepted, and 421 or a
disconnect verdict ends everything. No network: the runner's checks decide what is looked up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from smtpguard.checks.command import KNOWN as KNOWN_VERBS
from smtpguard.facts import Message, Session, TLSFacts, Transaction
from smtpguard.policy.runner import PolicyRunner
from smtpguard.policy.verdict import Verdict
from smtpguard.protocol.data import parse_headers
from smtpguard.stage import Stage


@dataclass(slots=True)
class Scenario:
    client_ip: str = "192.0.2.1"
    helo: str | None = None
    sender: str | None = None
    rcpts: list[str] = field(default_factory=list)
    message: bytes | None = None
    listener: str = "mx"
    tls: bool = False
    client_name: str | None = None
    esmtp: bool = True
    early_talker: bool = False
    pipelining: bool = False
    commands: list[str] = field(default_factory=list)  # VRFY/EXPN/HELP/ETRN/unknown, after HELO


@dataclass(frozen=True, slots=True)
class StageRun:
    stage: Stage
    verdict: Verdict
    recipient: str | None = None


def crlf(raw: bytes) -> bytes:
    """Normalise a message file's line endings to CRLF."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message_of(raw: bytes) -> Message:
    raw = crlf(raw)
    return Message(raw, parse_headers(raw))


def _ends(v: Verdict) -> bool:
    return v.disconnect or (v.reply is not None and v.reply.code == 421)


async def run_scenario(runner: PolicyRunner, sc: Scenario, session_id: str = "explain") -> list[StageRun]:
    s = Session(id=session_id, listener=sc.listener, client_ip=ipaddress.ip_address(sc.client_ip), client_port=0,
                client_name=sc.client_name, early_talker=sc.early_talker, pipelining_violation=sc.pipelining)
    if sc.tls:
        s.tls = TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    runs: list[StageRun] = []
    try:
        v = await runner.evaluate(Stage.CONNECT, s, None)
        runs.append(StageRun(Stage.CONNECT, v))
        if v.refuses:
            return runs
        if sc.helo is not None:
            s.helo, s.esmtp = sc.helo, sc.esmtp
            v = await runner.evaluate(Stage.HELO, s, None)
            runs.append(StageRun(Stage.HELO, v))
            if v.refuses:
                return runs
        for command in sc.commands:
            verb, _, arg = command.partition(" ")
            s.command, s.command_arg = verb.upper(), arg or None
            if s.command not in KNOWN_VERBS:
                s.unknown_commands += 1
            v = await runner.evaluate(Stage.COMMAND, s, None)
            s.command, s.command_arg = None, None
            runs.append(StageRun(Stage.COMMAND, v))
            if _ends(v):
                return runs
        if sc.sender is None:
            return runs
        t = Transaction(id=f"{session_id}.1", sender=sc.sender)
        s.transaction, s.transactions = t, 1
        v = await runner.evaluate(Stage.MAIL, s, t)
        runs.append(StageRun(Stage.MAIL, v))
        if v.refuses:
            return runs
        for rcpt in sc.rcpts:
            t.recipient = rcpt
            v = await runner.evaluate(Stage.RCPT, s, t)
            runs.append(StageRun(Stage.RCPT, v, rcpt))
            if _ends(v):
                return runs
            if not v.refuses:
                t.recipients.append(rcpt)
        t.recipient = None
        if sc.message is not None and t.recipients:
            t.message = message_of(sc.message)
            runs.append(StageRun(Stage.DATA, await runner.evaluate(Stage.DATA, s, t)))
        return runs
    finally:
        await runner.evaluate(Stage.DISCONNECT, s, s.transaction)
