"""Benchmark harness: Postfix ``smtp-source`` -> [proxy] -> ``smtp-sink -c``, all on loopback.

Method (as in ``../shared/notes/performance.md``): every run sends ``count`` messages of one 2 KB
body each, one message per SMTP session (``smtp-source`` without ``-d``), ``concurrency``
sessions in parallel (``-s``). A run counts only if ``smtp-source`` exits 0 AND the sink's
counter grew by exactly ``count`` (otherwise :class:`BenchError`). Throughput is count / wall
time of ``smtp-source``; the proxy's CPU is utime+stime from ``/proc/PID/stat`` of the proxy
process and its descendants, sampled right before and after the run. Results are medians over
rounds; compare ratios measured in the same run (absolute numbers swing +-20 % on these boxes).

Library use::

    sink = SmtpSink.start(workdir)
    target = Target("direct", sink.port)                       # no proxy: no CPU figure
    result = measure(target, sink, concurrency=10, count=1000, rounds=3)
    print(result.msgs_per_s, result.cpu_ms_per_msg)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realservers import ServerError, SmtpSink, find_binary

_CLK_TCK = os.sysconf("SC_CLK_TCK")

MESSAGE_BYTES = 2048
SENDER = "sender@bench.test"
RECIPIENT = "rcpt@example.test"


class BenchError(RuntimeError):
    """A run that must not be counted: smtp-source failed or the sink count is off."""


@dataclass(frozen=True)
class Target:
    """Where smtp-source connects; ``pid`` is the proxy process whose CPU is measured (or None)."""

    name: str
    port: int
    pid: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Run:
    """One checked smtp-source run."""

    concurrency: int
    count: int
    seconds: float
    cpu_seconds: float | None

    @property
    def msgs_per_s(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_ms_per_msg(self) -> float | None:
        return None if self.cpu_seconds is None else 1000.0 * self.cpu_seconds / self.count


@dataclass
class Result:
    """All rounds of one (target, concurrency) cell; medians over the rounds."""

    target: str
    concurrency: int
    runs: list[Run] = field(default_factory=list)

    @property
    def msgs_per_s(self) -> float:
        return statistics.median(r.msgs_per_s for r in self.runs)

    @property
    def cpu_ms_per_msg(self) -> float | None:
        values = [c for r in self.runs if (c := r.cpu_ms_per_msg) is not None]
        return statistics.median(values) if values else None

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) msgs/s over the rounds."""
        rates = [r.msgs_per_s for r in self.runs]
        return min(rates), max(rates)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime (seconds) of ``pid`` and its live descendants, from /proc/PID/stat."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / _CLK_TCK


def smtp_source_argv(host: str, port: int, count: int, concurrency: int,
                     size: int = MESSAGE_BYTES) -> list[str]:
    """``smtp-source``: ``count`` messages of ``size`` bytes, one per session, ``-s`` parallel."""
    exe = find_binary("smtp-source")
    if exe is None:
        raise BenchError("smtp-source not installed (apt package postfix; scripts/setup.sh)")
    return [exe, "-s", str(concurrency), "-m", str(count), "-l", str(size), "-M", "bench.test",
            "-f", SENDER, "-t", RECIPIENT, f"{host}:{port}"]


def run_once(target: Target, sink: SmtpSink, concurrency: int, count: int,
             timeout: float = 300.0) -> Run:
    """One checked run; raises :class:`BenchError` if anything is off."""
    before = sink.count()
    cpu0 = cpu_seconds(target.pid) if target.pid else None
    t0 = time.perf_counter()
    proc = subprocess.run(smtp_source_argv(target.host, target.port, count, concurrency),
                          capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_seconds(target.pid) if target.pid else None
    if proc.returncode != 0:
        try:
            sink.check_alive()
        except ServerError as exc:
            raise BenchError(f"{target.name} c={concurrency}: the sink died: {exc}") from None
        raise BenchError(f"{target.name} c={concurrency}: smtp-source exit {proc.returncode}: "
                         f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    want = before + count
    # smtp-sink updates its counter when each session ends; a proxy may still be closing its
    # upstream connections after smtp-source is done.
    try:
        sink.wait_count(want, timeout=10)
    except TimeoutError:
        raise BenchError(f"{target.name} c={concurrency}: sink counted {sink.count() - before} "
                         f"of {count} messages") from None
    got = sink.count() - before
    if got != count:
        raise BenchError(f"{target.name} c={concurrency}: sink counted {got}, expected {count}")
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Run(concurrency, count, elapsed, cpu)


def measure(target: Target, sink: SmtpSink, concurrency: int, count: int, rounds: int = 3,
            warmup: int = 0) -> Result:
    """``rounds`` checked runs (after an unrecorded warm-up of ``warmup`` messages)."""
    if warmup:
        run_once(target, sink, min(concurrency, warmup), warmup)
    result = Result(target.name, concurrency)
    for _ in range(rounds):
        result.runs.append(run_once(target, sink, concurrency, count))
    return result


def format_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, table[1:])])
