"""Guards for the aiosmtpd internals smtpguard relies on: these fail loudly on an upgrade."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from pathlib import Path

import aiosmtpd.smtp as smtp_module
from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, TLSSetupException


def test_pinned_version() -> None:
    assert version("aiosmtpd") == "1.4.6", "smtpguard overrides aiosmtpd internals: re-check them before upgrading"


def test_private_attributes_we_use_exist() -> None:
    instance = SMTP(object(), hostname="x", ident="y")
    for attr in ("_timeout_handle", "_tls_protocol", "_original_transport", "_handler_coroutine",
                 "_timeout_duration", "_handle_hooks", "_smtp_methods"):
        assert hasattr(instance, attr), attr
    for method in ("_reset_timeout", "_timeout_cb", "_handle_client", "smtp_STARTTLS", "connection_made",
                   "connection_lost", "eof_received", "push"):
        assert callable(getattr(SMTP, method)), method
    # _reader/_writer are set when the client connects
    assert "self._reader = reader" in inspect.getsource(SMTP._cb_client_connected)
    assert issubclass(TLSSetupException, Exception)
    assert inspect.iscoroutinefunction(get_proxy)


def test_streamreader_internals_readbuf_uses() -> None:
    """smtpguard/protocol/readbuf.py reads DATA from the StreamReader's buffer (no public peek)."""
    reader = asyncio.StreamReader(limit=10)
    assert isinstance(reader._buffer, bytearray) and reader._eof is False
    assert inspect.iscoroutinefunction(asyncio.StreamReader._wait_for_data)
    assert list(inspect.signature(asyncio.StreamReader._wait_for_data).parameters) == ["self", "func_name"]
    assert callable(reader._maybe_resume_transport)
    reader.feed_data(b"x" * 25)  # above 2 * limit: a transport would be paused
    assert reader._buffer == bytearray(b"x" * 25)
    source = inspect.getsource(asyncio.StreamReader._wait_for_data)
    assert "resume_reading" in source  # waiting resumes a paused transport
    assert "self._buffer" in inspect.getsource(asyncio.StreamReader.feed_data)


def test_starttls_uses_push_and_sslproto() -> None:
    source = inspect.getsource(SMTP.smtp_STARTTLS)
    assert "self.push('220 Ready to start TLS')" in source
    assert "sslproto.SSLProtocol" in source
    assert "_original_transport" in inspect.getsource(SMTP.connection_made)
    assert smtp_module.SMTP.line_length_limit == 1001


def test_guard_smtp_sets_every_attribute_smtp_init_sets() -> None:
    """GuardSMTP replaces SMTP.__init__ (to skip its per-connection introspection): it must
    still set up everything the real one does."""
    from smtpguard.config import Config
    from smtpguard.policy.verdict import NoPolicy
    from smtpguard.protocol.context import ListenerContext, ProxyContext
    from smtpguard.protocol.server import GuardSMTP
    from smtpguard.upstream.maildir import MaildirUpstream

    async def build() -> tuple[set[str], set[str]]:
        real = SMTP(object(), hostname="x", ident="y")
        config = Config()
        proxy = ProxyContext(config=config, gate=NoPolicy(), upstream=MaildirUpstream(Path("/nonexistent")),
                             hostname="x", authserv_id="x")
        ours = GuardSMTP(ListenerContext.build(proxy, config.listeners[0], None))
        return set(vars(real)), set(vars(ours))

    real_attrs, our_attrs = asyncio.run(build())
    assert real_attrs <= our_attrs, real_attrs - our_attrs
