"""The inbound SMTP side: framing (pure), address parsing (pure), the aiosmtpd subclass (I/O)."""
