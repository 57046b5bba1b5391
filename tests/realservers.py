"""Real servers for integration tests and benchmarks: Postfix, nsd, redis, Prometheus, smtp-sink.

Every helper starts the REAL daemon (installed by ``scripts/setup.sh``) on a free loopback port
inside a work directory of its own, waits on a readiness *condition* (a banner, a DNS answer, a
PONG, ``/-/ready``) instead of sleeping, and stops it by PID -- also when start-up fails, and, as a
last resort, from an :mod:`atexit` hook that SIGKILLs whatever is still registered.

Recipes and the reasons behind each setting: ``../shared/notes/tooling.md`` sections 2 and 6.

Typical use::

    with Postfix.start(workdir) as pf:
        smtplib.SMTP(pf.host, pf.port).sendmail("s@client.test", ["alice@example.test"], msg)
        [raw] = pf.wait_messages("alice", 1)

A missing binary raises :class:`MissingBinary` (``tests/conftest.py`` turns it into a skip
locally and a failure when ``CI=true``); a daemon that dies or never becomes ready raises
:class:`ServerError` carrying the tail of its log.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "NSD",
    "Daemon",
    "MissingBinary",
    "Postfix",
    "Prometheus",
    "Redis",
    "ServerError",
    "SilentUDP",
    "SmtpSink",
    "find_binary",
    "free_port",
    "silent_udp_port",
    "smtp_ready",
    "tcp_accepts",
    "wait_for",
]

HOST = "127.0.0.1"
T = TypeVar("T")

# Where Debian puts the daemons; /usr/sbin is not on PATH for every user/CI shell.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/lib/postfix/sbin")


class MissingBinary(RuntimeError):
    """A required executable is not installed (``scripts/setup.sh`` installs all of them)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}; "
                         "run scripts/setup.sh (as root) to install the test servers")
        self.name = name


class ServerError(RuntimeError):
    """A server failed to start, died, or rejected its configuration; the message has its log."""


# ---------------------------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------------------------

