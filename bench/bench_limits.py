"""Cost of the reputation-and-limits machinery, with baselines measured in the same run.

1. Static lists: one lookup in a 100,000-entry `CidrSet` (and one `acl` check run over it)
   versus a plain Python `set` lookup of the same addresses (the floor for "is X in a list").
2. Rate limiter: `rate_limit` operations per second on `MemoryStore` and on `RedisStore`
   against a real redis-server started here (sequential = latency-bound, and 64 in flight).
3. Store round trips per message for a typical policy (connection rate + concurrency slot +
   recipient rate + greylisting + message and byte rates), counted by Redis itself
   (`INFO commandstats`: EVALSHA / EVAL / ZREM / SCRIPT LOAD calls the client sent), not by us.

    .venv/bin/python bench/bench_limits.py                 # ~30 s
    .venv/bin/python bench/bench_limits.py --quick --json out.json

Numbers swing +-20 % between runs on the 2-core boxes; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from realservers import Redis

from smtpguard.checks.acl import ConnectACLCheck
from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.concurrency import ConcurrencyCheck
from smtpguard.checks.greylist import GreylistCheck
from smtpguard.checks.ratelimit import RateLimitCheck
from smtpguard.checks.ratelimit_data import DataRateLimitCheck
from smtpguard.checks.ratelimit_rcpt import RecipientRateLimitCheck
from smtpguard.facts import Message, Session, Transaction
from smtpguard.lists import CidrSet
from smtpguard.stage import Stage
from smtpguard.store.memory import MemoryStore
from smtpguard.store.redis import RedisStore


def per_op_us(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return min(best)


async def per_await_us(fn: Callable[[], Awaitable[object]], n: int, repeat: int = 5) -> float:
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return min(best)


def list_entries() -> list[str]:
    v4_nets = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(60_000)]
    v4_hosts = [f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" for i in range(30_000)]
    v6_nets = [f"2001:db8:{i:x}::/48" for i in range(10_000)]
    return v4_nets + v4_hosts + v6_nets


async def bench_lists(n: int) -> dict[str, float]:
    entries = list_entries()
    t0 = time.perf_counter()
    cidrs = CidrSet(entries)
    build_s = time.perf_counter() - t0
    rng = random.Random(1)
    probes_txt = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" if i % 2 else
                  f"11.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for i in range(1000)]
    probes = [ipaddress.ip_address(p) for p in probes_txt]
    plain = {str(ipaddress.ip_network(e).network_address) for e in entries}  # 100,000 strings
    it = iter(range(10**12))

    def cidr_obj() -> object:
        return probes[next(it) % 1000] in cidrs

    def cidr_str() -> object:
        return probes_txt[next(it) % 1000] in cidrs

    def set_str() -> object:
        return probes_txt[next(it) % 1000] in plain

    def set_obj() -> object:
        return probes[next(it) % 1000] in plain

    opts = ConnectACLCheck.Options.model_validate({"lists": {"big": {"match": "client_ip", "entries": entries}}})
    check = ConnectACLCheck(opts, CheckEnv(hostname="bench"))
    ctxs = [CheckContext(Stage.CONNECT, Session(id="s", listener="mx", client_ip=p, client_port=25), None,
                         check.env) for p in probes]

    async def acl_run() -> object:
        return await check.run(ctxs[next(it) % 1000])

    class SetCheck:  # the same check shape doing a plain set lookup: the baseline per-check cost
        async def run(self, ctx: CheckContext) -> object:
            return frozenset({"acl.big.match"}) if str(ctx.session.client_ip) in plain else frozenset()

    baseline = SetCheck()

    async def set_run() -> object:
        return await baseline.run(ctxs[next(it) % 1000])

    return {
        "entries": float(len(entries)),
        "cidrset_build_s": build_s,
        "cidrset_lookup_ipobj_us": per_op_us(cidr_obj, n),
        "cidrset_lookup_str_us": per_op_us(cidr_str, n),
        "plain_set_lookup_str_us": per_op_us(set_str, n),
        "plain_set_lookup_ipobj_us": per_op_us(set_obj, n),
        "acl_check_run_us": await per_await_us(acl_run, n // 4),
        "baseline_set_check_run_us": await per_await_us(set_run, n // 4),
    }


async def ops_per_s(store: Any, n: int, in_flight: int) -> tuple[float, float, float]:
    """(ops/s, p50 ms, p99 ms) of rate_limit over 1000 keys with `in_flight` concurrent callers."""
    lat: list[float] = []
    counter = iter(range(10**12))

    async def worker(count: int) -> None:
        for _ in range(count):
            i = next(counter)
            t = time.perf_counter()
            await store.rate_limit(f"bench:{i % 1000}", 1000.0, 1000, 1, time.time())
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n // in_flight) for _ in range(in_flight)))
    wall = time.perf_counter() - t0
    lat.sort()
    return len(lat) / wall, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def ctx_for(env: CheckEnv, stage: Stage, i: int, rcpt: str | None = None, *, message: bool = False) -> CheckContext:
    session = Session(id=f"s{i}", listener="mx", client_ip=ipaddress.ip_address(f"10.1.{i >> 8 & 255}.{i & 255}"),
                      client_port=25, helo="bench.test")
    tx = Transaction(id=f"t{i}", sender=f"s{i}@bench.test", recipient=rcpt, recipients=[rcpt] if rcpt else [],
                     message=Message(b"x" * 2048, []) if message else None)
    return CheckContext(stage, session, tx, env)


async def round_trips_per_message(store: RedisStore, messages: int) -> dict[str, float]:
    env = CheckEnv(hostname="bench", store=store)
    conn = RateLimitCheck(RateLimitCheck.Options.model_validate(
        {"limits": {"per_ip": {"count": "connections", "rate": "100/s"}}}), env)
    conc = ConcurrencyCheck(ConcurrencyCheck.Options.model_validate({"limits": {"per_ip": {"limit": 10}}}), env)
    rcpt = RecipientRateLimitCheck(RecipientRateLimitCheck.Options.model_validate(
        {"limits": {"per_sender": {"count": "recipients", "key": ["sender"], "rate": "100/h"}}}), env)
    grey = GreylistCheck(GreylistCheck.Options.model_validate({}), env)
    data_limits = {"msgs": {"count": "messages", "rate": "100/s"}, "bytes": {"count": "bytes", "rate": "10000000/h"}}
    data = DataRateLimitCheck(DataRateLimitCheck.Options.model_validate({"limits": data_limits}), env)

    async def commands() -> int:
        """Commands the client sent (script bodies' inner commands are not round trips)."""
        stats = await store.client.info("commandstats")
        sent = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_zrem", "cmdstat_script|load")
        return sum(int(stats[name]["calls"]) for name in sent if name in stats)

    await conn.run(ctx_for(env, Stage.CONNECT, 0))  # load scripts once (EVALSHA afterwards)
    for check in (conc, rcpt, grey):
        await check.run(ctx_for(env, check.stage, 0, "r@example.test"))
    await data.run(ctx_for(env, Stage.DATA, 0, "r@example.test", message=True))
    before = await commands()
    t0 = time.perf_counter()
    for i in range(1, messages + 1):
        await asyncio.gather(conn.run(ctx_for(env, Stage.CONNECT, i)), conc.run(ctx_for(env, Stage.CONNECT, i)))
        r = ctx_for(env, Stage.RCPT, i, "r@example.test")
        await asyncio.gather(rcpt.run(r), grey.run(r))
        await data.run(ctx_for(env, Stage.DATA, i, "r@example.test", message=True))
        await grey.observe("message_accepted", r)
        await conc.observe("connection_closed", r)
    wall = time.perf_counter() - t0
    after = await commands()
    return {"round_trips_per_message": (after - before) / messages,
            "store_ms_per_message_sequential_stages": wall / messages * 1e3}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"lists": await bench_lists(args.n)}
    mem = MemoryStore()
    out["memory"] = {f"in_flight_{k}": dict(zip(("ops_s", "p50_ms", "p99_ms"), await ops_per_s(mem, args.ops, k),
                                                strict=True)) for k in (1, 64)}
    with tempfile.TemporaryDirectory() as tmp:
        server = Redis.start(Path(tmp) / "redis")
        try:
            store = RedisStore(server.url, timeout=1.0, prefix="bench:")
            await store.rate_limit("warm", 1, 1, 1, time.time())
            out["redis"] = {f"in_flight_{k}": dict(zip(("ops_s", "p50_ms", "p99_ms"),
                                                       await ops_per_s(store, args.redis_ops, k), strict=True))
                            for k in (1, 64)}
            out["per_message"] = await round_trips_per_message(store, args.messages)
            await store.close()
        finally:
            server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.n = 20_000 if args.quick else 200_000
    args.ops = 20_000 if args.quick else 100_000
    args.redis_ops = 5_000 if args.quick else 20_000
    args.messages = 200 if args.quick else 1000
    res = asyncio.run(main_async(args))
    li = res["lists"]
    print(f"static list: {int(li['entries'])} entries, CidrSet built in {li['cidrset_build_s']:.2f} s")
    print(f"  lookup  CidrSet(ip object) {li['cidrset_lookup_ipobj_us']:.2f} us | CidrSet(str) "
          f"{li['cidrset_lookup_str_us']:.2f} us | plain set(str) {li['plain_set_lookup_str_us']:.3f} us")
    print(f"  check   acl.run {li['acl_check_run_us']:.2f} us | same check shape with a plain set "
          f"{li['baseline_set_check_run_us']:.2f} us")
    for backend in ("memory", "redis"):
        for k, v in res[backend].items():
            print(f"rate_limit {backend:6} {k:12} {v['ops_s']:>10,.0f} ops/s  p50 {v['p50_ms']:.3f} ms  "
                  f"p99 {v['p99_ms']:.3f} ms")
    pm = res["per_message"]
    print(f"per message (typical policy, 1 recipient): {pm['round_trips_per_message']:.2f} Redis round trips, "
          f"{pm['store_ms_per_message_sequential_stages']:.2f} ms of store waits (stages sequential)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
