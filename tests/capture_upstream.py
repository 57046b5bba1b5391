"""A byte-capturing fake upstream MTA for smuggling tests (field survey §4 R10).

It speaks just enough SMTP (EHLO/MAIL/RCPT/DATA/RSET/QUIT, strict CRLF framing) and records
every byte it receives per connection, and every message it accepted (the raw, still
dot-stuffed DATA payload). Runs in a thread on a free loopback port. The real-Postfix tests
complement it: this one sees exactly what smtpguard put on the wire.

`stall` makes it stop answering at one point, for the upstream-timeout tests: "banner" (accept
the connection, never greet), "MAIL" (no reply to MAIL FROM), "EOD" (read the whole message,
never answer the end of data) or "DATA_NOREAD" (answer 354, then stop reading: with a 4 KB
receive buffer the sender's writes soon block). A stalled connection is held open until
smtpguard closes it (or, for DATA_NOREAD, until `close()`).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class Capture:
    raw: list[bytes] = field(default_factory=list)  # everything received, per connection
    messages: list[bytes] = field(default_factory=list)  # DATA payloads incl. the final ".\r\n"
    stalled: int = 0  # connections that reached the stall point
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    capture: Capture
    stall: str | None

    def _hold(self) -> None:
        """Say nothing more; wait until the peer hangs up."""
        with self.capture.lock:
            self.capture.stalled += 1
        while self.rfile.readline(100000):
            pass

    def handle(self) -> None:
        received = bytearray()
        with self.capture.lock:
            self.capture.raw.append(b"")
            index = len(self.capture.raw) - 1

        def record(data: bytes) -> None:
            received.extend(data)
            with self.capture.lock:
                self.capture.raw[index] = bytes(received)

        if self.stall == "banner":
            self._hold()
            return
        self.wfile.write(b"220 capture.test ESMTP\r\n")
        while True:
            line = self.rfile.readline(100000)
            if not line:
                return
            record(line)
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250-capture.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"DATA" and self.stall == "DATA_NOREAD":
                self.wfile.write(b"354 go\r\n")
                self.wfile.flush()
                with self.capture.lock:
                    self.capture.stalled += 1
                self.capture.closing.wait(120)  # read nothing more until the test ends
                return
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                payload = bytearray()
                while True:
                    chunk = self.rfile.readline(1000000)
                    if not chunk:
                        return
                    record(chunk)
                    payload += chunk
                    if chunk == b".\r\n" and (len(payload) == 3 or payload[-5:-3] == b"\r\n"):
                        break
                with self.capture.lock:
                    self.capture.messages.append(bytes(payload))
                if self.stall == "EOD":
                    self._hold()
                    return
                self.wfile.write(b"250 2.0.0 Ok: captured\r\n")
            elif verb == b"MAIL" and self.stall == "MAIL":
                self._hold()
                return
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 2.0.0 Ok\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class CaptureUpstream:
    def __init__(self, stall: str | None = None) -> None:
        if stall not in (None, "banner", "MAIL", "EOD", "DATA_NOREAD"):
            raise ValueError(f"unknown stall point {stall!r}")
        self.capture = Capture()
        handler = type("Handler", (_Handler,), {"capture": self.capture, "stall": stall})
        self.server = _Server(("127.0.0.1", 0), handler, bind_and_activate=False)
        if stall == "DATA_NOREAD":  # accepted sockets inherit it: a tiny window, writes block soon
            self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server.server_bind()
        self.server.server_activate()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.capture.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def alive(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False