def find_binary(name: str) -> str | None:
    """Absolute path of executable ``name`` (PATH first, then the usual sbin dirs), or None."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(_EXTRA_BIN_DIRS))


def _require(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise MissingBinary(name)
    return path


def free_port() -> int:
    """A TCP *and* UDP port on 127.0.0.1 that is free right now (the OS picks it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise OSError("could not find a port free for both TCP and UDP on 127.0.0.1")


def wait_for(predicate: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Exceptions raised by the predicate propagate at once (use that to fail fast, e.g. when the
    daemon died). Raises ``TimeoutError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def tcp_accepts(port: int, host: str = HOST) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def smtp_ready(port: int, host: str = HOST) -> bool:
    """True if host:port greets with a ``220 `` banner (then QUITs politely)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            banner = s.recv(512)
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
    except OSError:
        return False
    return banner.startswith(b"220 ")


def _tcp_port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _udp_port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (zombies of non-children are never reaped here)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _ensure_traversable(path: Path) -> None:
    """Add o+x to ``path`` and its ancestors where missing.

    Postfix's daemons (user ``postfix``) and virtual(8) (user ``nobody``) must be able to reach
    the private instance's directories; pytest's own temp dirs are 0700.
    """
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IXOTH)


# Every process started here, pid -> kill its whole process group?  Emptied by stop(); whatever is
# left when the interpreter exits (a test crashed between start and stop) is SIGKILLed.
_LIVE: dict[int, bool] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, group in list(_LIVE.items()):
        with contextlib.suppress(OSError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    _LIVE.clear()


def _terminate(pid: int, *, group: bool, popen: subprocess.Popen[bytes] | None = None,
               sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` to pid (or its process group), wait until gone, escalate to SIGKILL."""

    def gone() -> bool:
        if popen is not None:
            return popen.poll() is not None
        return not _pid_alive(pid)

    def send(s: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, s)
            else:
                os.kill(pid, s)

    try:
        if not gone():
            send(sig)
            try:
                wait_for(gone, timeout=timeout, what=f"pid {pid} to exit")
            except TimeoutError:
                send(signal.SIGKILL)
                wait_for(gone, timeout=5.0, what=f"pid {pid} to exit after SIGKILL")
        if group:  # children that outlived their leader (e.g. nsd's server child)
            send(signal.SIGKILL)
    finally:
        _LIVE.pop(pid, None)


class Daemon:
    """Any daemon run in the foreground as our child, in its own session, output to ``log``.

    Public so tests and benchmarks can run smtpguard itself the same way::

        d = Daemon([sys.executable, "-m", "smtpguard", "serve", ...], workdir / "sg.log", "smtpguard")
        d.wait_ready(lambda: smtp_ready(port), timeout=20, what="smtpguard banner")
        ...
        d.stop()    # SIGTERM to its process group, SIGKILL after 10 s; atexit net as well
    """

    def __init__(self, argv: Sequence[str], log: Path, what: str, cwd: Path | None = None) -> None:
        self.what = what
        self.log = log
        with open(log, "ab") as out:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True)
        _LIVE[self.popen.pid] = True

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise ServerError with the log tail if the process has exited."""
        if not self.alive():
            _LIVE.pop(self.pid, None)
            raise ServerError(f"{self.what} exited with status {self.popen.returncode}; "
                              f"log {self.log}:\n{_tail(self.log)}")

    def wait_ready(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``ready`` (failing fast if the process dies); on any failure stop the process."""

        def probe() -> object:
            self.check_alive()
            return ready()

        try:
            wait_for(probe, timeout=timeout, what=what)
        except TimeoutError as exc:
            self.stop()
            raise ServerError(f"{exc}; log {self.log}:\n{_tail(self.log)}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _terminate(self.pid, group=True, popen=self.popen, sig=sig)


class _Server(abc.ABC):
    """Context-manager plumbing shared by all servers: ``with X.start(...) as x:`` stops x."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and wait until it is gone (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Postfix: private instance as the upstream MTA
# ---------------------------------------------------------------------------------------------

_MASTER_CF = """\
{host}:{port} inet n  -  n  -  -  smtpd
pickup    unix  n       -  n  60 1  pickup
cleanup   unix  n       -  n  -  0  cleanup
qmgr      unix  n       -  n  300 1 qmgr
tlsmgr    unix  -       -  n  1000? 1 tlsmgr
rewrite   unix  -       -  n  -  -  trivial-rewrite
bounce    unix  -       -  n  -  0  bounce
defer     unix  -       -  n  -  0  bounce
trace     unix  -       -  n  -  0  bounce
verify    unix  -       -  n  -  1  verify
flush     unix  n       -  n  1000? 0 flush
proxymap  unix  -       -  n  -  -  proxymap
smtp      unix  -       -  n  -  -  smtp
relay     unix  -       -  n  -  -  smtp
showq     unix  n       -  n  -  -  showq
error     unix  -       -  n  -  -  error
retry     unix  -       -  n  -  -  error
discard   unix  -       -  n  -  -  discard
virtual   unix  -       n  n  -  -  virtual
anvil     unix  -       -  n  -  1  anvil
scache    unix  -       -  n  -  1  scache
postlog   unix-dgram n  -  n  -  1  postlogd
"""


class Postfix(_Server):
    """A private Postfix instance (own config, queue and Maildirs under ``workdir``).

    Accepts mail for ``mailboxes`` @ ``domain`` and delivers each to ``workdir/maildir/<user>/``;
    unknown users of ``domain`` get ``550 5.1.1``, other domains ``554 5.7.1 Relay access
    denied``; nothing is ever sent out. XCLIENT and XFORWARD are authorised from 127.0.0.0/8.
    ``smtpd_forbid_bare_newline`` is left at Postfix's default (``no`` on 3.7.11).
    Layout: ``etc/main.cf``, ``etc/master.cf``, ``spool/``, ``data/``, ``maildir/``, ``maillog``.
    """

    host = HOST

    def __init__(self, workdir: Path, port: int, domain: str, mailboxes: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.port = port
        self.domain = domain
        self.mailboxes = mailboxes
        self.etc = workdir / "etc"
        self.maildir = workdir / "maildir"
        self.log_path = workdir / "maillog"
        self._master_pid: int | None = None

    @classmethod
    def start(cls, workdir: Path, port: int | None = None,
              mailboxes: Iterable[str] = ("alice", "bob", "postmaster"),
              domain: str = "example.test",
              main_cf_extra: Mapping[str, str] | None = None) -> Postfix:
        """Write the instance's configuration into ``workdir`` and start it; wait for its banner."""
        _require("postfix")
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        pf = cls(workdir, port or free_port(), domain, tuple(mailboxes))
        pf._configure(dict(main_cf_extra or {}))
        # (no separate `postfix check`: `start` runs the same checks, saving ~0.5 s)
        pf._launch()
        return pf

    # -- configuration ------------------------------------------------------------------------

    def main_cf(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The main.cf settings (``extra`` overrides/extends them)."""
        w = self.workdir
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(w / "spool"),
            "data_directory": str(w / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(w),
            "myhostname": f"mx.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$mydomain",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
            "default_transport": "error:5.7.1 outbound delivery disabled in tests",
            "relay_transport": "error:5.7.1 outbound delivery disabled in tests",
            "smtp_dns_support_level": "disabled",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP upstream-test",
            "smtputf8_enable": "yes",
            "message_size_limit": "10240000",
            "biff": "no",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.maildir),
            "virtual_mailbox_maps": f"texthash:{self.etc / 'vmailbox'}",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
        }
        cf.update(extra or {})
        return cf

    def _configure(self, extra: dict[str, str]) -> None:
        w = self.workdir
        for sub in ("etc", "spool", "data", "maildir"):
            (w / sub).mkdir(exist_ok=True)
        _ensure_traversable(w)
        shutil.chown(w / "data", user="postfix")
        shutil.chown(self.maildir, user="nobody", group="nogroup")
        (self.etc / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.main_cf(extra).items()))
        (self.etc / "master.cf").write_text(_MASTER_CF.format(host=self.host, port=self.port))
        (self.etc / "vmailbox").write_text(
            "".join(f"{u}@{self.domain} {u}/\n" for u in self.mailboxes))

    def _postfix(self, *args: str) -> str:
        """Run ``postfix -c etc ARGS`` under a pty (Postfix only prints to a terminal)."""
        argv = [_require("postfix"), "-c", str(self.etc), *args]
        script = find_binary("script")
        if script:
            argv = [script, "-eqc", shlex.join(argv), "/dev/null"]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                              check=False)
        out = (proc.stdout + proc.stderr).decode(errors="replace").replace("\r\n", "\n")
        if proc.returncode != 0 or "fatal:" in out:
            raise ServerError(f"`postfix {' '.join(args)}` failed (rc {proc.returncode}):\n{out}\n"
                              f"maillog {self.log_path}:\n{_tail(self.log_path)}")
        return out

    # -- lifecycle ----------------------------------------------------------------------------

    def _read_master_pid(self) -> int | None:
        """The pid in master.pid if that process is alive (a stale file gives None)."""
        try:
            pid = int((self.workdir / "spool" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _launch(self) -> None:
        if not _tcp_port_bindable(self.port):
            raise ServerError(f"port {self.port} is already in use; cannot start Postfix")
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._postfix("start")
        except BaseException:
            if (stray := self._read_master_pid()) is not None:  # started, then reported a fatal
                _terminate(stray, group=True)
            raise
        try:
            pid = wait_for(self._read_master_pid, timeout=20, what="Postfix master.pid")
            self._master_pid = pid
            _LIVE[pid] = True  # master calls setsid(): pid == its process group

            def ready() -> bool:
                if not _pid_alive(pid):
                    raise ServerError(f"Postfix master {pid} died; maillog:\n{self.maillog()}")
                return smtp_ready(self.port, self.host)

            wait_for(ready, timeout=20, what=f"Postfix 220 banner on {self.host}:{self.port}")
            # Daemons die on bad settings only when first used: the banner probe used smtpd.
            fatal = self.error_lines(since=log_start)
            if fatal:
                raise ServerError("Postfix logged errors at start-up:\n" + "\n".join(fatal))
        except TimeoutError as exc:
            self.stop()
            raise ServerError(f"{exc}; maillog:\n{_tail(self.log_path)}") from None
        except BaseException:
            self.stop()
            raise

    @property
    def master_pid(self) -> int | None:
        """PID of the running master process (None when stopped)."""
        return self._master_pid

    def stop(self) -> None:
        """SIGTERM the master (it stops its children); wait until it is gone and the port free."""
        pid, self._master_pid = self._master_pid, None
        if pid is not None:
            _terminate(pid, group=True)
        wait_for(lambda: _tcp_port_bindable(self.port), timeout=10,
                 what=f"Postfix port {self.port} to be released")

    def start_again(self) -> None:
        """Start the stopped instance again, same configuration, same port, same Maildirs."""
        if self._master_pid is not None:
            raise ServerError("Postfix is still running")
        self._launch()

    # -- what was delivered -------------------------------------------------------------------

    def messages(self, user: str) -> list[bytes]:
        """Raw messages delivered to ``user`` so far (Maildir new/ and cur/), oldest first."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir / user / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_messages(self, user: str, n: int, timeout: float = 20) -> list[bytes]:
        """Wait until ``user`` has at least ``n`` messages and return all of them."""
        try:
            return wait_for(lambda: (m if len(m := self.messages(user)) >= n else None),
                            timeout=timeout, what=f"{n} message(s) in {user}'s Maildir")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; maillog tail:\n{_tail(self.log_path)}") from None

    def wait_message(self, user: str, contains: bytes, timeout: float = 20) -> bytes:
        """Wait for a message to ``user`` containing ``contains`` (e.g. a unique Subject) and
        return it; the way to find one's own message in the shared session instance."""

        def find() -> bytes | None:
            return next((m for m in self.messages(user) if contains in m), None)

        try:
            return wait_for(find, timeout=timeout, what=f"a message with {contains!r} for {user}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; maillog tail:\n{_tail(self.log_path)}") from None

    def error_lines(self, since: int = 0) -> list[str]:
        """``error:``/``fatal:``/``panic:`` lines of the maillog (from byte offset ``since``)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(error|fatal|panic): ", line)]

    def maillog(self) -> str:
        """The instance's whole log (``maillog_file``)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# ---------------------------------------------------------------------------------------------
# nsd: authoritative DNS
# ---------------------------------------------------------------------------------------------

_ZONE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class NSD(_Server):
    """nsd serving the given zones on 127.0.0.1:``port`` (UDP and TCP).

    ``zones`` maps a zone name ("example.test") to the text of its zone file; every zone is
    checked with ``nsd-checkzone`` first (:class:`ServerError` with its output on error).
    Point a resolver at it with :meth:`resolver` or ``nameservers=[host], port=port``.
    """

    host = HOST

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "nsd.log"
        self.zones: dict[str, str] = {}
        self._child: Daemon | None = None

    @classmethod
    def start(cls, workdir: Path, zones: Mapping[str, str], port: int | None = None) -> NSD:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ns = cls(workdir, port or free_port())
        ns._write(zones)
        ns._launch()
        return ns

    def _write(self, zones: Mapping[str, str]) -> None:
        checkzone = _require("nsd-checkzone")
        conf = [
            "server:",
            f"    ip-address: {self.host}@{self.port}",
            "    do-ip6: no",
            "    server-count: 1",
            '    username: ""',
            '    chroot: ""',
            f'    zonesdir: "{self.workdir}"',
            '    database: ""',
            f'    zonelistfile: "{self.workdir}/zone.list"',
            f'    xfrdfile: "{self.workdir}/xfrd.state"',
            f'    xfrdir: "{self.workdir}"',
            f'    pidfile: "{self.workdir}/nsd.pid"',
            f'    logfile: "{self.log_path}"',
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: no",
        ]
        for name, text in zones.items():
            zone = name.rstrip(".")
            if not _ZONE_NAME.match(zone):
                raise ValueError(f"bad zone name {name!r}")
            path = self.workdir / f"{zone}.zone"
            path.write_text(text if text.endswith("\n") else text + "\n")
            res = subprocess.run([checkzone, zone, str(path)], capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise ServerError(f"nsd-checkzone {zone} failed:\n{res.stdout}{res.stderr}")
            conf += ["zone:", f"    name: {zone}", f"    zonefile: {path.name}"]
        conf_path = self.workdir / "nsd.conf"
        conf_path.write_text("\n".join(conf) + "\n")
        res = subprocess.run([_require("nsd-checkconf"), str(conf_path)], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            raise ServerError(f"nsd-checkconf failed:\n{res.stdout}{res.stderr}")
        self.zones = dict(zones)

    def _answers(self) -> bool:
        """True once nsd answers a UDP query (any rcode)."""
        import dns.exception
        import dns.message
        import dns.query

        zone = next(iter(self.zones), "example.test").rstrip(".") + "."
        try:
            dns.query.udp(dns.message.make_query(zone, "SOA"), self.host, port=self.port,
                          timeout=0.3)
        except (OSError, dns.exception.Timeout):
            return False
        return True

    def _launch(self) -> None:
        if not (_udp_port_bindable(self.port) and _tcp_port_bindable(self.port)):
            raise ServerError(f"port {self.port} is already in use; cannot start nsd")
        self._child = Daemon([_require("nsd"), "-d", "-c", str(self.workdir / "nsd.conf")],
                             self.workdir / "nsd.stdout", "nsd")
        self._child.wait_ready(self._answers, timeout=20,
                               what=f"nsd to answer on {self.host}:{self.port}")

    def resolver(self, timeout: float = 2.0) -> Any:
        """A ``dns.resolver.Resolver`` that asks only this server (no caching)."""
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.timeout = r.lifetime = timeout
        return r

    def reload(self, zones: Mapping[str, str]) -> None:
        """Replace the served zones (all of them): restart on the same port with the new files."""
        self.stop()
        self._write(zones)
        self._launch()

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None
            wait_for(lambda: _udp_port_bindable(self.port), timeout=10,
                     what=f"nsd port {self.port} to be released")


class SilentUDP(_Server):
    """A bound UDP socket on 127.0.0.1 that never reads or answers: a nameserver that times out.

    (An unbound port would answer with ICMP port-unreachable, i.e. an immediate error, not a
    timeout.) Keep the object alive as long as the test needs it; ``close()``/``stop()`` frees it.
    """

    host = HOST

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((HOST, 0))
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    def stop(self) -> None:
        self.close()


def silent_udp_port() -> SilentUDP:
    """Start a :class:`SilentUDP` (use its ``.port``; ``close()`` it when done)."""
    return SilentUDP()


# ---------------------------------------------------------------------------------------------
# redis
# ---------------------------------------------------------------------------------------------

class Redis(_Server):
    """redis-server on 127.0.0.1:``port``, no persistence (a restart starts empty)."""

    host = HOST

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "redis.log"
        self._child: Daemon | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, port: int | None = None) -> Redis:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        r = cls(workdir, port or free_port())
        r._launch()
        return r

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _launch(self) -> None:
        if not _tcp_port_bindable(self.port):
            raise ServerError(f"port {self.port} is already in use; cannot start redis")
        argv = [_require("redis-server"), "--bind", self.host, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--dir", str(self.workdir), "--daemonize", "no"]
        self._child = Daemon(argv, self.log_path, "redis-server")
        self._child.wait_ready(self._pong, timeout=20, what=f"redis PONG on port {self.port}")

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self._child is not None:
            self._child.stop()
            self._child = None

    def kill(self) -> None:
        """SIGKILL (a crash, for failure tests) and wait until the port is closed."""
        if self._child is not None:
            self._child.stop(sig=signal.SIGKILL)
            self._child = None
        wait_for(lambda: not tcp_accepts(self.port), timeout=10, what="redis port to close")

    def start_again(self) -> None:
        """Start again on the same port (empty: no persistence)."""
        if self._child is not None:
            raise ServerError("redis is still running")
        self._launch()


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------

class Prometheus(_Server):
    """A Prometheus server scraping ``targets`` ("host:port") as job ``job`` every interval."""

    host = HOST

    def __init__(self, workdir: Path, port: int, targets: list[str]) -> None:
        self.workdir = workdir
        self.port = port
        self.targets = targets
        self.log_path = workdir / "prometheus.log"
        self._child: Daemon | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(cls, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path] = (),
              scrape_interval: str = "1s", port: int | None = None,
              job: str = "smtpguard") -> Prometheus:
        prom = _require("prometheus")
        workdir = Path(workdir).resolve()
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        p = cls(workdir, port or free_port(), list(targets))
        config = {  # JSON is YAML
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        cfg = workdir / "prometheus.yml"
        cfg.write_text(json.dumps(config, indent=2) + "\n")
        promtool = find_binary("promtool")
        if promtool:
            res = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True,
                                 text=True, check=False)
            if res.returncode != 0:
                raise ServerError(f"promtool check config failed:\n{res.stdout}{res.stderr}")
        p._child = Daemon([prom, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
                           f"--web.listen-address={p.host}:{p.port}"],
                          p.log_path, "prometheus")
        p._child.wait_ready(lambda: p._get("/-/ready", check=False) is not None, timeout=60,
                            what=f"Prometheus /-/ready on port {p.port}")
        return p

    def _get(self, path: str, check: bool = True) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                body: bytes = resp.read()
                return body
        except OSError:
            if check:
                raise
            return None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its ``data`` (raises ServerError unless success)."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            body = self._get(f"/api/v1/{path}{query}")
        except urllib.error.HTTPError as exc:  # 400/422 carry the error JSON
            body = exc.read()
        doc = json.loads(body or b"{}")
        if doc.get("status") != "success":
            raise ServerError(f"Prometheus API {path} {params}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (vector: ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_query(self, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result."""
        return wait_for(lambda: self.query(expr), timeout=timeout, interval=0.2,
                        what=f"PromQL {expr!r} to return data")

    def wait_for_target_up(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped with health "up"; returns them.

        (``/-/ready`` comes about 5 s before the first target is even listed.)
        """

        def up() -> list[dict[str, Any]] | None:
            self._child.check_alive() if self._child else None
            active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
            ok = len(active) >= len(self.targets) and all(t["health"] == "up" for t in active)
            return active if ok else None

        return wait_for(up, timeout=timeout, interval=0.2, what=f"targets {self.targets} up")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None


# ---------------------------------------------------------------------------------------------
# smtp-sink: a fast SMTP server that throws mail away and counts it (benchmarks)
# ---------------------------------------------------------------------------------------------

_SINK_MESG = re.compile(rb"mesg=(\d+)")


class SmtpSink(_Server):
    """Postfix's ``smtp-sink -c`` on 127.0.0.1:``port``; :meth:`count` = messages received."""

    host = HOST

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / f"smtp-sink-{port}.out"
        self._child: Daemon | None = None

    @classmethod
    def start(cls, workdir: Path, port: int | None = None, backlog: int = 1024,
              extra_args: Sequence[str] = ()) -> SmtpSink:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        sink = cls(workdir, port or free_port())
        argv = [_require("smtp-sink"), "-c", "-m", "1024"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [*extra_args, f"{sink.host}:{sink.port}", str(backlog)]
        sink._child = Daemon(argv, sink.log_path, "smtp-sink")
        # the probe connection counts as a session, never as a message
        sink._child.wait_ready(lambda: tcp_accepts(sink.port), timeout=20,
                               what=f"smtp-sink on port {sink.port}")
        return sink

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def check_alive(self) -> None:
        """Raise ServerError (exit status and output tail) if smtp-sink has died."""
        if self._child is None:
            raise ServerError("smtp-sink is stopped")
        self._child.check_alive()

    def count(self) -> int:
        """Messages received so far (smtp-sink's running ``mesg=`` counter; 0 before any)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                data = f.read()
        except FileNotFoundError:
            return 0
        found = _SINK_MESG.findall(data)
        return int(found[-1]) if found else 0

    def wait_count(self, n: int, timeout: float = 10) -> int:
        """Wait until the counter reaches ``n`` and return it (it may overshoot)."""
        return wait_for(lambda: (c if (c := self.count()) >= n else None), timeout=timeout,
                        what=f"smtp-sink to count {n} messages (has {self.count()})")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None
