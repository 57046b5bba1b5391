"""An in-process authoritative DNS fake on a UDP socket (own thread), for tests and benchmarks
that need exact control over answers: TTLs, SERVFAIL, silence. The integration tests use a real
nsd (`realservers.NSD`) instead."""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDNS:
    """Answers from `records` {(name, type): (ttl, [rdata text])}; `servfail`/`drop` name sets."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.seen: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            question = q.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rtype = dns.rdatatype.to_text(question.rdtype)
            self.seen.append((name, rtype))
            if name in self.drop:
                continue
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            if name in self.servfail:
                r.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rtype) in self.records:
                ttl, values = self.records[(name, rtype)]
                r.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", rtype, values))
            elif not any(n == name for n, _ in self.records):
                r.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(r.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()
