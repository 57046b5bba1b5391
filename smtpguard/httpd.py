"""The metrics listener: `/metrics`, `/healthz`, `/readyz` on a small asyncio HTTP server.

- `/healthz`: 200 while the process runs its event loop (liveness).
- `/readyz`: 200 when every listener is up, a policy is loaded, and the upstream answered a
  probe within `upstream.ready_grace` (so a short upstream blip does not make Kubernetes pull
  every pod out of the Service at once); 503 with the reasons otherwise.
- `/metrics`: the Prometheus text exposition of `smtpguard.metrics`.
Requests are tiny GETs; anything else gets 404/405. No request can block the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtpguard import metrics

log = logging.getLogger("smtpguard.httpd")


class HealthServer:
    def __init__(self, ready: Callable[[], list[str]]) -> None:
        self.ready = ready
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                problems = self.ready()
                if problems:
                    status, ctype, body = "503 Service Unavailable", "text/plain", ("\n".join(problems) + "\n").encode()
                else:
                    status, ctype, body = "200 OK", "text/plain", b"ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
