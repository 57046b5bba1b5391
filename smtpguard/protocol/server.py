"""The inbound SMTP session: an aiosmtpd 1.4.6 `SMTP` subclass that owns the command loop.

aiosmtpd gives us the transport plumbing, STARTTLS and the PROXY protocol parser; smtpguard's
code reads every line itself so that every command -- unknown ones included -- passes through
policy, bare LF/CR/NUL in command lines are refused, pipelining discipline is enforced and DATA
is framed by `protocol.data` (smuggling-safe). The aiosmtpd internals this relies on
(`_reader`, `_writer`, `_reset_timeout`, `_tls_protocol`, `smtp_STARTTLS`,
`get_proxy`) are guarded by tests/unit/test_aiosmtpd_internals.py.

Invariants:
- the client never gets a 2xx to end-of-data unless the upstream replied 2xx to that message;
- every failure (upstream, policy, our own bug) becomes an RFC 5321 reply with an RFC 3463
  enhanced code; no exception text ever reaches the client;
- client bytes reach the upstream only as re-encoded commands and the canonical message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import time
from typing import Any

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, TLSSetupException

from smtpguard import metrics
from smtpguard.deadline import DeadlineTimer
from smtpguard.errors import UpstreamError
from smtpguard.facts import Message, Session, TLSFacts, Transaction
from smtpguard.policy.verdict import Verdict
from smtpguard.protocol import headers as header_edit
from smtpguard.protocol.address import EnvelopeError, parse_mail, parse_rcpt
from smtpguard.protocol.context import ListenerContext, new_id
from smtpguard.protocol.data import DataFramer
from smtpguard.protocol.readbuf import buffered, read_message, wait_for_input
from smtpguard.reply import Reply
from smtpguard.stage import TRANSACTION_STAGES, Stage
from smtpguard.upstream import ClientIdentity, UpstreamSession

log = logging.getLogger("smtpguard.smtp")

# RFC 2920 §3.1: these end a pipelined group; data after them before our reply is a violation
SYNC_VERBS = frozenset({"EHLO", "HELO", "DATA", "STARTTLS", "QUIT", "NOOP", "VRFY", "EXPN", "AUTH", "ETRN"})
KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS", "VRFY", "EXPN",
    "HELP", "ETRN", "AUTH", "BDAT", "XCLIENT", "XFORWARD",
})

R_OK = Reply(250, "2.0.0", "Ok")
R_BYE = Reply(221, "2.0.0", "Bye")
R_NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
R_NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
R_NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
R_NEED_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
R_TOO_MANY_RCPT = Reply(452, "4.5.3", "Error: too many recipients")
R_UNKNOWN = Reply(500, "5.5.2", "Error: command not recognized")
R_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
R_BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
R_BARE_LF_CMD = Reply(500, "5.5.2", "Error: bare <LF> in command (use CRLF line endings)")
R_BARE_CR_CMD = Reply(500, "5.5.2", "Error: bare <CR> in command (use CRLF line endings)")
R_NUL_CMD = Reply(500, "5.5.2", "Error: NUL or control character in command")
R_8BIT_CMD = Reply(500, "5.5.2", "Error: non-ASCII command without SMTPUTF8")
R_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors, closing connection")
R_SYNC = Reply(554, "5.5.0", "Error: SMTP protocol synchronization (pipelining not allowed here)")
R_DATA_SYNC = Reply(554, "5.5.0", "Error: SMTP protocol synchronization (data sent before 354)")
R_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
R_SHUTDOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
R_TOO_MANY_CONN = Reply(421, "4.7.0", "Too many connections, try again later")
R_TOO_MANY_CONN_IP = Reply(421, "4.7.0", "Too many connections from your address, try again later")
R_INTERNAL = Reply(451, "4.3.0", "Temporary local problem, try again later")
R_UPSTREAM_DOWN = Reply(451, "4.4.1", "Next-hop mail server unavailable, try again later")
R_UPSTREAM_LOST = Reply(451, "4.4.2", "Connection to next-hop mail server lost, try again later")
R_NO_TLS = Reply(502, "5.5.1", "Error: STARTTLS not available")
R_TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
R_NO_AUTH = Reply(502, "5.5.1", "Error: authentication not available on this service")
R_NO_BDAT = Reply(502, "5.5.1", "Error: CHUNKING not offered")
R_VRFY = Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
R_EXPN = Reply(502, "5.5.1", "Error: EXPN not available")
R_HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS (see RFC 5321)")
R_ETRN = Reply(502, "5.5.1", "Error: ETRN not available")
R_DATA_START = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
R_TOO_BIG = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
R_NO_MEMORY = Reply(452, "4.3.1", "Insufficient system resources, try again later")
R_SMTPUTF8_UPSTREAM = Reply(555, "5.6.7", "SMTPUTF8 is not supported by the next-hop mail server")
VIOLATION_REPLIES = {
    "bare_lf": Reply(554, "5.6.0", "Error: bare <LF> in message (RFC 5321 2.3.8), use CRLF line endings"),
    "bare_cr": Reply(554, "5.6.0", "Error: bare <CR> in message (RFC 5321 2.3.8), use CRLF line endings"),
    "nul": Reply(554, "5.6.0", "Error: NUL character in message"),
    "line_too_long": Reply(554, "5.6.0", "Error: message line longer than allowed (RFC 5322 2.1.1)"),
}
R_REFUSED_SESSION = Reply(503, "5.5.1", "Error: bad sequence of commands (this session was refused)")
R_FOLDED_FIRST_LINE = Reply(554, "5.6.0", "Error: message begins with a folded (whitespace) line")
DEFAULT_COMMAND_REPLIES = {"VRFY": R_VRFY, "EXPN": R_EXPN, "HELP": R_HELP, "ETRN": R_ETRN}


class _Closing(Exception):
    """The session is over (QUIT, 421, EOF, policy disconnect)."""


class GuardSMTP(SMTP):
    def __init__(self, listener: ListenerContext) -> None:
        limits = listener.cfg.limits
        # the StreamReader limit: a message line or command line plus CRLF and a stuffing dot
        self.line_length_limit = max(limits.max_line_length + 3, limits.max_command_length + 2)
        self._init_aiosmtpd_state(listener)
        self.listener = listener
        self.proxy = listener.proxy
        self.limits = limits
        self.facts: Session | None = None
        self.txn: Transaction | None = None
        self.upstream: UpstreamSession | None = None
        self._verb = "-"
        self._budget = limits.bad_command_budget
        self._in_data = False
        self._closing = False
        self._result = "ok"
        self._counted_ip: str | None = None
        self._refused: Reply | None = None
        self._stage_records: list[dict[str, Any]] = []  # mail/rcpt/data stages that had rules
        self._txn_policy: str | None = None  # the policy version the transaction is pinned to
        self._session_records: list[dict[str, Any]] = []  # connect, helo and command stages
        self._upstream_replies: list[str] = []  # what the MTA answered in this transaction
        self._smtputf8 = False
        self._cleanup_task: asyncio.Task[None] | None = None

    def _init_aiosmtpd_state(self, listener: ListenerContext) -> None:
        """What `SMTP.__init__` sets up, minus its per-connection introspection of the handler
        and of `self` (`inspect.getmembers`, `dir`: ~0.3 ms a connection, libraries.md §1.5):
        smtpguard dispatches commands itself, has no handler hooks and no AUTH mechanisms.
        tests/unit/test_aiosmtpd_internals.py checks that this sets every attribute the real
        `__init__` sets."""
        loop = asyncio.get_running_loop()
        self.__ident__ = "ESMTP"
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=loop)
        self.event_handler = _NO_HOOKS
        self.data_size_limit = listener.cfg.limits.max_message_size
        self.enable_SMTPUTF8 = False
        self._decode_data = False
        self.hostname = listener.proxy.hostname
        self.tls_context = listener.tls_context if listener.cfg.tls.mode == "starttls" else None
        self.require_starttls = False
        self._timeout_duration = listener.cfg.limits.idle_timeout
        self._timeout_handle = None  # aiosmtpd's; unused: the idle timeout is `self._idle`
        self._idle = DeadlineTimer(self._timeout_cb)
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = None
        self._auth_required = False
        self._auth_methods = {}
        self._handle_hooks = {}
        self._ehlo_hook_ver = None
        self._smtp_methods = {}
        self._enforce_call_limit = False

    # ----------------------------------------------------------------- plumbing
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self.transport is not None and self._original_transport is not None
        super().connection_made(transport)
        if starttls and self.facts is not None:
            self._after_starttls(transport)

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels the handler here (aio-libs/aiosmtpd#110), which could cut an upstream
        # relay in half. We only mark EOF; the command loop ends when it has read everything.
        self._reader.feed_eof()
        return not (self._tls_protocol is not None or self.listener.implicit_tls)

    def connection_lost(self, error: Exception | None) -> None:
        self._idle.cancel()
        if self._original_transport is not None:
            self._original_transport.close()
        asyncio.StreamReaderProtocol.connection_lost(self, error)
        if self._handler_coroutine is not None and not self._in_data:
            self._handler_coroutine.cancel()
        self.transport = None

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels and re-creates a timer on every command; moving the deadline of one
        self-re-arming timer is cheaper."""
        self._idle.arm(duration or self._timeout_duration)

    def _stop_timeout(self) -> None:
        self._idle.disarm()

    def _timeout_cb(self) -> None:
        if self._in_data or self.transport is None:
            return
        self._result = "timeout"
        self._write_reply(R_TIMEOUT)
        self.transport.close()

    async def push(self, status: Any) -> None:  # used by aiosmtpd's smtp_STARTTLS only
        text = status if isinstance(status, str) else status.decode()
        if text.startswith("220 "):
            text = "220 2.0.0 Ready to start TLS"
        self._writer.write(text.encode() + b"\r\n")
        await self._writer.drain()

    def _write_reply(self, reply: Reply) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        data = ("\r\n".join(reply.lines()) + "\r\n").encode("utf-8", "surrogateescape")
        self._writer.write(data)
        verb = self._verb if self._verb in KNOWN_VERBS or self._verb in ("-", "CONNECT") else "unknown"
        self.listener.count_reply(verb, reply.klass)

    async def _reply(self, reply: Reply) -> None:
        self._write_reply(reply)
        transport = self.transport
        # replies are tiny: wait for the socket only when a slow reader let output pile up
        if transport is not None and transport.get_write_buffer_size() > 65536:  # type: ignore[attr-defined]
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    def _close(self, result: str | None = None) -> None:
        if result and self._result == "ok":
            self._result = result
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _violation(self, kind: str) -> None:
        metrics.child(metrics.PROTOCOL_VIOLATIONS, self.listener.name, kind).inc()

    # ----------------------------------------------------------------- session life
    async def _handle_client(self) -> None:
        self.proxy.sessions.add(self)
        try:
            await self._serve()
        except (_Closing, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            if self._result == "ok":
                self._result = "dropped"
        except TLSSetupException:
            self._result = "tls_error"
        except Exception:
            log.exception("session %s failed", self.facts.id if self.facts else "?")
            self._result = "error"
            self._write_reply(R_INTERNAL.with_text("Temporary local problem, closing connection"))
        finally:
            self._close()
            self.proxy.sessions.discard(self)
            self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup())

    async def _cleanup(self) -> None:
        if self._counted_ip is not None:
            self.proxy.per_ip[self._counted_ip] -= 1
            if self.proxy.per_ip[self._counted_ip] <= 0:
                del self.proxy.per_ip[self._counted_ip]
            self.listener.active -= 1
            metrics.child(metrics.CONNECTIONS_ACTIVE, self.listener.name).dec()
            self._counted_ip = None
        metrics.child(metrics.CONNECTIONS, self.listener.name, self._result).inc()
        if self.txn is not None:
            self._finish_transaction("aborted", None)
        self._log_session()
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.close()
        if self.facts is not None:
            try:
                await self.proxy.gate.observe("connection_closed", self.facts, None)
                await self.proxy.gate.evaluate(Stage.DISCONNECT, self.facts, None)
            except Exception:
                log.exception("disconnect bookkeeping failed")

    async def _serve(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        if not peer:
            self._close("error")
            return
        client_ip, client_port = peer[0], int(peer[1])
        proxied = False
        cfg = self.listener.cfg
        if cfg.proxy_protocol.enabled:
            if client_ip not in self.listener.proxy_trusted:
                log.warning("PROXY protocol header from untrusted peer %s refused", client_ip)
                self._close("proxy_refused")
                return
            self._reset_timeout(cfg.proxy_protocol.timeout)
            data = await get_proxy(self._reader)
            if not data or not data.valid:
                self._close("proxy_refused")
                return
            if data.src_addr is not None:  # a v2 LOCAL health check keeps the peer address
                client_ip, client_port, proxied = str(data.src_addr), int(data.src_port or 0), True
            self._reset_timeout()
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        local = ipaddress.ip_address(sock[0].split("%", 1)[0]) if sock else None
        self.facts = Session(
            id=new_id(), listener=self.listener.name, client_ip=address, client_port=client_port,
            local_ip=local, local_port=int(sock[1]) if sock else None, proxied=proxied,
        )
        if self.listener.implicit_tls:
            self._record_tls(self.transport)

        if not self._admit(str(address)):
            return
        await self._greeting_delay()
        self._verb = "CONNECT"
        await self._lookup_client_name()
        verdict = await self._evaluate(Stage.CONNECT)
        if self.proxy.shutting_down:
            await self._reply(R_SHUTDOWN)
            self._close("shutdown")
            return
        if verdict.refuses and verdict.reply is not None:
            await self._reply(verdict.reply)
            if verdict.disconnect or verdict.reply.code == 421:
                self._close("policy_disconnect")
                return
            self._refused = verdict.reply  # RFC 5321 3.1: then 503 to everything but QUIT
        else:
            await self._reply(self.listener.banner)
        await self._command_loop()

    def _admit(self, ip: str) -> bool:
        proxy = self.proxy
        reply = None
        result = "ok"
        if len(proxy.sessions) > proxy.config.max_connections or self.listener.active >= self.limits.max_connections:
            reply, result = R_TOO_MANY_CONN, "refused_global_cap"
        elif proxy.per_ip[ip] >= self.limits.max_connections_per_ip:
            reply, result = R_TOO_MANY_CONN_IP, "refused_ip_cap"
        if reply is not None:
            self._verb = "CONNECT"
            self._write_reply(reply)
            self._close(result)
            return False
        proxy.per_ip[ip] += 1
        self._counted_ip = ip
        self.listener.active += 1
        metrics.child(metrics.CONNECTIONS_ACTIVE, self.listener.name).inc()
        return True

    async def _greeting_delay(self) -> None:
        assert self.facts is not None
        delay = self.limits.greeting_delay
        if delay <= 0 or self.facts.client_ip in self.listener.greeting_skip:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wait_for_input(self._reader), delay)
        if buffered(self._reader):  # hanging up before the banner is not talking
            self.facts.early_talker = True
            self._violation("early_talker")

    async def _lookup_client_name(self) -> None:
        """The verified rDNS name (FCrDNS, the `iprev` check when the policy has it) for rules,
        logs and XCLIENT NAME; `[UNAVAILABLE]` upstream otherwise."""
        assert self.facts is not None
        results = await self.proxy.gate.run_checks(("iprev",), Stage.CONNECT, self.facts, None)
        result = results.get("iprev")
        if result is not None and "iprev.pass" in result.outcomes:
            self.facts.client_name = result.details.get("name") or None

    async def _command_loop(self) -> None:
        while not self._closing:
            line = await self._read_command()
            if line is None:
                continue
            verb, _, arg_text = line.partition(" ")
            verb = verb.upper()
            arg = arg_text.strip() or None
            self._verb = verb if verb in KNOWN_VERBS else "unknown"
            if (buffered(self._reader) and verb not in ("QUIT", "DATA")
                    and (not self.facts or not self.facts.esmtp or verb in SYNC_VERBS)
                    and await self._pipelining_violation(verb)):
                return
            self._reset_timeout()
            if self._refused is not None and verb not in ("QUIT", "NOOP", "RSET"):
                await self._reply(R_REFUSED_SESSION)  # RFC 5321 3.1: 503 to all but QUIT
                continue
            handler = _HANDLERS.get(verb)
            if handler is None:
                await self._command_stage(verb, arg)
            else:
                await handler(self, arg)
            if self.proxy.shutting_down and self.txn is None and not self._closing:
                await self._reply(R_SHUTDOWN)
                self._close("shutdown")

    async def _read_command(self) -> str | None:
        try:
            raw = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._drain_long_line(exc.consumed)
            self._violation("line_too_long")
            await self._bad_command(R_LINE_TOO_LONG)
            return None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self._violation("bad_syntax")
            raise _Closing from None
        if len(raw) > self.limits.max_command_length + 2:
            self._violation("line_too_long")
            await self._bad_command(R_LINE_TOO_LONG)
            return None
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
            kind = "bare_lf" if not raw.endswith(b"\r\n") else "bare_cr"
            self._violation(kind)
            await self._bad_command(R_BARE_LF_CMD if kind == "bare_lf" else R_BARE_CR_CMD)
            return None
        body = raw[:-2]
        if _COMMAND_CONTROL.search(body):
            self._violation("nul" if b"\x00" in body else "bad_syntax")
            await self._bad_command(R_NUL_CMD)
            return None
        if not body.strip():
            self._violation("bad_syntax")
            await self._bad_command(R_BAD_SYNTAX)
            return None
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            if self._smtputf8_allowed():
                return body.decode("utf-8", "surrogateescape")
            await self._bad_command(R_8BIT_CMD)
            return None

    def _smtputf8_allowed(self) -> bool:
        return bool(self.facts and self.facts.esmtp and self._advertise_smtputf8())

    async def _drain_long_line(self, consumed: int) -> None:
        await self._reader.readexactly(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)

    async def _bad_command(self, reply: Reply) -> None:
        self._budget -= 1
        if self._budget <= 0:
            await self._reply(R_TOO_MANY_ERRORS)
            self._close("bad_commands")
            raise _Closing
        await self._reply(reply)

    async def _pipelining_violation(self, verb: str) -> bool:
        assert self.facts is not None
        self.facts.pipelining_violation = True
        self._violation("pipelining")
        if self.listener.cfg.forbid_unauth_pipelining:
            await self._reply(R_SYNC)
            self._close("pipelining")
            return True
        return False

    # ----------------------------------------------------------------- policy glue
    async def _evaluate(self, stage: Stage) -> Verdict:
        assert self.facts is not None
        started = time.perf_counter()
        verdict = await self.proxy.gate.evaluate(stage, self.facts, self.txn)
        metrics.child(metrics.POLICY_EVALUATION_SECONDS, stage.value).observe(time.perf_counter() - started)
        in_txn = stage in TRANSACTION_STAGES
        if in_txn and self._txn_policy is None:
            self._txn_policy = verdict.policy
        if verdict.record:  # empty when the stage had no rules: nothing to say
            if in_txn:
                self._stage_records.append(verdict.record)
            elif len(self._session_records) < 50:  # connect, helo, command: the session record
                self._session_records.append(verdict.record)
        if verdict.delay > 0:
            await asyncio.sleep(min(verdict.delay, 60.0))
        if verdict.reply is not None and self.txn is not None and verdict.refuses:
            return _with_reply(verdict, verdict.reply.with_suffix(f"[txn {self.txn.id}]"))
        return verdict

    async def _policy_refusal(self, stage: Stage) -> Reply | None:
        """Evaluate `stage`; if policy refuses, answer and return the reply given."""
        verdict = await self._evaluate(stage)
        if verdict.refuses and verdict.reply is not None:
            await self._reply(verdict.reply)
            if verdict.disconnect or verdict.reply.code == 421:
                self._finish_transaction("rejected" if verdict.reply.is_permanent else "tempfailed", verdict.reply)
                self._close("policy_disconnect")
                raise _Closing
            return verdict.reply
        return None

    # ----------------------------------------------------------------- commands
    async def smtp_HELO(self, arg: str | None) -> None:
        await self._helo(arg, esmtp=False)

    async def smtp_EHLO(self, arg: str | None) -> None:
        await self._helo(arg, esmtp=True)

    async def _helo(self, arg: str | None, *, esmtp: bool) -> None:
        assert self.facts is not None
        if not arg or " " in arg:
            await self._bad_command(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        await self._abort_transaction()
        self.facts.helo, self.facts.esmtp = arg, esmtp
        if await self._policy_refusal(Stage.HELO) is not None:
            self.facts.helo = None
            return
        if self.upstream is not None:  # the identity given to the upstream changed
            upstream, self.upstream = self.upstream, None
            await upstream.close()
        if not esmtp:
            await self._reply(Reply(250, None, self.proxy.hostname))
            return
        key = (self._advertise_smtputf8(), self.tls_context is not None and self._tls_protocol is None,
               self._advertise_dsn())
        reply = self.listener.ehlo_replies.get(key)
        if reply is None:
            smtputf8, starttls, dsn = key
            lines = ["PIPELINING", f"SIZE {self.limits.max_message_size}", "8BITMIME"]
            lines += ["SMTPUTF8"] * smtputf8 + ["STARTTLS"] * starttls + ["DSN"] * dsn
            lines.append("ENHANCEDSTATUSCODES")
            reply = self.listener.ehlo_replies[key] = Reply(250, None, self.proxy.hostname, tuple(lines))
        await self._reply(reply)

    def _upstream_has(self, keyword: str) -> bool:
        known = self.proxy.upstream.known_extensions
        return known is not None and keyword in known

    def _advertise_smtputf8(self) -> bool:
        return self.listener.cfg.smtputf8 and self._upstream_has("SMTPUTF8")

    def _advertise_dsn(self) -> bool:
        return self.listener.cfg.dsn and self._upstream_has("DSN")

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.facts is not None
        if self.facts.helo is None:
            await self._bad_command(R_NEED_HELO)
            return
        if self.txn is not None:
            await self._bad_command(R_NESTED_MAIL)
            return
        try:
            path = parse_mail(arg, smtputf8_offered=self._advertise_smtputf8() and self.facts.esmtp,
                              max_size=self.limits.max_message_size, dsn_offered=self._advertise_dsn())
        except EnvelopeError as exc:
            await self._bad_command(exc.reply)
            return
        if not self.facts.esmtp and path.params:
            await self._bad_command(Reply(555, "5.5.4", "ESMTP parameters need EHLO"))
            return
        self.facts.transactions += 1
        size = path.params.get("SIZE")
        self.txn = Transaction(id=new_id(), sender=path.address, mail_params=dict(path.params),
                               declared_size=int(size) if size else None)
        self._stage_records = []
        self._txn_policy = None
        self._upstream_replies = []
        self._smtputf8 = "SMTPUTF8" in path.params
        refusal = await self._policy_refusal(Stage.MAIL)
        if refusal is not None:
            self._finish_transaction("rejected" if refusal.is_permanent else "tempfailed", refusal)
            return
        if self.upstream is None or not self.upstream.usable:
            try:
                self.upstream = await self.proxy.upstream.open(self._identity())
            except UpstreamError as exc:
                log.warning("upstream unavailable for txn %s: %s", self.txn.id, exc)
                reply = R_UPSTREAM_DOWN.with_suffix(f"[txn {self.txn.id}]")
                await self._reply(reply)
                self._finish_transaction("upstream_error", reply)
                return
        if self._smtputf8 and "SMTPUTF8" not in self.upstream.extensions:
            await self._reply(R_SMTPUTF8_UPSTREAM)
            self._finish_transaction("rejected", R_SMTPUTF8_UPSTREAM)
            return
        params = self._forward_mail_params(path.params)
        try:
            reply = await self.upstream.mail(path.address, params)
        except UpstreamError:
            await self._upstream_lost()
            return
        self._upstream_replies.append(f"MAIL {reply}")
        if reply.code == 421:  # the MTA is closing: that is not our session ending
            await self._upstream_lost()
            return
        await self._reply(reply)
        if not reply.is_positive:
            self._finish_transaction("upstream_rejected" if reply.is_permanent else "upstream_tempfailed", reply)

    def _forward_mail_params(self, params: dict[str, str | None]) -> dict[str, str | None]:
        assert self.upstream is not None
        ext = self.upstream.extensions
        out: dict[str, str | None] = {}
        for key, value in params.items():
            if (key == "SIZE" and "SIZE" in ext) or (key == "BODY" and "8BITMIME" in ext) \
                    or (key == "SMTPUTF8" and "SMTPUTF8" in ext) or (key in ("RET", "ENVID") and "DSN" in ext):
                out[key] = value
        return out

    def _identity(self) -> ClientIdentity:
        assert self.facts is not None
        return ClientIdentity(
            addr=str(self.facts.client_ip), port=self.facts.client_port, name=self.facts.client_name,
            helo=self.facts.helo, proto="ESMTP" if self.facts.esmtp else "SMTP",
        )

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.facts is not None
        txn = self.txn
        if txn is None:
            await self._bad_command(R_NEED_MAIL)
            return
        try:
            path = parse_rcpt(arg, smtputf8=self._smtputf8, dsn_offered=self._advertise_dsn())
        except EnvelopeError as exc:
            await self._bad_command(exc.reply)
            return
        # attempts count, not only accepted recipients: refused RCPTs must not be free (harvesting)
        if len(txn.recipients) + txn.failed_recipients >= self.limits.max_recipients:
            await self._reply(R_TOO_MANY_RCPT)
            return
        txn.recipient, txn.rcpt_params = path.address, dict(path.params)
        try:
            if await self._policy_refusal(Stage.RCPT) is not None:
                txn.failed_recipients += 1
                await self.proxy.gate.observe("recipient_refused", self.facts, txn)
                return
            if self.upstream is None:
                await self._upstream_lost()
                return
            params = dict(path.params) if "DSN" in self.upstream.extensions else {}
            try:
                reply = await self.upstream.rcpt(path.address, params)
            except UpstreamError:
                await self._upstream_lost()
                return
            self._upstream_replies.append(f"RCPT <{path.address}> {reply}")
            if reply.code == 421:
                await self._upstream_lost()
                return
            if reply.is_positive:
                txn.recipients.append(path.address)
            else:
                txn.failed_recipients += 1
                await self.proxy.gate.observe("recipient_refused", self.facts, txn)
            await self._reply(reply)
        finally:
            if self.txn is not None:
                self.txn.recipient = None

    async def smtp_DATA(self, arg: str | None) -> None:
        assert self.facts is not None
        if arg:
            await self._bad_command(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        txn = self.txn
        if txn is None:
            await self._bad_command(R_NEED_MAIL)
            return
        if not txn.recipients:
            await self._reply(R_NEED_RCPT)
            return
        if buffered(self._reader):  # content before our 354: never guess where it ends (R4)
            self.facts.pipelining_violation = True
            self._violation("data_before_354")
            await self._reply(R_DATA_SYNC)
            self._finish_transaction("bad_data", R_DATA_SYNC)
            self._close("pipelining")
            raise _Closing
        self._in_data = True
        self._stop_timeout()
        try:
            await self._receive_and_relay(txn)
        finally:
            self._in_data = False
            if not self._closing:
                self._reset_timeout()

    async def _receive_and_relay(self, txn: Transaction) -> None:
        assert self.facts is not None
        await self._reply(R_DATA_START)
        normalize = self.facts.client_ip in self.listener.normalize_networks
        framer = DataFramer(max_size=self.limits.max_message_size, max_line_length=self.limits.max_line_length,
                            normalize=normalize, fragment_limit=self.line_length_limit)
        budget = _Reservation(self.proxy)
        out_of_memory = False

        def progress() -> None:  # hold the bytes against the process-wide budget as they come
            nonlocal out_of_memory
            if not out_of_memory and framer.size > budget.reserved and not framer.too_big \
                    and not budget.grow(framer.size):
                out_of_memory = True
                framer.stop_storing()

        try:  # whatever ends this (EOF, reset, timeout, a bug), the reserved bytes go back
            try:
                async with asyncio.timeout(self.limits.data_timeout):
                    await read_message(self._reader, framer, progress)
            except (asyncio.IncompleteReadError, ConnectionError):
                self._finish_transaction("aborted", None)
                raise _Closing from None
            except TimeoutError:
                self._result = "timeout"
                await self._reply(R_TIMEOUT)
                self._finish_transaction("aborted", R_TIMEOUT)
                self._close()
                raise _Closing from None
            await self._after_data(txn, framer, out_of_memory)
        finally:
            budget.release()

    async def _after_data(self, txn: Transaction, framer: DataFramer, out_of_memory: bool) -> None:
        assert self.facts is not None
        metrics.child(metrics.MESSAGE_SIZE, self.listener.name).observe(framer.size)
        for kind in sorted(framer.violations):
            self._violation(kind)
        reply: Reply | None = None
        outcome = ""
        if out_of_memory:
            reply, outcome = R_NO_MEMORY, "tempfailed"
        elif framer.too_big:
            reply, outcome = R_TOO_BIG, "too_big"
        elif framer.rejected_violations:
            reply, outcome = VIOLATION_REPLIES[sorted(framer.rejected_violations)[0]], "bad_data"
        elif header_edit.starts_with_folded_line(framer.head(1)):
            reply, outcome = R_FOLDED_FIRST_LINE, "bad_data"
        if reply is not None:
            reply = reply.with_suffix(f"[txn {txn.id}]")
            await self._reply(reply)
            await self._abort_upstream_transaction()
            self._finish_transaction(outcome, reply)
            return
        content = framer.content()
        txn.message = Message(content)
        refusal = await self._policy_refusal(Stage.DATA)
        if refusal is not None:
            await self._abort_upstream_transaction()
            self._finish_transaction("rejected" if refusal.is_permanent else "tempfailed", refusal)
            return
        content = await self._final_content(txn, content)
        if self.upstream is None:
            await self._upstream_lost()
            return
        # shielded: a client that disconnects now must not cut the upstream relay in half
        relay = asyncio.ensure_future(self.upstream.data(content))
        try:
            reply = await asyncio.shield(relay)
        except UpstreamError:
            await self._upstream_lost()
            return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await relay
            raise
        self._upstream_replies.append(f"DATA {reply}")
        if reply.code == 421:
            await self._upstream_lost()
            return
        reply = reply.with_suffix(f"[txn {txn.id}]")
        await self._reply(reply)
        if reply.is_positive:
            await self.proxy.gate.observe("message_accepted", self.facts, txn)
            self._finish_transaction("delivered", reply)
        else:
            self._finish_transaction("upstream_rejected" if reply.is_permanent else "upstream_tempfailed", reply)

    async def _final_content(self, txn: Transaction, content: bytes) -> bytes:
        """Strip forged Authentication-Results, prepend ours and the policy's headers (R6)."""
        assert self.facts is not None
        added: list[tuple[str, str]] = []
        value = await header_edit.authentication_results(self.proxy, self.facts, txn)
        if value is not None:
            added.append(("Authentication-Results", value))
        added.extend(txn.headers)
        header_end = content.find(b"\r\n\r\n")
        if not added and not _AUTH_RESULTS_LINE.search(content, 0, len(content) if header_end < 0 else header_end + 2):
            return content  # nothing to add, no A-R header to strip (searched in C): no copy
        return header_edit.rewrite(content, added, self.proxy.authserv_id)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self._bad_command(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        await self._abort_transaction()
        await self._reply(R_OK)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self._reply(R_OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self._abort_transaction()
        await self._reply(R_BYE)
        self._close()
        raise _Closing

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self.tls_context is None or self.listener.implicit_tls:
            await self._bad_command(R_NO_TLS)
            return
        if self._tls_protocol is not None:
            await self._bad_command(R_TLS_ACTIVE)
            return
        if arg:
            await self._bad_command(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        await self._abort_transaction()
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException:
            metrics.child(metrics.TLS_HANDSHAKES, self.listener.name, "unknown", "error").inc()
            raise

    def _after_starttls(self, transport: asyncio.BaseTransport) -> None:
        assert self.facts is not None
        self.facts.helo, self.facts.esmtp = None, False  # RFC 3207 4.2: start over
        self._record_tls(transport)

    def _record_tls(self, transport: Any) -> None:
        assert self.facts is not None
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return
        version = ssl_object.version() or "unknown"
        cipher = (ssl_object.cipher() or ("unknown",))[0]
        self.facts.tls = TLSFacts(version=version, cipher=cipher)
        metrics.child(metrics.TLS_HANDSHAKES, self.listener.name, version, "ok").inc()

    async def smtp_AUTH(self, arg: str | None) -> None:
        await self._bad_command(R_NO_AUTH)

    async def smtp_BDAT(self, arg: str | None) -> None:
        await self._bad_command(R_NO_BDAT)

    async def _command_stage(self, verb: str, arg: str | None) -> None:
        """VRFY, EXPN, HELP, ETRN and unknown verbs: policy first, never upstream by default."""
        assert self.facts is not None
        self.facts.command, self.facts.command_arg = verb, arg
        known = verb in DEFAULT_COMMAND_REPLIES
        if verb == "VRFY" and not arg:
            await self._bad_command(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        if not known:
            self.facts.unknown_commands += 1
            self._violation("unknown_command")
        try:
            verdict = await self._evaluate(Stage.COMMAND)
        finally:
            self.facts.command, self.facts.command_arg = None, None
        if verdict.reply is not None:
            await self._reply(verdict.reply)
            if verdict.disconnect or verdict.reply.code == 421:
                self._close("policy_disconnect")
                raise _Closing
            return
        if verdict.accepted and known and verb != "HELP":
            await self._forward_command(verb, arg)
            return
        if verb == "HELP":
            await self._reply(self._help())
        elif known:
            await self._reply(DEFAULT_COMMAND_REPLIES[verb])
        else:
            await self._bad_command(R_UNKNOWN)

    def _help(self) -> Reply:
        verbs = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY"]
        if self.tls_context is not None and self._tls_protocol is None:
            verbs.append("STARTTLS")
        return Reply(214, "2.0.0", f"Commands: {' '.join(verbs)} (see RFC 5321)")

    async def _forward_command(self, verb: str, arg: str | None) -> None:
        try:
            if self.upstream is None or not self.upstream.usable:
                self.upstream = await self.proxy.upstream.open(self._identity())
            reply = await self.upstream.command(verb, arg)
        except UpstreamError:
            await self._reply(R_UPSTREAM_DOWN)
            return
        await self._reply(reply)

    # ----------------------------------------------------------------- transactions
    async def _abort_transaction(self) -> None:
        if self.txn is not None:
            self._finish_transaction("aborted", None)
            await self._abort_upstream_transaction()

    async def _abort_upstream_transaction(self) -> None:
        if self.upstream is not None:
            await self.upstream.rset()
            if not self.upstream.usable:
                upstream, self.upstream = self.upstream, None
                await upstream.close()

    async def _upstream_lost(self) -> None:
        txn_id = self.txn.id if self.txn else None
        reply = R_UPSTREAM_LOST.with_suffix(f"[txn {txn_id}]") if txn_id else R_UPSTREAM_LOST
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.close()
        await self._reply(reply)
        if self.txn is not None:
            self._finish_transaction("upstream_error", reply)

    def _finish_transaction(self, outcome: str, reply: Reply | None) -> None:
        txn, self.txn = self.txn, None
        if txn is None or self.facts is None:
            return
        metrics.child(metrics.MESSAGES, self.listener.name, outcome).inc()
        logger = self.proxy.decision_log
        if logger is not None:
            logger.info("transaction", extra={"record": {
                "event": "transaction", "txn": txn.id, "session": self.facts.id, "listener": self.listener.name,
                "client_ip": str(self.facts.client_ip), "client_name": self.facts.client_name,
                "helo": self.facts.helo, "tls": self.facts.tls.version if self.facts.tls else None,
                "sender": txn.sender, "recipients": txn.recipients, "failed_recipients": txn.failed_recipients,
                "size": txn.message.size if txn.message else None, "outcome": outcome,
                "reply": str(reply) if reply else None, "upstream": self._upstream_replies,
                "stages": self._stage_records, "policy": self._txn_policy,
            }})
        self._stage_records = []
        self._txn_policy = None
        self._upstream_replies = []

    def _log_session(self) -> None:
        """A record for a connection that had something to say outside its transactions: refused,
        ended abnormally, never sent MAIL, or matched rules at connect/HELO/command stages."""
        logger = self.proxy.decision_log
        if logger is None or self.facts is None:
            return
        if self.facts.transactions and self._refused is None and self._result == "ok" and not any(
                r.get("rules") for r in self._session_records):
            return  # an ordinary session: its transactions' records say it all
        logger.info("session", extra={"record": {
            "event": "session", "session": self.facts.id, "listener": self.listener.name,
            "client_ip": str(self.facts.client_ip), "client_port": self.facts.client_port,
            "client_name": self.facts.client_name, "proxied": self.facts.proxied, "helo": self.facts.helo,
            "tls": self.facts.tls.version if self.facts.tls else None, "result": self._result,
            "transactions": self.facts.transactions, "score": self.facts.score,
            "refused": str(self._refused) if self._refused else None, "stages": self._session_records,
        }})

    # ----------------------------------------------------------------- shutdown
    def begin_shutdown(self) -> None:
        """SIGTERM: idle sessions get 421 4.3.2 now; a session in DATA finishes first."""
        if self._in_data or self.facts is None:
            return
        self._verb = "-"
        self._write_reply(R_SHUTDOWN)
        self._close("shutdown")

    def abort(self) -> None:
        if self.transport is not None:
            self._result = "shutdown"
            self.transport.abort()  # type: ignore[attr-defined]


_COMMAND_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but TAB
_AUTH_RESULTS_LINE = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE | re.MULTILINE)


class _Reservation:
    """Message bytes one DATA phase holds against the process-wide memory budget."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.reserved = 0

    def grow(self, size: int) -> bool:
        step = max(65536, size - self.reserved)
        if not self.proxy.reserve_data(step):
            return False
        self.reserved += step
        metrics.DATA_BYTES_IN_FLIGHT.set(self.proxy.data_bytes)
        return True

    def release(self) -> None:
        self.proxy.release_data(self.reserved)
        self.reserved = 0
        metrics.DATA_BYTES_IN_FLIGHT.set(self.proxy.data_bytes)


def _with_reply(verdict: Verdict, reply: Reply) -> Verdict:
    return dataclasses.replace(verdict, reply=reply, delay=0.0)


class _NoHooks:
    """aiosmtpd introspects the handler on every connection: give it nothing to find."""


_NO_HOOKS = _NoHooks()
_HANDLERS = {
    "HELO": GuardSMTP.smtp_HELO, "EHLO": GuardSMTP.smtp_EHLO, "MAIL": GuardSMTP.smtp_MAIL,
    "RCPT": GuardSMTP.smtp_RCPT, "DATA": GuardSMTP.smtp_DATA, "RSET": GuardSMTP.smtp_RSET,
    "NOOP": GuardSMTP.smtp_NOOP, "QUIT": GuardSMTP.smtp_QUIT, "STARTTLS": GuardSMTP.smtp_STARTTLS,
    "AUTH": GuardSMTP.smtp_AUTH, "BDAT": GuardSMTP.smtp_BDAT,
}
