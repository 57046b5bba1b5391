"""The one exception hierarchy of smtpguard.

Invariant: lower-layer exceptions (aiosmtplib, dnspython, redis, yaml, pydantic) are translated
into these at the boundary of the module that calls the library; they never reach the client.
"""

from __future__ import annotations


class SmtpguardError(Exception):
    """Base class of every error smtpguard raises on purpose."""


class ConfigError(SmtpguardError):
    """A configuration or policy file is invalid. Carries `file:line: message` items."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(None, None, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class Problem:
    """One located problem in a file: rendered as `file:line: message` (like a compiler)."""

    __slots__ = ("file", "line", "message", "severity")

    def __init__(self, file: str | None, line: int | None, message: str, severity: str = "error") -> None:
        self.file = file
        self.line = line
        self.message = message
        self.severity = severity

    def render(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}{prefix}{self.message}"

    def __repr__(self) -> str:
        return f"Problem({self.render()!r})"


class ReplyError(SmtpguardError):
    """An SMTP reply value is invalid (code and enhanced code disagree, bad text)."""


class UpstreamError(SmtpguardError):
    """The upstream MTA could not be reached or dropped the session.

    `kind` is the metric label: connect, timeout, disconnected, tls or protocol."""

    def __init__(self, message: str, kind: str = "disconnected") -> None:
        super().__init__(message)
        self.kind = kind


class DNSError(SmtpguardError):
    """A DNS lookup failed temporarily (timeout, SERVFAIL, refused)."""


class StoreError(SmtpguardError):
    """The state store (memory or Redis) could not answer."""


class CheckError(SmtpguardError):
    """A check failed in an unexpected way; becomes the `<check>.error` outcome."""
