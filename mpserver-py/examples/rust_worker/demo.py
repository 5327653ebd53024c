"""A flow mixing a Rust worker (from this extension module) with Python
workers: Python parses in a process, Rust fingerprints in threads without
the GIL, Python formats in a thread.

    pip install ./mpserver-py ./mpserver-py/examples/rust_worker
    python mpserver-py/examples/rust_worker/demo.py
"""

import time

from rust_worker_example import fingerprint

from mpserver import ProcessServlet, SequentialServlet, Server, ThreadServlet, Worker


class Parse(Worker):
    """Python, in a worker process."""

    def call(self, x):
        return x.encode() * 2000


class Fingerprint(Worker):
    """Rust: the work runs without the GIL, so threads run in parallel."""

    def call(self, data):
        return fingerprint(data, rounds=40)


class Format(Worker):
    def call(self, h):
        return f"{h:016x}"


def flow(threads):
    return SequentialServlet(
        ProcessServlet(Parse),
        ThreadServlet(Fingerprint, num_threads=threads),
        ThreadServlet(Format),
    )


def main():
    data = [f"item-{i}" for i in range(200)]
    results = {}
    for threads in (1, 2):
        with Server(flow(threads)) as server:
            assert server.call("x") == f"{fingerprint(b'x' * 2000, rounds=40):016x}"
            t0 = time.perf_counter()
            results[threads] = list(server.stream(data))
            rate = len(data) / (time.perf_counter() - t0)
        print(f"{threads} Rust worker thread(s): {rate:.0f} items/s")
    assert results[1] == results[2]
    print("first:", results[1][0])


if __name__ == "__main__":
    main()
