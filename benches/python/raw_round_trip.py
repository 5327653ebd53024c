#!/usr/bin/env python3
"""S1's floor for any server: a plain two-process round trip from Python.

One byte over a socketpair to a forked child and back, blocking reads, in
S1's placement (``pinned1``: both processes on CPU 0; ``unpinned``: where
the scheduler puts them): calls/s of 5 runs of 2,000 round trips.

Usage: python benches/python/raw_round_trip.py pinned1|unpinned
"""

import os
import socket
import sys
import time


def main() -> None:
    placement = sys.argv[1] if len(sys.argv) > 1 else "unpinned"
    if placement not in ("pinned1", "unpinned"):
        sys.exit(__doc__)
    if placement == "pinned1":
        os.sched_setaffinity(0, {0})
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while True:
            d = b.recv(64)
            if not d:
                os._exit(0)
            b.send(d)
    b.close()
    for _ in range(200):
        a.send(b"x")
        a.recv(64)
    rates = []
    for _ in range(5):
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            a.send(b"x")
            a.recv(64)
        rates.append(n / (time.perf_counter() - t0))
    a.close()
    os.waitpid(pid, 0)
    rates.sort()
    print(f"{placement} raw round trip: median {rates[2]:.0f}/s [{rates[0]:.0f}-{rates[-1]:.0f}]")


if __name__ == "__main__":
    main()
