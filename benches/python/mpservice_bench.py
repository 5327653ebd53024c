#!/usr/bin/env python3
"""Benchmark scenarios S1-S10 on Python ``mpservice.mpserver``.

Works with mpservice 0.12.9 and 0.16.8 (run it with the interpreter of the
venv holding the version to measure; see ``setup_venvs.sh``). The scenario
definitions are shared with every contender of the suite (``mpserver``'s
``mpserver_scenarios`` bin must implement the same ones):

S1  seq_call          one process worker returning 2*x; 200 warm-up calls, then
                      2000 sequential ``call``s: calls_per_s, p50_us, p99_us.
S2  stream_1proc      50,000 ints streamed through the doubling worker, 1 process:
                      items_per_s (every output checked == 2*x, order kept).
S3  stream_2proc      same with 2 worker processes.
S4  seed_pipeline     the seed flow (no sleeps), 20,000 strings f"w{i}" streamed:
                      items_per_s. Asserts f("world") == "Hello, wdwdwdwdwd!" once.
S5  batched           batch_size=64, default batch_wait_time, 100,000 ints; the
                      worker returns (x*x, len(batch)) per item: items_per_s and
                      mean_batch_size (= items / number of worker calls).
S6  cpu_scaling       ~2 ms of integer work per item (loop count calibrated once at
                      start), 400 items streamed with 1 and with 2 processes:
                      items_per_s_1proc, items_per_s_2proc, speedup, loop_count.
S7  concurrent_async  bursts of 2,000 concurrent async calls (asyncio.gather) on
                      the doubling worker, capacity 4096 so all are admitted at
                      once. Per run: a fresh server, 50 sequential warm-up calls
                      and one untimed burst, then 9 bursts one after the other;
                      items_per_s, p50_us, p99_us of the median burst by items/s
                      (each call timed on its own); cpu_us_per_item over all 9.
S8  payload_1mb       200 sequential calls echoing a 1 MiB bytes payload (5 warm-up):
                      mb_per_s one way (MB = 10^6 bytes).
S9  startup           seed flow (5 worker processes): from building the servlets
                      and server to the first result of call("world"):
                      startup_ms (servers started one after the other in this
                      process: with mpserver-py's fork server, the second and
                      later find it running), startup_first_ms (the first
                      server of a fresh process, which for mpserver-py includes
                      starting the fork server; the process's own start and
                      imports are before the clock starts); time to leave the
                      server context: shutdown_ms.
S10 memory            RSS (VmRSS) of the server process and of its worker, S2
                      setup: idle after start, and max while streaming S2's items:
                      rss_server_idle_mib, rss_worker0_idle_mib, rss_total_idle_mib
                      and the same with ``streaming``.

S2-S5 and S7 also give cpu_us_per_item: the CPU time (user + system) of the
benchmark process and every live descendant (worker processes, fork
servers) over the timed runs, per item, from /proc/*/task/*/schedstat. The
machine may be shared: CPU per item is the load-robust figure beside the
wall-clock rates.

Servers use the default capacity (256) and timeouts except where noted, and
except with ``--best``: then each mpservice version runs a scenario at its
best documented setting (``BEST_SETTINGS`` below; each such figure carries a
``"setting"`` field naming it).

The seed flow::

    Sequential(Ensemble(ProcessServlet(GetHead, cpus=[0]),
                        ProcessServlet(GetTail, cpus=[0, 1]),
                        ProcessServlet(GetLen, cpus=[1])),
               ThreadServlet(lambda x: (x[0] + x[1]) * x[2]),
               ProcessServlet(Solute))

CPU placement (``--placement``):

pinned1   the script restricts itself to CPU 0 (sched_setaffinity, inherited by
          every worker process it spawns) and re-applies that before each
          server is built (mpservice 0.12.9 resets the main process to all CPUs
          when a server exits); workers get cpus=[0] explicitly, and the seed
          flow uses cpus=[0] everywhere; 0.12.9 gets ``main_cpu=0``.
unpinned  no restriction; workers unpinned (cpus=[None]*n), except that the seed
          flow keeps its own cpus lists; 0.12.9 gets ``main_cpu=None`` (its
          default, ``main_cpu=0``, would pin the main process to CPU 0).
split     every worker on CPU 1 (cpus=[1]), then, once the server has
          started, every thread of the main process (the caller and the
          server's own threads) on CPU 0 (a worker can only be pinned to a
          CPU its parent may use); 0.12.9 gets ``main_cpu=None``: the two
          ends of a call always on different CPUs, which unpinned runs fall
          into in some runs and not in others. S1 only.

Default scenario sets: unpinned runs S1-S10; pinned1 runs S1, S7, S9; split
runs S1. S6 runs only unpinned (it needs 2 CPUs for its workers).

Output: one JSON object per line on stdout per figure, e.g.
{"contender": "mpservice-0.12.9", "scenario": "S1_seq_call", "placement":
"pinned1", "metric": "calls_per_s", "unit": "1/s", "runs": [...], "median": x,
"min": x, "max": x}. Progress goes to stderr.

API differences handled (0.12.9 -> 0.16.8):
* ``Server(main_cpu=0)`` exists only in 0.12.9 (pins the main process by
  default); 0.16.8 has no such parameter.
* async calls: 0.12.9 ``Server.async_call(x)`` inside a sync ``with Server``;
  0.16.8 ``AsyncServer.call(x)`` inside ``async with AsyncServer``.
* ``ProcessServlet(cpus=...)``: 0.12.9 takes CpuAffinity-like values and pins
  from the parent via psutil; 0.16.8 also takes an int (process count) and
  pins inside the worker. ``[None] * n`` / ``[0] * n`` work in both.
* ``Server.stream`` has an extra ``preprocessor`` and a larger default timeout
  in 0.16.8; neither is used here.
"""

