import asyncio, os, sys, time, collections
sys.argv += ["--impl", "mpserver"]
sys.path.insert(0, "/work/wt-hpy/benches/python")
import mpservice_bench as mb
from mpserver import ProcessServlet, Server

pinned = os.environ.get("PIN", "1") == "1"
if pinned:
    os.sched_setaffinity(0, {0})
N = 2000
BURSTS = int(os.environ.get("BURSTS", "15"))

def threads_cpu():
    out = collections.Counter()
    me = os.getpid()
    pids = [me]
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = mb._ppid(int(name))
            if p == me: pids.append(int(name))
            # grandchildren
    more = []
    for name in os.listdir("/proc"):
        if name.isdigit() and mb._ppid(int(name)) in pids[1:]:
            more.append(int(name))
    pids += more
    for pid in pids:
        try: tids = os.listdir(f"/proc/{pid}/task")
        except OSError: continue
        for tid in tids:
            try:
                comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
                st = open(f"/proc/{pid}/task/{tid}/schedstat").read().split()
                sw = open(f"/proc/{pid}/task/{tid}/status").read()
                vol = int(sw.split("voluntary_ctxt_switches:")[1].split()[0])
            except OSError: continue
            key = ("main" if pid == me else "child") + ":" + comm
            out[key + " cpu"] += int(st[0]) / 1e3
            out[key + " sw"] += vol
    return out

async def main():
    with Server(ProcessServlet(mb.Double, cpus=[0] if pinned else [None]), capacity=4096) as server:
        for i in range(50):
            await server.async_call(i)
        from mpserver import _api
        loop = asyncio.get_running_loop()
        br = _api._bridge(loop)
        fd = [k for k in loop._selector.get_map().keys()]
        cnt = [0]
        rfd = None
        for key in loop._selector.get_map().values():
            h = key.data[0]
            if h is not None and getattr(h._callback, '__self__', None) is br:
                rfd = key.fd
        loop.remove_reader(rfd)
        def wrapped():
            cnt[0] += 1
            br.on_readable()
        loop.add_reader(rfd, wrapped)
        res = []
        for b in range(BURSTS):
            c0 = threads_cpu(); t0 = time.perf_counter()
            await asyncio.gather(*(server.async_call(i) for i in range(N)))
            t = time.perf_counter() - t0
            wakes = cnt[0]; cnt[0] = 0
            c1 = threads_cpu()
            d = {k: (c1[k] - c0[k]) / N for k in c1}
            tot = sum(v for k, v in d.items() if k.endswith("cpu"))
            res.append(tot)
            if os.environ.get("V"):
                print(f"burst {b}: {N/t:.0f}/s wakes {wakes} cpu {tot:.1f} us/item  " + "  ".join(f"{k}={v:.2f}" for k, v in sorted(d.items()) if v > 0.01))
        res.sort()
        print("cpu/item median %.1f min %.1f max %.1f" % (res[len(res)//2], res[0], res[-1]), " ".join("%.1f" % r for r in res))

if __name__ == "__main__":
    asyncio.run(main())
