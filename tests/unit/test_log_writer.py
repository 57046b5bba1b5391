"""The background log writer: logging never blocks the caller, order is kept, drops are counted."""

from __future__ import annotations

import logging
import os
import threading

from smtpguard.log import BackgroundStreamHandler


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, "", 0, "line %05d " + "x" * 1000, (i,), None)


def test_lines_arrive_in_order_and_close_writes_what_is_queued() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "r") as reader, os.fdopen(write_fd, "w") as stream:
        handler = BackgroundStreamHandler(stream, max_lines=1000)
        handler.setFormatter(logging.Formatter("%(message)s"))
        got: list[str] = []
        drain = threading.Thread(target=lambda: got.extend(reader.readlines()), daemon=True)
        drain.start()
        for i in range(300):
            handler.emit(_record(i))
        handler.close()
        stream.close()
        drain.join(timeout=30)
    assert [line[:10] for line in got] == [f"line {i:05d}" for i in range(300)]
    assert handler.dropped == 0


def test_a_stalled_stream_never_blocks_the_caller_and_drops_are_counted() -> None:
    read_fd, write_fd = os.pipe()  # nobody reads until the end: 64 KB fill the pipe
    drops: list[int] = []
    with os.fdopen(read_fd, "r") as reader, os.fdopen(write_fd, "w") as stream:
        handler = BackgroundStreamHandler(stream, max_lines=20, on_drop=drops.append)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        emitter = threading.Thread(target=lambda: [handler.emit(_record(i)) for i in range(500)], daemon=True)
        emitter.start()
        emitter.join(timeout=60)  # would hang for good if emit() waited for the pipe
        assert not emitter.is_alive()
        assert handler.dropped > 0 and sum(drops) == handler.dropped
        got: list[str] = []
        drain = threading.Thread(target=lambda: got.extend(reader.readlines()), daemon=True)
        drain.start()
        handler.close()
        stream.close()
        drain.join(timeout=30)
    numbers = [int(line.split()[2]) for line in got if line.startswith("INFO line")]
    assert numbers == sorted(numbers) and numbers[0] == 0  # order kept, the first lines kept
    assert len(numbers) + handler.dropped == 500  # every line either written or counted
    warnings = [line for line in got if line.startswith("WARNING")]
    # reported as they are noticed, possibly in several parts: together they say how many
    assert warnings and all(" log lines dropped: the log output was not being read" in w for w in warnings)
    assert sum(int(w.split()[1]) for w in warnings) == handler.dropped