from __future__ import annotations

# Only what worker processes need is imported at module level: a worker
# started the spawn way (and mpserver-py's fork server) imports this script as
# ``__mp_main__``, so its imports are start-up time of every contender. The
# rest (asyncio, argparse, json, statistics, subprocess) is imported where used.
import math
import os
import sys
import threading
import time

# ``--impl mpserver`` (or MPSERVER_BENCH_IMPL=mpserver) runs the very same
# scenarios and worker code on the ``mpserver`` Python package (mpserver-py),
# whose API is the seed's: only this import differs.
if "--impl=mpserver" in sys.argv or os.environ.get("MPSERVER_BENCH_IMPL") == "mpserver" or (
    "--impl" in sys.argv[:-1] and sys.argv[sys.argv.index("--impl") + 1] == "mpserver"
):
    from mpserver import (
        EnsembleServlet,
        ProcessServlet,
        SequentialServlet,
        Server,
        ThreadServlet,
        Worker,
        make_worker,
    )

    AsyncServer = None
    CONTENDER = "mpserver-py"
else:
    from mpservice.mpserver import (
        EnsembleServlet,
        ProcessServlet,
        SequentialServlet,
        Server,
        ThreadServlet,
        Worker,
        make_worker,
    )

    try:  # 0.16.x
        from mpservice.mpserver import AsyncServer
    except ImportError:  # 0.12.x: async calls go through Server.async_call
        AsyncServer = None

    import mpservice

    MPSERVICE_VERSION = mpservice.__version__
    CONTENDER = f"mpservice-{MPSERVICE_VERSION}"
HAS_MAIN_CPU = "main_cpu" in Server.__init__.__code__.co_varnames

MIB = 1 << 20
SEED_EXPECTED = "Hello, wdwdwdwdwd!"

# ``--best``: the setting under which each mpservice version runs a scenario
# at its best, from its documentation and source. ``Server(capacity=...)``
# ("max number of requests concurrently in progress") bounds the pipeline.
# 0.12.9's ``Server.stream`` polls ``Server.full()`` and sleeps 0.1 s each
# time the capacity is reached, so with the default 256 its streams stall
# (S2 about 6x slower than with capacity 1024 on a 2-core machine, issue 15).
# 0.16.8's stream (``fifo_stream``) waits on a condition variable instead of
# polling, and documents no setting that speeds streams up: it runs at its
# defaults (measured, quick S2 on a busy 2-core machine, two alternations:
# capacity 256 gave 15.0k and 17.3k items/s, 1024 gave 6.4k and 4.2k, 4096
# gave 6.1k and 4.5k). The scenarios concerned are the streaming ones (S2-S5, S10); S7
# already uses capacity 4096 for every contender.
_STREAMING = ("S2", "S3", "S4", "S5", "S10")
BEST_SETTINGS = {
    "0.12.9": {key: {"capacity": 1024} for key in _STREAMING},
    "0.16.8": {},
}


