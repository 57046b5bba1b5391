"""The upstream MTA over SMTP (aiosmtplib): lazy sessions, XCLIENT/XFORWARD, STARTTLS.

Invariants:
- replies are relayed exactly (code, enhanced code, every line) through `reply.from_upstream`;
- any transport failure, timeout or unexpected disconnect raises `UpstreamError` and leaves
  the session unusable (the proxy drops it and opens a fresh one for the next transaction);
- attribute values sent in XCLIENT/XFORWARD are xtext-encoded (R8); client bytes never reach
  the upstream except as validated, re-encoded commands and the canonical message (R2);
- the message is sent as canonical unstuffed CRLF lines; aiosmtplib dot-stuffs and terminates
  it (tests/unit/test_upstream_emit.py proves the bytes equal `protocol.data.emit`);
- timeouts: one watchdog timer per session (`deadline.DeadlineTimer`) instead of aiosmtplib's per-command
  `asyncio.wait_for` (a future, a timer and callbacks per reply, ~5 % of the proxy's CPU): the
  client runs without timeouts and the watchdog closes the connection when a deadline passes,
  which fails the pending command with a "timeout" `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, NoReturn

import aiosmtplib

from smtpguard import metrics
from smtpguard.config import UpstreamConfig, split_hostport
from smtpguard.deadline import DeadlineTimer
from smtpguard.errors import UpstreamError
from smtpguard.protocol.address import xtext_encode
from smtpguard.reply import Reply, from_upstream
from smtpguard.upstream import ClientIdentity

log = logging.getLogger("smtpguard.upstream")

_XCLIENT_ATTRS = ("ADDR", "PORT", "NAME", "HELO", "PROTO")


def _tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SMTPUpstream:
    def __init__(self, cfg: UpstreamConfig, local_hostname: str) -> None:
        self.cfg = cfg
        self.host, self.port = split_hostport(cfg.url[len("smtp://"):].rstrip("/"), 25)
        self.local_hostname = cfg.helo_name or local_hostname
        self.description = f"smtp://{self.host}:{self.port}"
        self.known_extensions: frozenset[str] | None = None
        self._tls_ctx = _tls_context(cfg.tls_verify)

    async def open(self, identity: ClientIdentity) -> SMTPUpstreamSession:
        started = time.perf_counter()
        session = SMTPUpstreamSession(self)
        try:
            await session.connect(identity)
        except UpstreamError:
            metrics.UPSTREAM_UP.set(0)
            raise
        except BaseException:  # cancelled (client gone) mid-connect: never leak the connection
            session._abort()
            raise
        metrics.UPSTREAM_UP.set(1)
        metrics.UPSTREAM_CONNECT_SECONDS.observe(time.perf_counter() - started)
        self.known_extensions = session.extensions
        return session

    async def probe(self) -> bool:
        """Connect, EHLO, QUIT: is the upstream there? Also learns its extensions."""
        client = self._client(min(self.cfg.connect_timeout, 5.0))
        try:
            await client.connect()
            response = await client.ehlo()
            self.known_extensions = _extensions(response.message)
            await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()
            metrics.UPSTREAM_UP.set(0)
            return False
        metrics.UPSTREAM_UP.set(1)
        return True

    def _client(self, timeout: float | None) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.local_hostname,
            start_tls=False,
            use_tls=False,
            timeout=timeout,
        )


_SPECIAL_VALUES = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})


def _attr(key: str, value: str) -> str:
    """An XCLIENT/XFORWARD attribute value: xtext, except the protocol's own special values and
    the address/port/proto values smtpguard formats itself (R8)."""
    if value in _SPECIAL_VALUES or key in ("ADDR", "PORT", "PROTO"):
        return value
    return xtext_encode(value)


def _extensions(ehlo_message: str) -> frozenset[str]:
    lines = ehlo_message.split("\n")[1:]
    return frozenset(line.split(" ", 1)[0].upper() for line in lines if line.strip())


def _ext_args(ehlo_message: str, keyword: str) -> set[str]:
    for line in ehlo_message.split("\n")[1:]:
        parts = line.split()
        if parts and parts[0].upper() == keyword:
            return {p.upper() for p in parts[1:]}
    return set()


class SMTPUpstreamSession:
    def __init__(self, upstream: SMTPUpstream) -> None:
        self.upstream = upstream
        self.cfg = upstream.cfg
        # no per-command timeouts in aiosmtplib: the watchdog enforces them (module docstring)
        self.client = upstream._client(None)
        self._watchdog = DeadlineTimer(self._expired)
        self.extensions: frozenset[str] = frozenset()
        self._identity: ClientIdentity | None = None
        self._xforward_attrs: set[str] = set()
        self._broken = False
        self._in_tls_handshake = False

    @property
    def usable(self) -> bool:
        return not self._broken and self.client.is_connected

    async def connect(self, identity: ClientIdentity) -> None:
        self._identity = identity
        try:
            # the whole opening -- TCP connect, banner, EHLO, STARTTLS, XCLIENT -- under one
            # deadline; a cancelling timeout (not the watchdog): there is no connection to close
            # while the TCP handshake is pending
            async with asyncio.timeout(self.cfg.connect_timeout):
                await self._open(identity)
        except UpstreamError as exc:
            self._abort()
            metrics.child(metrics.UPSTREAM_ERRORS, exc.kind).inc()
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            self._abort()
            if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
                kind = "timeout"
            elif isinstance(exc, ssl.SSLError) or self._in_tls_handshake:
                kind = "tls"
            elif isinstance(exc, aiosmtplib.SMTPResponseException):
                kind = "protocol"  # e.g. a 554 greeting or EHLO refused
            else:
                kind = "connect"
            metrics.child(metrics.UPSTREAM_ERRORS, kind).inc()
            reason = "timed out" if kind == "timeout" else f"{type(exc).__name__}: {exc}"
            raise UpstreamError(f"cannot open upstream session: {reason}", kind) from None

    async def _open(self, identity: ClientIdentity) -> None:
        await self.client.connect()
        ehlo = await self._ehlo()
        if self.cfg.starttls != "off":
            if "STARTTLS" in self.extensions:
                self._in_tls_handshake = True
                await self.client.starttls(tls_context=self.upstream._tls_ctx,
                                           server_hostname=self.upstream.host)
                self._in_tls_handshake = False
                ehlo = await self._ehlo()
            elif self.cfg.starttls == "required":
                raise UpstreamError("upstream does not offer STARTTLS and starttls is required", "tls")
        if self.cfg.xclient == "auto" and "XCLIENT" in self.extensions:
            await self._xclient(identity, _ext_args(ehlo, "XCLIENT"))
            # the EHLO after XCLIENT sets the HELO name the upstream records: use the client's
            helo = identity.helo
            await self._ehlo(helo if helo and helo.isascii() and helo.isprintable() else None)
        elif self.cfg.xforward == "auto" and "XFORWARD" in self.extensions:
            self._xforward_attrs = _ext_args(ehlo, "XFORWARD")

    def _expired(self) -> None:
        """A command's deadline passed: drop the connection at once. abort(), not close(): a
        close waits until our write buffer drains, which never happens if the upstream stopped
        reading (a stalled DATA); the abort fails the pending read right away."""
        log.warning("upstream %s: no answer within the timeout, dropping the connection",
                    self.upstream.description)
        abort = getattr(self.client.transport, "abort", None)  # uvloop's transports are not asyncio subclasses
        if abort is not None:
            abort()
        self.client.close()

    async def _ehlo(self, name: str | None = None) -> str:
        response = await self.client.ehlo(hostname=name) if name else await self.client.ehlo()
        if response.code != 250:
            raise UpstreamError(f"upstream refused EHLO: {response.code} {response.message}", "protocol")
        self.extensions = _extensions(response.message)
        return response.message

    async def _xclient(self, identity: ClientIdentity, allowed: set[str]) -> None:
        addr = identity.addr
        if ":" in addr:
            addr = "IPv6:" + addr
        values = {
            "ADDR": addr,
            "PORT": str(identity.port),
            "NAME": identity.name or "[UNAVAILABLE]",
            "HELO": identity.helo or "[UNAVAILABLE]",
            "PROTO": identity.proto,
        }
        args = [f"{k}={_attr(k, v)}".encode() for k, v in values.items() if not allowed or k in allowed]
        response = await self.client.execute_command(b"XCLIENT", *args)
        if response.code not in (220, 250):  # Postfix answers 220 (a new greeting), smtp-sink 250
            raise UpstreamError(f"upstream refused XCLIENT: {response.code} {response.message}", "protocol")

    async def _xforward(self) -> None:
        identity = self._identity
        if not self._xforward_attrs or identity is None:
            return
        addr = identity.addr if ":" not in identity.addr else "IPv6:" + identity.addr
        values = {"NAME": identity.name or "[UNAVAILABLE]", "ADDR": addr, "PORT": str(identity.port),
                  "PROTO": identity.proto, "HELO": identity.helo or "[UNAVAILABLE]"}
        args = [f"{k}={_attr(k, v)}".encode() for k, v in values.items() if k in self._xforward_attrs]
        if args:
            response = await self._execute("XFORWARD", *args)
            if response.code != 250:
                self._abort()
                metrics.child(metrics.UPSTREAM_ERRORS, "protocol").inc()
                raise UpstreamError(f"upstream refused XFORWARD: {response.code}", "protocol")

    async def _execute(self, verb: str, *args: bytes) -> aiosmtplib.SMTPResponse:
        if self._broken:
            raise UpstreamError("upstream session is no longer usable")
        started = time.perf_counter()
        self._watchdog.arm(self.cfg.command_timeout)
        try:
            response = await self.client.execute_command(verb.encode(), *args)
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            self._failed(verb, exc)
        finally:
            self._watchdog.disarm()
        metrics.child(metrics.UPSTREAM_COMMAND_SECONDS, verb).observe(time.perf_counter() - started)
        metrics.child(metrics.UPSTREAM_REPLIES, verb, metrics.reply_class(response.code)).inc()
        if response.code == 421:
            self._abort()
        return response

    async def mail(self, sender: str, params: dict[str, str | None]) -> Reply:
        await self._xforward()
        arg = b"FROM:<" + sender.encode("utf-8", "surrogateescape") + b">"
        response = await self._execute("MAIL", arg, *self._params(params))
        return from_upstream(response.code, response.message)

    async def rcpt(self, recipient: str, params: dict[str, str | None]) -> Reply:
        arg = b"TO:<" + recipient.encode("utf-8", "surrogateescape") + b">"
        response = await self._execute("RCPT", arg, *self._params(params))
        return from_upstream(response.code, response.message)

    @staticmethod
    def _params(params: dict[str, str | None]) -> list[bytes]:
        return [(k if v is None else f"{k}={v}").encode() for k, v in params.items()]

    async def data(self, content: bytes) -> Reply:
        if self._broken:
            raise UpstreamError("upstream session is no longer usable")
        started = time.perf_counter()
        # one deadline for DATA, the payload and the final reply (RFC 5321 4.5.3.2.6: 10 minutes)
        self._watchdog.arm(self.cfg.data_timeout)
        try:
            response = await self.client.data(content)
        except aiosmtplib.SMTPDataError as exc:
            metrics.child(metrics.UPSTREAM_REPLIES, "DATA", metrics.reply_class(exc.code)).inc()
            if exc.code == 421:
                self._abort()
            return from_upstream(exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            self._failed("DATA", exc)
        finally:
            self._watchdog.disarm()
        metrics.child(metrics.UPSTREAM_COMMAND_SECONDS, "DATA").observe(time.perf_counter() - started)
        metrics.child(metrics.UPSTREAM_REPLIES, "DATA", metrics.reply_class(response.code)).inc()
        return from_upstream(response.code, response.message)

    async def rset(self) -> None:
        if self._broken or not self.client.is_connected:
            return
        try:
            response = await self._execute("RSET")
        except UpstreamError:
            return
        if response.code != 250:
            self._abort()

    async def command(self, verb: str, arg: str | None) -> Reply:
        args = [arg.encode("utf-8", "surrogateescape")] if arg else []
        response = await self._execute(verb, *args)
        return from_upstream(response.code, response.message)

    async def close(self) -> None:
        if self._broken or not self.client.is_connected:
            self._abort()
            return
        self._watchdog.arm(5.0)  # a polite QUIT, not a long wait
        try:
            await self.client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            pass
        finally:
            self._abort()

    def _failed(self, verb: str, exc: BaseException) -> NoReturn:
        self._abort()
        timed_out = self._watchdog.expired or isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError)
        kind = "timeout" if timed_out else "disconnected"
        metrics.child(metrics.UPSTREAM_ERRORS, kind).inc()
        reason = "no answer within the timeout" if timed_out else type(exc).__name__
        raise UpstreamError(f"upstream {verb} failed: {reason}", kind) from None

    def _abort(self) -> None:
        self._watchdog.cancel()
        self._broken = True
        try:
            self.client.close()
        except Exception:
            log.debug("closing upstream transport failed", exc_info=True)


def describe(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__}
