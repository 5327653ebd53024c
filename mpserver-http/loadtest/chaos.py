#!/usr/bin/env python3
"""Chaos run of the served seed flow (a benchmark, not a test).

Starts `seed_http` on 127.0.0.1 (loopback only), drives it with CLIENTS
concurrent clients calling `POST /call` for the whole run, and during the
chaos phase SIGKILLs a random worker process of *this* server every KILL_EVERY
seconds. Phases: BASELINE s of calm (normal throughput), CHAOS s of kills,
RECOVERY s of calm again. Then SIGTERM, and a check for leftover processes.

Prints: requests, status counts, wrong answers, answers later than their
deadline + 100 ms, p50/p99 latency (all, 200s, non-200s), how non-200s
looked (503 with Retry-After?), readiness samples against the live workers
seen in /debug at the same moment, time to >= 90 % of baseline throughput
after the last kill, leftover processes.

Bounded: every run ends after BASELINE + CHAOS + RECOVERY + a shutdown
bound; every request has a socket timeout; only the server's own children
are killed. Stdlib only.

    python3 mpserver-http/loadtest/chaos.py [--bin target/release/seed_http]
        [--clients 32] [--chaos 30] [--kill-every 0.2] [--deadline-ms 2000]
        [-- extra seed_http flags, e.g. --restart-max-backoff-ms 100]
"""

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def expected(x):
    """The seed flow in Python: f"Hello, {(x[0] + x[-1]) * len(x)}!"."""
    return f"Hello, {(x[0] + x[-1]) * len(x)}!"


