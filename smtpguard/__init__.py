"""smtpguard: an SMTP policy proxy in front of a real MTA."""

from __future__ import annotations

__version__ = "0.1.0"
