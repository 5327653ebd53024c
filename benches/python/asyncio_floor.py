#!/usr/bin/env python3
"""The floor of S7 for any server: the benchmark's own asyncio code alone.

Runs S7's harness (``mpservice_bench._timed_gather``: 2,000 concurrent calls
with ``asyncio.gather``, each call timed) on a trivial awaitable, a future
resolved by ``loop.call_soon``, and prints items/s and CPU per item of this
process. No server can make S7 cheaper than this on one CPU.

Usage: python benches/python/asyncio_floor.py [--pinned] [--runs N]
"""

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The harness is shared with the scenarios; the implementation is not used.
os.environ.setdefault("MPSERVER_BENCH_IMPL", "mpserver")


async def run(runs: int, n: int) -> None:
    from mpservice_bench import _timed_gather

    loop = asyncio.get_running_loop()

    async def call(x):
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 2 * x)
        return await fut

    for _ in range(runs):
        c0 = time.process_time()
        total, _lat = await _timed_gather(call, n)
        cpu = time.process_time() - c0
        print(f"{n / total:.0f} items/s, {cpu / n * 1e6:.1f} us CPU per item", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pinned", action="store_true", help="restrict to CPU 0 (as S7 pinned1)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    if args.pinned:
        os.sched_setaffinity(0, {0})
    asyncio.run(run(args.runs, 2000))


if __name__ == "__main__":
    main()
