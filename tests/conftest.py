"""Shared pytest fixtures: real servers from :mod:`realservers` (Postfix, nsd, redis, Prometheus).

* ``postfix`` is ONE instance for the whole session: use unique subjects/recipients and find your
  message with ``postfix.wait_message(user, b"Subject: <unique>")``. Tests that stop/restart
  Postfix or change its configuration start their own with ``Postfix.start(tmp_workdir / ...)``.
* ``nsd_factory(zones)``, ``redis_server``, ``prometheus_factory(targets)``, ``smtp_sink`` and
  ``silent_nameserver`` are per test and stopped after it.
* Tests under ``tests/integration`` get the ``integration`` marker (``-m "not integration"``
  runs only the fast ones).
* A missing server binary is a test FAILURE when ``CI`` is set (``CI=true``, as ``.ci/run`` is
  run); locally it is a skip whose message names the binary and ``scripts/setup.sh``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realservers import (
    NSD,
    MissingBinary,
    Postfix,
    Prometheus,
    Redis,
    SilentUDP,
    SmtpSink,
    find_binary,
)

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_binary(name: str) -> NoReturn:
    """Fail in CI, skip (with a clear reason) elsewhere."""
    msg = f"required binary {name!r} is not installed (run scripts/setup.sh as root)"
    if in_ci():
        pytest.fail(f"{msg}; CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(msg)


def require_binaries(*names: str) -> None:
    """Call at the top of a test/fixture that shells out to ``names`` directly."""
    for name in names:
        if find_binary(name) is None:
            missing_binary(name)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout sends SIGTERM: turn it into an interrupt so fixture teardown and the atexit
    # net of realservers stop every daemon instead of leaving them running.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.path)).resolve().is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tmp_workdir() -> Iterator[Path]:
    """A session-wide scratch dir, mode 0755 (Postfix's users must traverse it).

    Removed at the end unless ``SMTPGUARD_KEEP_WORKDIR=1`` (then its path is printed).
    """
    path = Path(tempfile.mkdtemp(prefix="smtpguard-it-"))
    path.chmod(0o755)
    yield path
    if os.environ.get("SMTPGUARD_KEEP_WORKDIR") == "1":
        print(f"\nkept test work dir: {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix(tmp_workdir: Path) -> Iterator[Postfix]:
    """The shared private Postfix (mailboxes alice, bob, postmaster @ example.test)."""
    try:
        pf = Postfix.start(tmp_workdir / "postfix")
    except MissingBinary as exc:
        missing_binary(exc.name)
    with pf:
        yield pf


@pytest.fixture
def nsd_factory(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str]], NSD]]:
    """``nsd_factory({"example.test": zone_text, ...})`` -> a running :class:`NSD`."""
    started: list[NSD] = []

    def make(zones: Mapping[str, str], port: int | None = None) -> NSD:
        try:
            ns = NSD.start(tmp_path / f"nsd{len(started)}", zones, port=port)
        except MissingBinary as exc:
            missing_binary(exc.name)
        started.append(ns)
        return ns

    yield make
    for ns in started:
        ns.stop()


@pytest.fixture
def silent_nameserver() -> Iterator[SilentUDP]:
    """A UDP port on 127.0.0.1 that never answers (DNS timeouts / temperror tests)."""
    with SilentUDP() as s:
        yield s


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A fresh redis-server; ``.url``, ``.kill()``, ``.start_again()``."""
    try:
        r = Redis.start(tmp_path / "redis")
    except MissingBinary as exc:
        missing_binary(exc.name)
    with r:
        yield r


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``prometheus_factory(["127.0.0.1:PORT"], rule_files=[...])`` -> a running Prometheus."""
    started: list[Prometheus] = []

    def make(targets: Sequence[str], rule_files: Sequence[Path] = (),
             scrape_interval: str = "1s") -> Prometheus:
        try:
            p = Prometheus.start(tmp_path / f"prom{len(started)}", targets, rule_files,
                                 scrape_interval)
        except MissingBinary as exc:
            missing_binary(exc.name)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """Postfix's smtp-sink (accepts and discards everything; ``.count()`` messages)."""
    try:
        sink = SmtpSink.start(tmp_path / "sink")
    except MissingBinary as exc:
        missing_binary(exc.name)
    with sink:
        yield sink