# ---------------------------------------------------------------- workers
# Module level so that spawned worker processes can import them.


class Double(Worker):
    """Returns ``2 * x``."""

    def call(self, x):
        return 2 * x


class Echo(Worker):
    """Returns its input unchanged."""

    def call(self, x):
        return x


class SquareBatch(Worker):
    """Batched: returns ``(x * x, len(batch))`` for each ``x`` of a batch."""

    def call(self, batch):
        n = len(batch)
        return [(x * x, n) for x in batch]


def burn(loops: int, seed: int) -> int:
    """Deterministic integer work: ``loops`` steps of a linear congruential generator."""
    x = seed
    for _ in range(loops):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


class Burn(Worker):
    """Spends ``loops`` iterations of :func:`burn` on each item."""

    def __init__(self, *, loops: int, **kwargs):
        super().__init__(**kwargs)
        self.loops = loops

    def call(self, x):
        return burn(self.loops, x)


class GetHead(Worker):
    def call(self, x):
        return x[0]


class GetTail(Worker):
    def call(self, x):
        return x[-1]


class GetLen(Worker):
    def call(self, x):
        return len(x)


class Solute(Worker):
    def call(self, x):
        return f"Hello, {x}!"


def _combine(x):
    return (x[0] + x[1]) * x[2]


def seed_expected(x: str) -> str:
    """What the seed flow returns for ``x``."""
    return f"Hello, {(x[0] + x[-1]) * len(x)}!"


# ---------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Holds the options and emits figures."""

    def __init__(self, args):
        self.placement = args.placement
        self.runs = args.runs
        self.quick = args.quick
        self.pinned = args.placement == "pinned1"
        self.split = args.placement == "split"
        self.start_cpus = os.sched_getaffinity(0)
        self.loops = None  # S6 calibration
        self.best = getattr(args, "best", False)
        self.current = None  # the scenario being run (its key, e.g. "S2")
        self.start_method = getattr(args, "start_method", "forkserver")

    def best_kwargs(self) -> dict:
        """Server settings of ``--best`` for the current scenario (or none)."""
        if not self.best or CONTENDER.startswith("mpserver-py"):
            return {}
        return dict(BEST_SETTINGS.get(MPSERVICE_VERSION, {}).get(self.current, {}))

    def setting(self) -> str | None:
        """The ``--best`` setting of the current scenario as text, if any."""
        kw = self.best_kwargs()
        return ",".join(f"{k}={v}" for k, v in sorted(kw.items())) or None

    # -- placement -------------------------------------------------------
    def apply_placement(self) -> None:
        """Re-apply the CPU restriction of this placement to the main process."""
        if self.pinned:
            os.sched_setaffinity(0, {0})
        elif self.split:
            # Workers can only be pinned to a CPU their parent may use: the
            # server starts with every CPU, then ``after_start`` moves this
            # process's threads to CPU 0.
            os.sched_setaffinity(0, self.start_cpus)

    def after_start(self) -> None:
        """Under ``split``: every thread of this process (the caller and
        the server's own threads) to CPU 0, once the server has started its
        workers on CPU 1."""
        if self.split:
            for tid in os.listdir("/proc/self/task"):
                try:
                    os.sched_setaffinity(int(tid), {0})
                except ProcessLookupError:  # exited meanwhile
                    pass

    def cpus(self, n: int) -> list:
        """``cpus`` argument of ProcessServlet for ``n`` processes."""
        if self.split:
            return [1] * n
        return [0] * n if self.pinned else [None] * n

    def server(self, servlet, **kwargs):
        """A (sync) Server for ``servlet`` respecting the placement."""
        self.apply_placement()
        if HAS_MAIN_CPU:
            kwargs["main_cpu"] = 0 if self.pinned else None
        for k, v in self.best_kwargs().items():
            kwargs.setdefault(k, v)
        return Server(servlet, **kwargs)

    def check_affinity(self, server, workers_pinned_by_flow: bool = False) -> None:
        """Log and check the CPU affinity of the server process and its workers.

        ``workers_pinned_by_flow``: the servlet pins its own workers (the seed
        flow), so under ``unpinned`` only the server process is checked.
        """
        pids = [os.getpid()] + worker_pids(server)
        masks = [sorted(os.sched_getaffinity(pid)) for pid in pids]
        log(f"  affinity: server {masks[0]}, workers {masks[1:]}")
        if self.pinned:
            assert all(m == [0] for m in masks), f"pinned1 but affinities {masks}"
        elif self.split:
            assert masks[0] == [0], f"split but server affinity {masks[0]}"
            if not workers_pinned_by_flow:
                assert all(m == [1] for m in masks[1:]), f"split but affinities {masks}"
        elif os.cpu_count() > 1:
            checked = masks[:1] if workers_pinned_by_flow else masks
            assert all(len(m) > 1 for m in checked), f"unpinned but affinities {masks}"

    def seed_servlet(self):
        if self.split:
            head, tail, length = [1], [1, 1], [1]
            solute = [1]
        elif self.pinned:
            head, tail, length = [0], [0, 0], [0]
            solute = [0]
        else:
            head, tail, length = [0], [0, 1], [1]
            solute = None
        return SequentialServlet(
            EnsembleServlet(
                ProcessServlet(GetHead, cpus=head),
                ProcessServlet(GetTail, cpus=tail),
                ProcessServlet(GetLen, cpus=length),
            ),
            ThreadServlet(make_worker(_combine)),
            ProcessServlet(Solute, cpus=solute),
        )

    # -- output ----------------------------------------------------------
    def emit(self, scenario: str, metric: str, unit: str, runs: list) -> None:
        import json
        import statistics

        runs = [float(v) for v in runs]
        fig = {
            "contender": CONTENDER,
            "scenario": scenario,
            "placement": self.placement,
            "metric": metric,
            "unit": unit,
            "runs": runs,
            "median": statistics.median(runs),
            "min": min(runs),
            "max": max(runs),
        }
        if self.setting():
            fig["setting"] = self.setting()
        log(
            f"  {scenario} {metric}: median {fig['median']:.3f} {unit} "
            f"(min {fig['min']:.3f}, max {fig['max']:.3f})"
        )
        print(json.dumps(fig), flush=True)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def worker_pids(server) -> list:
    """Pids of the server's worker processes."""
    if hasattr(server, "_worker_pids"):  # mpserver-py
        return sorted(server._worker_pids())
    return [w.pid for w in server.servlet.workers if hasattr(w, "pid")]


