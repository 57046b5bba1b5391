"""The built-in upstream of the embedded default: accepted mail goes into a local Maildir.

Lets a newcomer try smtpguard with swaks and no MTA. Every recipient is accepted (policy has
already run); each message is written to `tmp/`, fsynced and renamed into `new/` (the Maildir
atomic-delivery rule), off the event loop. A write failure is a 451 4.3.0, never a 250.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from smtpguard.reply import Reply
from smtpguard.upstream import ClientIdentity

_counter = itertools.count()


class MaildirUpstream:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"maildir:{directory}"
        self.known_extensions: frozenset[str] | None = frozenset(
            {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN"})

    def ensure_dirs(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    async def open(self, identity: ClientIdentity) -> MaildirSession:
        await asyncio.to_thread(self.ensure_dirs)
        return MaildirSession(self, identity)

    async def probe(self) -> bool:
        try:
            await asyncio.to_thread(self.ensure_dirs)
        except OSError:
            return False
        return os.access(self.directory / "new", os.W_OK)


class MaildirSession:
    def __init__(self, upstream: MaildirUpstream, identity: ClientIdentity) -> None:
        self.upstream = upstream
        self.identity = identity
        self.extensions = upstream.known_extensions or frozenset()
        self.sender: str | None = None
        self.recipients: list[str] = []

    @property
    def usable(self) -> bool:
        return True

    async def mail(self, sender: str, params: dict[str, str | None]) -> Reply:
        self.sender, self.recipients = sender, []
        return Reply(250, "2.1.0", "Ok")

    async def rcpt(self, recipient: str, params: dict[str, str | None]) -> Reply:
        self.recipients.append(recipient)
        return Reply(250, "2.1.5", "Ok")

    async def data(self, content: bytes) -> Reply:
        if self.sender is None or not self.recipients:
            return Reply(503, "5.5.1", "Bad sequence of commands")
        header = (
            f"Return-Path: <{self.sender}>\r\n"
            f"X-Smtpguard-Delivered-To: {', '.join(self.recipients)}\r\n"
        ).encode("utf-8", "surrogateescape")
        try:
            name = await asyncio.to_thread(self._write, header + content)
        except OSError:
            return Reply(451, "4.3.0", "Local delivery failed, try again later")
        self.sender, self.recipients = None, []
        return Reply(250, "2.0.0", f"Ok: delivered as {name}")

    def _write(self, data: bytes) -> str:
        self.upstream.ensure_dirs()
        name = f"{time.time_ns()}.{os.getpid()}_{next(_counter)}.{socket.gethostname()}"
        tmp = self.upstream.directory / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.upstream.directory / "new" / name)
        directory = os.open(self.upstream.directory / "new", os.O_RDONLY)
        try:  # the rename itself must survive a crash before we say 250
            os.fsync(directory)
        finally:
            os.close(directory)
        return name

    async def rset(self) -> None:
        self.sender, self.recipients = None, []

    async def command(self, verb: str, arg: str | None) -> Reply:
        return Reply(502, "5.5.1", "Command not implemented")

    async def close(self) -> None:
        return None
