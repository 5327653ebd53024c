import os, sys, time, collections
sys.argv += ["--impl", "mpserver"]
sys.path.insert(0, "/work/wt-hpy/benches/python")
import mpservice_bench as mb
from mpserver import ProcessServlet, Server
sys.path.insert(0, "/tmp/hpy")
from s7 import threads_cpu

def main():
    pinned = os.environ.get("PIN", "0") == "1"
    if pinned: os.sched_setaffinity(0, {0})
    sc = os.environ.get("SC", "S2")
    N = 50000
    if sc == "S5":
        servlet = ProcessServlet(mb.SquareBatch, cpus=[0] if pinned else [None], batch_size=64)
        N = 100000
        def run(server, n):
            for i, (sq, bl) in enumerate(server.stream(range(n))):
                assert sq == i * i
    elif sc == "S4":
        b = mb.Bench.__new__(mb.Bench); b.pinned = pinned
        servlet = b.seed_servlet(); N = 20000
        data = [f"w{i}" for i in range(N)]
        def run(server, n):
            out = list(server.stream(data[:n]))
    else:
        servlet = ProcessServlet(mb.Double, cpus=[0] if pinned else [None])
        run = mb.stream_double
    with Server(servlet) as server:
        run(server, 2000)
        res = []
        for r in range(int(os.environ.get("RUNS", "5"))):
            c0 = threads_cpu(); t0 = time.perf_counter()
            run(server, N)
            t = time.perf_counter() - t0
            c1 = threads_cpu()
            d = {k: (c1[k] - c0[k]) / N for k in c1}
            tot = sum(v for k, v in d.items() if k.endswith("cpu"))
            res.append(tot)
            if os.environ.get("V"):
                print(f"{sc} run {r}: {N/t:.0f}/s cpu {tot:.2f} us/item  " + "  ".join(f"{k}={v:.2f}" for k, v in sorted(d.items()) if v > 0.005))
        res.sort()
        print("cpu/item median %.2f min %.2f max %.2f" % (res[len(res)//2], res[0], res[-1]))

if __name__ == "__main__":
    main()