def percentile(sorted_values: list, p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, math.ceil(p * len(sorted_values)) - 1)
    return sorted_values[k]


def vm_rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` from /proc/<pid>/status, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _ppid(pid: int) -> int | None:
    """The parent of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:  # gone (or going) meanwhile
        return None
    return int(data[data.rindex(")") + 2 :].split()[1])


def _task_cpu_ns(pid: int) -> int:
    """CPU time (ns) of the live threads of ``pid`` (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def tree_cpu_s() -> float:
    """CPU seconds used so far by the threads of this process and of every
    live descendant (worker processes, fork servers), to the nanosecond
    (scheduler statistics; threads that exited are not counted, and every
    contender keeps its threads for the whole scenario). The machine is
    shared, so CPU time per item is the load-robust figure beside the
    wall-clock rates."""
    ppid_of = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = _ppid(int(name))
            if p is not None:
                ppid_of[int(name)] = p
    me = os.getpid()
    total = 0
    for pid in ppid_of:
        p, seen = pid, 0
        while p and p != me and seen < 64:
            p, seen = ppid_of.get(p, 0), seen + 1
        if p == me:
            total += _task_cpu_ns(pid)
    return total / 1e9

def stream_double(server, n: int) -> None:
    """Stream ``range(n)`` through a doubling server, checking every result."""
    count = 0
    for i, y in enumerate(server.stream(range(n))):
        if y != 2 * i:
            raise AssertionError(f"stream: got {y!r} for {i}")
        count += 1
    if count != n:
        raise AssertionError(f"stream: {count} results for {n} inputs")


# ---------------------------------------------------------------- scenarios


def s1_seq_call(b: Bench) -> None:
    n = b.n(2000, 200)
    log(f"S1_seq_call: {n} sequential calls")
    rate, p50, p99 = [], [], []
    with b.server(ProcessServlet(Double, cpus=b.cpus(1))) as server:
        b.after_start()
        b.check_affinity(server)
        for i in range(b.n(200, 50)):
            server.call(i)
        for run in range(b.runs):
            lat = []
            t_start = time.perf_counter()
            for i in range(n):
                t0 = time.perf_counter()
                y = server.call(i)
                lat.append(time.perf_counter() - t0)
                if y != 2 * i:
                    raise AssertionError(f"S1: got {y!r} for {i}")
            total = time.perf_counter() - t_start
            lat.sort()
            rate.append(n / total)
            p50.append(percentile(lat, 0.50) * 1e6)
            p99.append(percentile(lat, 0.99) * 1e6)
            log(f"  run {run}: {rate[-1]:.0f} calls/s, p50 {p50[-1]:.1f} us, p99 {p99[-1]:.1f} us")
    b.emit("S1_seq_call", "calls_per_s", "1/s", rate)
    b.emit("S1_seq_call", "p50_us", "us", p50)
    b.emit("S1_seq_call", "p99_us", "us", p99)


def _stream_nproc(b: Bench, scenario: str, nproc: int) -> None:
    n = b.n(50_000, 2_000)
    log(f"{scenario}: {n} items, {nproc} process(es)")
    rate, cpu = [], []
    with b.server(ProcessServlet(Double, cpus=b.cpus(nproc))) as server:
        stream_double(server, b.n(2_000, 200))  # warm-up
        for run in range(b.runs):
            c0, t0 = tree_cpu_s(), time.perf_counter()
            stream_double(server, n)
            rate.append(n / (time.perf_counter() - t0))
            cpu.append((tree_cpu_s() - c0) / n * 1e6)
            log(f"  run {run}: {rate[-1]:.0f} items/s, {cpu[-1]:.1f} us CPU per item")
    b.emit(scenario, "items_per_s", "1/s", rate)
    b.emit(scenario, "cpu_us_per_item", "us", cpu)


def s2_stream_1proc(b: Bench) -> None:
    _stream_nproc(b, "S2_stream_1proc", 1)


def s3_stream_2proc(b: Bench) -> None:
    _stream_nproc(b, "S3_stream_2proc", 2)


def s4_seed_pipeline(b: Bench) -> None:
    n = b.n(20_000, 1_000)
    log(f"S4_seed_pipeline: {n} strings through the seed flow")
    data = [f"w{i}" for i in range(n)]
    first, last = seed_expected(data[0]), seed_expected(data[-1])
    rate, cpu = [], []
    with b.server(b.seed_servlet()) as server:
        y = server.call("world")
        assert y == SEED_EXPECTED, f"seed flow returned {y!r}"
        for _ in server.stream(data[: b.n(1_000, 100)]):  # warm-up
            pass
        for run in range(b.runs):
            c0, t0 = tree_cpu_s(), time.perf_counter()
            out = list(server.stream(data))
            rate.append(n / (time.perf_counter() - t0))
            cpu.append((tree_cpu_s() - c0) / n * 1e6)
            assert len(out) == n and out[0] == first and out[-1] == last, "S4: wrong output"
            log(f"  run {run}: {rate[-1]:.0f} items/s, {cpu[-1]:.1f} us CPU per item")
    b.emit("S4_seed_pipeline", "items_per_s", "1/s", rate)
    b.emit("S4_seed_pipeline", "cpu_us_per_item", "us", cpu)


def s5_batched(b: Bench) -> None:
    n = b.n(100_000, 5_000)
    log(f"S5_batched: {n} items, batch_size=64")
    rate, mean_batch, cpu = [], [], []
    servlet = ProcessServlet(SquareBatch, cpus=b.cpus(1), batch_size=64)
    with b.server(servlet) as server:
        for _ in server.stream(range(b.n(2_000, 200))):  # warm-up
            pass
        for run in range(b.runs):
            calls = 0.0
            c0, t0 = tree_cpu_s(), time.perf_counter()
            for i, (sq, batch_len) in enumerate(server.stream(range(n))):
                if sq != i * i:
                    raise AssertionError(f"S5: got {sq!r} for {i}")
                calls += 1.0 / batch_len
            rate.append(n / (time.perf_counter() - t0))
            cpu.append((tree_cpu_s() - c0) / n * 1e6)
            mean_batch.append(n / calls)
            log(
                f"  run {run}: {rate[-1]:.0f} items/s, mean batch {mean_batch[-1]:.1f}, "
                f"{cpu[-1]:.1f} us CPU per item"
            )
    b.emit("S5_batched", "items_per_s", "1/s", rate)
    b.emit("S5_batched", "cpu_us_per_item", "us", cpu)
    b.emit("S5_batched", "mean_batch_size", "items", mean_batch)


def calibrate_burn(target_s: float = 0.002) -> int:
    """Loop count of :func:`burn` that takes about ``target_s`` seconds here."""
    probe = 20_000
    best = min(_time_burn(probe) for _ in range(5))
    loops = max(1, round(probe * target_s / best))
    check = min(_time_burn(loops) for _ in range(5))
    log(f"calibration: {loops} loops per item ({check * 1e3:.3f} ms measured)")
    return loops


def _time_burn(loops: int) -> float:
    t0 = time.perf_counter()
    burn(loops, 1)
    return time.perf_counter() - t0


# A speedup is a ratio of two noisy rates: S6 takes more runs than the rest.
S6_MIN_RUNS = 5


def s6_cpu_scaling(b: Bench) -> None:
    if b.placement != "unpinned":
        log(f"S6_cpu_scaling: skipped under {b.placement} (needs 2 CPUs for the workers)")
        return
    n = b.n(400, 40)
    loops = b.loops
    log(f"S6_cpu_scaling: {n} items x {loops} loops, 1 and 2 processes")
    expected = [burn(loops, i) for i in range(3)]
    rates = {}
    for nproc in (1, 2):
        rates[nproc] = []
        servlet = ProcessServlet(Burn, cpus=b.cpus(nproc), loops=loops)
        with b.server(servlet) as server:
            b.check_affinity(server)
            for _ in server.stream(range(2 * nproc)):  # warm-up
                pass
            for run in range(max(b.runs, S6_MIN_RUNS)):
                t0 = time.perf_counter()
                out = list(server.stream(range(n)))
                rates[nproc].append(n / (time.perf_counter() - t0))
                assert len(out) == n and out[:3] == expected, "S6: wrong output"
                log(f"  {nproc} proc run {run}: {rates[nproc][-1]:.1f} items/s")
    speedup = [two / one for one, two in zip(rates[1], rates[2])]
    b.emit("S6_cpu_scaling", "items_per_s_1proc", "1/s", rates[1])
    b.emit("S6_cpu_scaling", "items_per_s_2proc", "1/s", rates[2])
    b.emit("S6_cpu_scaling", "speedup", "x", speedup)
    b.emit("S6_cpu_scaling", "loop_count", "iterations", [loops])


async def _timed_gather(call, n: int) -> tuple[float, list]:
    """Run ``n`` concurrent ``call(i)``; return (total seconds, sorted latencies)."""
    lat = [0.0] * n

    async def one(i):
        t0 = time.perf_counter()
        y = await call(i)
        lat[i] = time.perf_counter() - t0
        if y != 2 * i:
            raise AssertionError(f"S7: got {y!r} for {i}")

    import asyncio

    t_start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    total = time.perf_counter() - t_start
    lat.sort()
    return total, lat


# S7: bursts per run, all on the same warm server. One burst of 2,000 calls
# takes a few milliseconds on the fastest contenders, so one burst per run
# measured mostly where the scheduler happened to put the threads; the median
# of several bursts is a figure. Odd, so that the median is one burst; the
# same number for every contender (mpserver_scenarios.rs, S7_BURSTS).
S7_BURSTS = 9
# Warm-up: sequential calls, then one untimed burst (the first burst on a
# fresh server pays for growing buffers and tables to 2,000 calls in flight).
S7_WARMUP = 50


async def _s7_runs(b: Bench, n: int) -> list:
    """Per run: a fresh server, S7_WARMUP sequential calls and one untimed
    burst, then S7_BURSTS bursts of ``n`` concurrent calls. A run's
    (items/s, p50 us, p99 us) are those of its median burst by items/s; its
    CPU per item is over all of its timed bursts."""
    bursts = b.n(S7_BURSTS, 3)
    results = []

    async def body(server, call):
        b.check_affinity(server)
        for i in range(b.n(S7_WARMUP, 10)):  # warm-up
            await call(i)
        await _timed_gather(call, n)  # warm-up burst (untimed)
        c0 = tree_cpu_s()
        runs = [await _timed_gather(call, n) for _ in range(bursts)]
        cpu = (tree_cpu_s() - c0) / (n * bursts) * 1e6
        # By duration: for an odd count, the median is the same burst as by items/s.
        total, lat = sorted(runs, key=lambda r: r[0])[bursts // 2]
        results.append(
            (n / total, percentile(lat, 0.5) * 1e6, percentile(lat, 0.99) * 1e6, cpu)
        )
        log(
            f"  run {len(results) - 1}: bursts (in order) "
            + " ".join(f"{n / r[0]:.0f}" for r in runs)
            + f" items/s; median {results[-1][0]:.0f} items/s, p50 {results[-1][1]:.0f} us, "
            f"p99 {results[-1][2]:.0f} us, {cpu:.1f} us CPU per item"
        )

    for _ in range(b.runs):
        servlet = ProcessServlet(Double, cpus=b.cpus(1))
        if AsyncServer is not None:  # 0.16.x
            b.apply_placement()
            async with AsyncServer(servlet, capacity=4096) as server:
                await body(server, server.call)
        else:  # 0.12.x
            with b.server(servlet, capacity=4096) as server:
                await body(server, server.async_call)
    return results


def s7_concurrent_async(b: Bench) -> None:
    n = b.n(2000, 200)
    log(f"S7_concurrent_async: {b.n(S7_BURSTS, 3)} bursts of {n} concurrent calls per run")
    import asyncio

    results = asyncio.run(_s7_runs(b, n))
    b.emit("S7_concurrent_async", "items_per_s", "1/s", [r[0] for r in results])
    b.emit("S7_concurrent_async", "p50_us", "us", [r[1] for r in results])
    b.emit("S7_concurrent_async", "p99_us", "us", [r[2] for r in results])
    b.emit("S7_concurrent_async", "cpu_us_per_item", "us", [r[3] for r in results])


def s8_payload_1mb(b: Bench) -> None:
    n = b.n(200, 20)
    log(f"S8_payload_1mb: {n} sequential 1 MiB echo calls")
    payload = bytes(i % 251 for i in range(256)) * (MIB // 256)
    rate = []
    with b.server(ProcessServlet(Echo, cpus=b.cpus(1))) as server:
        for _ in range(5):
            server.call(payload)
        for run in range(b.runs):
            t0 = time.perf_counter()
            for _ in range(n):
                y = server.call(payload)
            rate.append(n * MIB / 1e6 / (time.perf_counter() - t0))
            assert y == payload, "S8: echo mismatch"
            log(f"  run {run}: {rate[-1]:.1f} MB/s")
    b.emit("S8_payload_1mb", "mb_per_s", "MB/s", rate)


def s9_startup(b: Bench) -> None:
    log("S9_startup: seed flow start-up to first result, and shutdown")
    startup, shutdown = [], []
    for run in range(b.runs):
        t0 = time.perf_counter()
        with b.server(b.seed_servlet()) as server:
            y = server.call("world")
            t1 = time.perf_counter()
            assert y == SEED_EXPECTED, f"seed flow returned {y!r}"
            if run == 0:
                b.check_affinity(server, workers_pinned_by_flow=True)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        startup.append((t1 - t0) * 1e3)
        shutdown.append((t3 - t2) * 1e3)
        log(f"  run {run}: startup {startup[-1]:.1f} ms, shutdown {shutdown[-1]:.1f} ms")
    b.emit("S9_startup", "startup_ms", "ms", startup)
    b.emit("S9_startup", "shutdown_ms", "ms", shutdown)
    import subprocess

    first = []
    for run in range(b.runs):
        argv = [sys.executable, os.path.abspath(__file__), "--s9-first", "--placement", b.placement]
        if CONTENDER.startswith("mpserver-py"):
            argv += ["--impl", "mpserver", "--start-method", b.start_method]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
        first.append(float(out.stdout.split()[-1]))
        log(f"  run {run}: first server of a fresh process: startup {first[-1]:.1f} ms")
    b.emit("S9_startup", "startup_first_ms", "ms", first)


def s9_first(b: Bench) -> None:
    """``--s9-first``: the start-up of this fresh process's first server (ms)."""
    t0 = time.perf_counter()
    with b.server(b.seed_servlet()) as server:
        y = server.call("world")
        t1 = time.perf_counter()
        assert y == SEED_EXPECTED, f"seed flow returned {y!r}"
    print(f"{(t1 - t0) * 1e3:.3f}", flush=True)


class RssSampler:
    """Background thread sampling the max RSS of some pids every ``period`` s."""

    def __init__(self, pids: list, period: float = 0.005):
        self.pids = pids
        self.period = period
        self.peak = {pid: 0.0 for pid in pids}
        self.total_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        total = 0.0
        for pid in self.pids:
            v = vm_rss_mib(pid)
            self.peak[pid] = max(self.peak[pid], v)
            total += v
        self.total_peak = max(self.total_peak, total)

    def _run(self) -> None:
        self._sample()
        # Event.wait doubles as the sampling period and the stop signal.
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def s10_memory(b: Bench) -> None:
    n = b.n(50_000, 2_000)
    log(f"S10_memory: RSS idle and while streaming {n} items (S2 setup)")
    names = ("server", "worker0", "total")
    idle = {k: [] for k in names}
    busy = {k: [] for k in names}
    for run in range(b.runs):
        with b.server(ProcessServlet(Double, cpus=b.cpus(1))) as server:
            server.call(1)
            pids = [os.getpid()] + worker_pids(server)
            assert len(pids) == 2, f"expected one worker process, got {pids}"
            values = [vm_rss_mib(p) for p in pids]
            for k, v in zip(names, values + [sum(values)]):
                idle[k].append(v)
            with RssSampler(pids) as sampler:
                stream_double(server, n)
            values = [sampler.peak[p] for p in pids]
            for k, v in zip(names, values + [sampler.total_peak]):
                busy[k].append(v)
        log(
            f"  run {run}: idle server {idle['server'][-1]:.1f} MiB, worker {idle['worker0'][-1]:.1f} MiB;"
            f" streaming server {busy['server'][-1]:.1f} MiB, worker {busy['worker0'][-1]:.1f} MiB"
        )
    for k in names:
        b.emit("S10_memory", f"rss_{k}_idle_mib", "MiB", idle[k])
    for k in names:
        b.emit("S10_memory", f"rss_{k}_streaming_mib", "MiB", busy[k])


SCENARIOS = {
    "S1": s1_seq_call,
    "S2": s2_stream_1proc,
    "S3": s3_stream_2proc,
    "S4": s4_seed_pipeline,
    "S5": s5_batched,
    "S6": s6_cpu_scaling,
    "S7": s7_concurrent_async,
    "S8": s8_payload_1mb,
    "S9": s9_startup,
    "S10": s10_memory,
}
DEFAULT_SETS = {
    "unpinned": list(SCENARIOS),
    "pinned1": ["S1", "S7", "S9"],
    "split": ["S1"],
}


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--placement", choices=["pinned1", "unpinned", "split"], default="unpinned")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated ids, e.g. S1,S7 or S1_seq_call (default depends on --placement)",
    )
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    p.add_argument(
        "--best",
        action="store_true",
        help="run each scenario at the version's best documented setting (BEST_SETTINGS)",
    )
    p.add_argument(
        "--impl",
        choices=["mpservice", "mpserver"],
        default="mpservice",
        help="the package to measure (mpserver: the mpserver-py package, same scenarios)",
    )
    p.add_argument(
        "--start-method",
        choices=["forkserver", "spawn"],
        default="forkserver",
        help="mpserver-py only: how worker processes start (the contender is named "
        "mpserver-py-spawn for spawn)",
    )
    p.add_argument("--s9-first", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help="print the scenario ids defined here and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        sys.exit(0)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if args.scenarios is None:
        args.selected = DEFAULT_SETS[args.placement]
    else:
        args.selected = []
        for s in args.scenarios.split(","):
            key = s.strip().split("_")[0].upper()
            if not key:
                continue
            if key not in SCENARIOS:
                # One scenario list serves every contender: skip the ones
                # this script does not define (S11-S14 are mpserver's).
                log(f"{s.strip()}: not defined for this contender, skipped")
                continue
            args.selected.append(key)
    return args


def main(argv=None) -> int:
    global CONTENDER
    args = parse_args(argv)
    b = Bench(args)
    b.apply_placement()
    if CONTENDER == "mpserver-py":
        import mpserver

        mpserver.set_start_method(args.start_method)
        if args.start_method == "spawn":
            CONTENDER = "mpserver-py-spawn"
    if args.s9_first:
        s9_first(b)
        return 0
    log(
        f"{CONTENDER}: python {sys.version.split()[0]}, placement={args.placement} "
        f"cpus={sorted(os.sched_getaffinity(0))}, runs={args.runs}, quick={args.quick}, "
        f"best={args.best}, "
        f"scenarios={','.join(args.selected)}"
    )
    if "S6" in args.selected and b.placement == "unpinned":
        b.loops = calibrate_burn()
    for key in args.selected:
        if b.split and key != "S1":
            log(f"{key}: not measured under split (S1 only)")
            continue
        b.current = key
        SCENARIOS[key](b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