def children(pid):
    """Pids of the direct children of `pid` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 1 and rest[1] == str(pid):
            out.append(int(name))
    return out


def running(pid):
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Run:
    def __init__(self, host, port, deadline_ms):
        self.host, self.port = host, port
        self.deadline_ms = deadline_ms
        self.lock = threading.Lock()
        self.results = []  # (t_end, latency_s, status, ok_answer, retry_after, kind)
        self.ready = []  # (t, readyz status, stage down per /debug, reason)
        self.kills = []  # (t, pid)
        self.stop = threading.Event()

    def client(self, seed):
        rnd = random.Random(seed)
        conn = None
        while not self.stop.is_set():
            n = rnd.randint(1, 6)
            if rnd.random() < 0.5:
                x = "".join(rnd.choice("abcdefgh") for _ in range(n))
            else:
                x = [rnd.randint(-1000, 1000) for _ in range(n)]
            body = json.dumps(x)
            want = expected(x)
            t0 = time.monotonic()
            status, text, retry, kind = None, "", None, ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        self.host, self.port, timeout=self.deadline_ms / 1000 + 10
                    )
                conn.request(
                    "POST",
                    "/call",
                    body,
                    {"x-timeout-ms": str(self.deadline_ms), "content-type": "application/json"},
                )
                r = conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                status = r.status
                retry = r.getheader("retry-after")
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # connection refused/reset, timeout
                status = "conn:" + type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            t1 = time.monotonic()
            ok = None
            if status == 200:
                try:
                    ok = json.loads(text) == want
                except ValueError:
                    ok = False
            else:
                try:
                    kind = json.loads(text).get("error", "") + "/" + str(
                        json.loads(text).get("class", "")
                    )
                except (ValueError, AttributeError):
                    kind = text[:40]
            with self.lock:
                self.results.append((t1, t1 - t0, status, ok, retry, kind))

    def get(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def sampler(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                # /debug before and after /readyz: a stage counts as down
                # at the readiness sample only if both say so.
                _, before = self.get("/debug")
                code, why = self.get("/readyz")
                _, after = self.get("/debug")
                d0 = stage_down(json.loads(before)["servlets"])
                d1 = stage_down(json.loads(after)["servlets"])
                self.ready.append((t, code, d0 and d1, why.strip()))
            except Exception as e:
                self.ready.append((t, "err:" + type(e).__name__, None, ""))
            self.stop.wait(0.1)

    def killer(self, server_pid, until, every, seen):
        rnd = random.Random(7)
        while time.monotonic() < until and not self.stop.is_set():
            kids = children(server_pid)
            seen.update(kids)
            if kids:
                victim = rnd.choice(kids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    self.kills.append((time.monotonic(), victim))
                except ProcessLookupError:
                    pass
            time.sleep(every)


def stage_down(node):
    """True if some stage (servlet with workers) has no live worker."""
    ws = node.get("workers") or []
    if ws and not any(w.get("alive") for w in ws):
        return True
    return any(stage_down(m) for m in node.get("members") or [])


def sum_restarts(node):
    """Restarts of every worker under `node`, per /debug."""
    n = sum(w.get("restarts", 0) for w in node.get("workers") or [])
    return n + sum(sum_restarts(m) for m in node.get("members") or [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "seed_http"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--baseline", type=float, default=5)
    ap.add_argument("--chaos", type=float, default=30)
    ap.add_argument("--recovery", type=float, default=10)
    ap.add_argument("--kill-every", type=float, default=0.2)
    ap.add_argument("--deadline-ms", type=int, default=2000)
    ap.add_argument("extra", nargs="*", help="extra seed_http flags (after --)")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin} missing: cargo build --release -p mpserver-http-seed --bin seed_http")

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "error"))
    server = subprocess.Popen(
        [a.bin, "--addr", "127.0.0.1:0", "--drain-delay-ms", "500"] + a.extra,
        stdout=subprocess.PIPE,
        env=env,
    )
    line = server.stdout.readline().decode()
    host, port = line.split()[-1].rsplit(":", 1)
    run = Run(host, int(port), a.deadline_ms)
    for _ in range(300):
        try:
            if run.get("/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        server.kill()
        sys.exit("seed_http did not become ready")

    seen = set(children(server.pid))
    t_start = time.monotonic()
    threads = [threading.Thread(target=run.client, args=(i,), daemon=True) for i in range(a.clients)]
    threads.append(threading.Thread(target=run.sampler, daemon=True))
    for t in threads:
        t.start()
    time.sleep(a.baseline)
    t_chaos = time.monotonic()
    killer = threading.Thread(
        target=run.killer,
        args=(server.pid, t_chaos + a.chaos, a.kill_every, seen),
        daemon=True,
    )
    killer.start()
    killer.join(a.chaos + 5)
    t_calm = time.monotonic()
    time.sleep(a.recovery)
    run.stop.set()
    for t in threads:
        t.join(a.deadline_ms / 1000 + 15)
    t_end = time.monotonic()
    seen.update(children(server.pid))
    # How many worker restarts the server itself counted (a kill of a
    # process already dying or still starting may lose nothing).
    try:
        restarts = sum_restarts(json.loads(run.get("/debug")[1])["servlets"])
    except Exception as e:  # the server is the thing under test
        restarts = "unknown (%s)" % type(e).__name__
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        code = "killed after 60 s"
    time.sleep(0.5)
    leftovers = sorted(p for p in seen if running(p))
    for p in leftovers:
        os.kill(p, signal.SIGKILL)

    res = run.results
    statuses = {}
    for r in res:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    wrong = sum(1 for r in res if r[2] == 200 and not r[3])
    late = [r for r in res if r[1] > a.deadline_ms / 1000 + 0.1]
    lat_all = [r[1] for r in res]
    lat_ok = [r[1] for r in res if r[2] == 200]
    non200 = [r for r in res if r[2] != 200]
    lat_non = [r[1] for r in non200]
    n503 = [r for r in non200 if r[2] == 503]
    n503_retry = sum(1 for r in n503 if r[4])
    kinds = {}
    for r in non200:
        kinds[f"{r[2]} {r[5]}"] = kinds.get(f"{r[2]} {r[5]}", 0) + 1

    def rate(t0, t1):
        return sum(1 for r in res if t0 <= r[0] < t1 and r[2] == 200) / max(t1 - t0, 1e-9)

    base = rate(t_start + 1, t_chaos)
    chaos_rate = rate(t_chaos, t_calm)
    last_kill = run.kills[-1][0] if run.kills else t_calm
    recovered = None
    t = last_kill
    while t + 0.5 <= t_end:
        if rate(t, t + 0.5) >= 0.9 * base:
            recovered = t - last_kill
            break
        t += 0.05
    samples = [s for s in run.ready if t_chaos <= s[0] < t_calm]
    down = [s for s in samples if s[2]]
    lies = [s for s in down if s[1] == 200]
    r503 = sum(1 for s in samples if s[1] == 503)

    print("# chaos run: seed_http, %d clients, kill every %.2f s for %.0f s, deadline %d ms"
          % (a.clients, a.kill_every, a.chaos, a.deadline_ms))
    print("extra flags:", " ".join(a.extra) or "(none)")
    print("requests:", len(res), " kills:", len(run.kills), " worker restarts (per /debug):", restarts)
    print("status counts:", json.dumps(dict(sorted(statuses.items()))))
    print("non-200 by kind:", json.dumps(dict(sorted(kinds.items(), key=lambda kv: -kv[1]))))
    print("wrong answers:", wrong)
    print("later than deadline + 100 ms:", len(late),
          "(max %.3f s)" % max((r[1] for r in late), default=0))
    print("latency all    p50 %.1f ms  p99 %.1f ms" % (pct(lat_all, 0.5) * 1e3, pct(lat_all, 0.99) * 1e3))
    print("latency 200    p50 %.1f ms  p99 %.1f ms" % (pct(lat_ok, 0.5) * 1e3, pct(lat_ok, 0.99) * 1e3))
    print("latency non200 p50 %.1f ms  p99 %.1f ms" % (pct(lat_non, 0.5) * 1e3, pct(lat_non, 0.99) * 1e3))
    print("503s with Retry-After: %d of %d" % (n503_retry, len(n503)))
    print("throughput (200/s): baseline %.1f, during kills %.1f" % (base, chaos_rate))
    print("readiness samples during kills: %d, 503: %d, stage down per /debug: %d, 200 while a stage was down: %d"
          % (len(samples), r503, len(down), len(lies)))
    print("time to >= 90%% of baseline throughput after the last kill: %s"
          % ("%.2f s" % recovered if recovered is not None else "not within %.0f s" % a.recovery))
    print("server exit:", code)
    print("leftover processes:", leftovers or "none")


if __name__ == "__main__":
    main()
